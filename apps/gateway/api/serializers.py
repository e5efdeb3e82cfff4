from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.deployments.models import Deployment
from apps.gateway import projects, reports
from apps.gateway.models import (
    LIMIT_FIELDS,
    ConsumerKey,
    GatewayPolicy,
    Limit,
    Project,
    ProjectMember,
    Route,
    ServiceAccount,
)


@extend_schema_field(OpenApiTypes.STR)
class NameOrIdField(serializers.RelatedField):
    """A row named by its `name` or its id; reads give the name.

    A string is looked up as a name first, so a route called "7" is still found
    by its name; a JSON number is always an id. `missing` is the refusal, with
    %(name)s for what was sent."""

    def __init__(self, *, missing, **kwargs):
        self.missing = missing
        super().__init__(**kwargs)

    def to_internal_value(self, value):
        queryset = self.get_queryset()
        found = None
        if isinstance(value, str) and value:
            found = queryset.filter(name=value).first()
            if found is None and value.isdigit():
                found = queryset.filter(pk=int(value)).first()
        elif isinstance(value, int) and not isinstance(value, bool):
            found = queryset.filter(pk=value).first()
        if found is None:
            raise serializers.ValidationError(str(self.missing) % {"name": value})
        return found

    def to_representation(self, value) -> str:
        return value.name


NO_ROUTE = gettext_lazy("There is no route %(name)s.")
NO_SERVICE_ACCOUNT = gettext_lazy("There is no service account %(name)s.")
NO_PROJECT = gettext_lazy("There is no project %(name)s.")


class RouteTargetSerializer(serializers.Serializer):
    deployment = serializers.PrimaryKeyRelatedField(queryset=Deployment.objects.all())
    deployment_name = serializers.CharField(source="deployment.name", read_only=True)
    weight = serializers.IntegerField(min_value=0, max_value=1000, default=100)
    # Read only: how many of the deployment's workers are ready to take requests.
    ready_workers = serializers.IntegerField(read_only=True)


class RouteSerializer(serializers.ModelSerializer):
    """`targets` is written as a whole: a PUT, or a PATCH naming it, replaces
    every target of the route in one transaction (apps.gateway.services.save_route)."""

    fallback = NameOrIdField(
        missing=NO_ROUTE, queryset=Route.objects.all(), allow_null=True, required=False
    )
    targets = RouteTargetSerializer(many=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Route
        fields = [
            "id",
            "name",
            "description",
            "enabled",
            "fallback",
            "targets",
            "created_by",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "created_by", "created_at", "updated_at"]

    def validate_targets(self, targets: list[dict]) -> list[dict]:
        for target in targets:
            # A PATCH is partial down to its nested rows, where defaults are not applied.
            target.setdefault("weight", 100)
        deployments = [t["deployment"].pk for t in targets]
        if len(deployments) != len(set(deployments)):
            raise serializers.ValidationError(_("Name each deployment once in a route."))
        if len(targets) > 100:
            raise serializers.ValidationError(_("A route has at most 100 targets."))
        return targets

    def validate(self, attrs):
        instance = self.instance
        enabled = attrs.get("enabled", instance.enabled if instance else True)
        if "targets" in attrs:
            weights = [t["weight"] for t in attrs["targets"]]
        elif instance is not None:
            weights = [t.weight for t in instance.targets.all()]
        else:
            weights = []
        if enabled and not any(w > 0 for w in weights):
            raise serializers.ValidationError(
                {
                    "targets": _(
                        "An enabled route needs at least one deployment with a weight "
                        "above 0; add one or disable the route."
                    )
                }
            )
        fallback = attrs.get("fallback", instance.fallback if instance else None)
        if fallback is not None and instance is not None:
            self._refuse_fallback_cycle(instance, fallback)
        return attrs

    @staticmethod
    def _refuse_fallback_cycle(route: Route, fallback: Route) -> None:
        """Existing routes have no cycle, so the only one a change can make leads back here."""
        if fallback.pk == route.pk:
            raise serializers.ValidationError(
                {"fallback": _("A route cannot fall back to itself.")}
            )
        chain, step, seen = [route.name], fallback, set()
        while step is not None and step.pk not in seen:
            seen.add(step.pk)
            chain.append(step.name)
            if step.pk == route.pk:
                raise serializers.ValidationError(
                    {
                        "fallback": _("That makes a fallback cycle: %(chain)s.")
                        % {"chain": " → ".join(chain)}
                    }
                )
            step = Route.objects.filter(pk=step.fallback_id).first() if step.fallback_id else None

    def to_representation(self, route):
        data = super().to_representation(route)
        data["targets"] = [
            {
                "deployment": t.deployment_id,
                "deployment_name": t.deployment.name,
                "weight": t.weight,
                "ready_workers": getattr(t, "ready_workers", None),
            }
            for t in route.targets.all()
        ]
        return data


class ServiceAccountSerializer(serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    active_keys = serializers.SerializerMethodField()
    # The project its keys count under (limits, share, usage); none: no project's.
    project = NameOrIdField(
        missing=NO_PROJECT, queryset=Project.objects.all(), allow_null=True, required=False
    )

    class Meta:
        model = ServiceAccount
        fields = ["id", "name", "description", "project", "is_active", "created_by", "created_at"]
        fields += ["active_keys"]
        read_only_fields = ["id", "created_by", "created_at", "active_keys"]

    def get_active_keys(self, account) -> int:
        return sum(1 for key in account.keys.all() if key.state == "active")


class ConsumerKeySerializer(serializers.ModelSerializer):
    """What anyone may read of a key: never the key, never its hash."""

    user = serializers.SlugRelatedField(slug_field="username", read_only=True)
    service_account = serializers.SlugRelatedField(slug_field="name", read_only=True)
    owner = serializers.CharField(source="owner_name", read_only=True)
    routes = serializers.SerializerMethodField()
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    project = serializers.SlugRelatedField(slug_field="name", read_only=True)
    approved_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = ConsumerKey
        fields = [
            "id",
            "name",
            "prefix",
            "owner",
            "user",
            "service_account",
            "project",
            "approved_at",
            "approved_by",
            "all_routes",
            "routes",
            "source_networks",
            "state",
            "expires_at",
            "revoked_at",
            "last_used_at",
            "created_by",
            "created_at",
        ]
        read_only_fields = fields

    def get_routes(self, key) -> list[str]:
        return [] if key.all_routes else sorted(r.name for r in key.routes.all())


class ConsumerKeyCreatedSerializer(ConsumerKeySerializer):
    """The create response: the key itself, this once."""

    key = serializers.CharField(read_only=True)

    class Meta(ConsumerKeySerializer.Meta):
        fields = [*ConsumerKeySerializer.Meta.fields, "key"]
        read_only_fields = fields


class ConsumerKeyCreateSerializer(serializers.Serializer):
    """A new key's request. Expiry and networks are judged by create_consumer_key."""

    name = serializers.CharField(max_length=100)
    days = serializers.IntegerField()
    routes = serializers.ListField(
        child=NameOrIdField(missing=NO_ROUTE, queryset=Route.objects.all()),
        required=False,
        default=list,
        max_length=1000,
    )
    all_routes = serializers.BooleanField(required=False, default=False)
    source_networks = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, default=list, max_length=100
    )
    service_account = NameOrIdField(
        missing=NO_SERVICE_ACCOUNT,
        queryset=ServiceAccount.objects.all(),
        required=False,
        allow_null=True,
    )
    # A project the maker belongs to; a service account's key takes its account's.
    project = NameOrIdField(
        missing=NO_PROJECT, queryset=Project.objects.all(), required=False, allow_null=True
    )

    def validate_service_account(self, account):
        if account is not None and not account.is_active:
            raise serializers.ValidationError(
                _("Service account %(name)s is deactivated.") % {"name": account.name}
            )
        return account

    def validate(self, attrs):
        if attrs["all_routes"] and attrs["routes"]:
            raise serializers.ValidationError(
                {"routes": _("Give either a list of routes or all_routes, not both.")}
            )
        if not attrs["all_routes"] and not attrs["routes"]:
            raise serializers.ValidationError(
                {"routes": _("Name the routes this key may use, or set all_routes.")}
            )
        attrs["routes"] = list({r.pk: r for r in attrs["routes"]}.values())
        return attrs


# --- projects, members, limits, policy -------------------------------------------------


class ProjectSerializer(serializers.ModelSerializer):
    """A project. Admins create and change everything; owners title, description and
    require_approval (apps.gateway.projects.OWNER_FIELDS)."""

    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    members = serializers.SerializerMethodField()

    class Meta:
        model = Project
        fields = ["id", "name", "title", "description", "weight", "require_approval"]
        fields += ["is_active", "members", "created_by", "created_at"]
        read_only_fields = ["id", "members", "created_by", "created_at"]

    def get_members(self, project) -> int:
        return project.members.count()


class ProjectMemberSerializer(serializers.ModelSerializer):
    """A user (by username) or an LDAP group (by DN) in a project, as member or owner."""

    project = NameOrIdField(missing=NO_PROJECT, queryset=Project.objects.all())
    user = serializers.SlugRelatedField(
        slug_field="username",
        queryset=get_user_model().objects.filter(is_active=True),
        allow_null=True,
        required=False,
    )
    ldap_group = serializers.CharField(max_length=512, allow_blank=True, required=False)

    class Meta:
        model = ProjectMember
        fields = ["id", "project", "user", "ldap_group", "role", "created_at"]
        read_only_fields = ["id", "created_at"]
        validators = []  # the service refuses a second binding with a clear message


class LimitSerializer(serializers.ModelSerializer):
    """Ceilings for a key (id), a user (username) or a project (name), optionally on one
    route; `use` is each ceiling's use in its current window (read only)."""

    key = serializers.PrimaryKeyRelatedField(
        queryset=ConsumerKey.objects.all(), allow_null=True, required=False
    )
    user = serializers.SlugRelatedField(
        slug_field="username",
        queryset=get_user_model().objects.all(),
        allow_null=True,
        required=False,
    )
    project = NameOrIdField(
        missing=NO_PROJECT, queryset=Project.objects.all(), allow_null=True, required=False
    )
    route = NameOrIdField(
        missing=NO_ROUTE, queryset=Route.objects.all(), allow_null=True, required=False
    )
    use = serializers.SerializerMethodField()

    class Meta:
        model = Limit
        fields = ["id", "scope", "key", "user", "project", "route", *LIMIT_FIELDS]
        fields += ["use", "created_at", "updated_at"]
        read_only_fields = ["id", "use", "created_at", "updated_at"]
        extra_kwargs = {field: {"min_value": 1} for field in LIMIT_FIELDS}
        validators = []  # projects.save_limit refuses a duplicate with a clear message

    def validate(self, attrs):
        merged = {}
        if self.instance is not None:
            merged = {f: getattr(self.instance, f) for f in ("scope", "key", "user", "project")}
            merged.update({f: getattr(self.instance, f) for f in LIMIT_FIELDS})
        merged.update(attrs)
        try:
            projects.validate_limit(merged)
        except projects.ProjectRefused as exc:
            raise serializers.ValidationError(str(exc)) from None
        return attrs

    def get_use(self, limit) -> dict:
        return reports.use_of_limit(limit)


class GatewayPolicySerializer(serializers.ModelSerializer):
    class Meta:
        model = GatewayPolicy
        fields = ["self_service", "max_key_days", "keys_without_project", "updated_at"]
        read_only_fields = ["updated_at"]

    def validate_max_key_days(self, days: int) -> int:
        if days > settings.GATEWAY_KEY_MAX_DAYS:
            raise serializers.ValidationError(
                _("This appliance allows at most %(max)d days (HANGAR_GATEWAY_KEY_MAX_DAYS).")
                % {"max": settings.GATEWAY_KEY_MAX_DAYS}
            )
        return days
