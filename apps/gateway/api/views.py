from __future__ import annotations

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.utils.translation import gettext as _
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.policy import AUTHENTICATED
from apps.audit import recorder
from apps.core.viewsets import HangarViewSet
from apps.gateway import projects, reports, services
from apps.gateway.api.serializers import (
    NO_PROJECT,
    ConsumerKeyCreatedSerializer,
    ConsumerKeyCreateSerializer,
    ConsumerKeySerializer,
    GatewayPolicySerializer,
    LimitSerializer,
    ProjectMemberSerializer,
    ProjectSerializer,
    RouteSerializer,
    ServiceAccountSerializer,
)
from apps.gateway.keys import KeyRefused, approve_consumer_key, revoke_consumer_key
from apps.gateway.models import ConsumerKey, Limit, Project, ProjectMember, Route, ServiceAccount

MANAGE = "gateway.manage"
READ = (mixins.ListModelMixin, mixins.RetrieveModelMixin)
WRITE = (mixins.CreateModelMixin, mixins.UpdateModelMixin)


class RouteViewSet(*READ, *WRITE, mixins.DestroyModelMixin, HangarViewSet):
    """Routes: the model names clients send, each to weighted deployments with an
    optional fallback route. `targets` is replaced as a whole when written."""

    queryset = services.with_targets(Route.objects.all())
    serializer_class = RouteSerializer
    policy = {
        "list": "gateway.view",
        "retrieve": "gateway.view",
        "create": MANAGE,
        "update": MANAGE,
        "partial_update": MANAGE,
        "destroy": MANAGE,
    }

    def perform_create(self, serializer):
        route = services.save_route(serializer, self.request.user)
        serializer.instance = self.get_queryset().get(pk=route.pk)

    def perform_update(self, serializer):
        route = services.save_route(serializer)
        serializer.instance = self.get_queryset().get(pk=route.pk)

    def perform_destroy(self, instance):
        services.delete_route(instance)


class ServiceAccountViewSet(*READ, *WRITE, HangarViewSet):
    """Applications that own keys. Deactivate one (`is_active: false`) to stop all its keys."""

    queryset = ServiceAccount.objects.select_related("created_by").prefetch_related("keys")
    serializer_class = ServiceAccountSerializer
    policy = {
        "list": MANAGE,
        "retrieve": MANAGE,
        "create": MANAGE,
        "update": MANAGE,
        "partial_update": MANAGE,
    }

    def perform_create(self, serializer):
        serializer.save(created_by=self.request.user)


class ConsumerKeyViewSet(*READ, HangarViewSet):
    """Consumer keys (`hk-…`) for the gateway. Everyone lists, makes and revokes their
    own; `keys.manage` sees and revokes every key, and those who may manage routes
    also the keys of service accounts. The key is in the create response only.
    Filters: owner (a username), service_account (a name or id), state."""

    queryset = ConsumerKey.objects.none()  # typed for the schema; get_queryset narrows
    serializer_class = ConsumerKeySerializer
    policy = {
        "list": AUTHENTICATED,
        "retrieve": AUTHENTICATED,
        "create": AUTHENTICATED,
        "revoke": AUTHENTICATED,
        "approve": AUTHENTICATED,
    }

    def get_queryset(self):
        keys = services.keys_visible_to(self.request.user)
        params = self.request.query_params
        if params.get("owner"):
            keys = keys.filter(user__username=params["owner"])
        account = params.get("service_account", "")
        if account.isdigit():
            keys = keys.filter(service_account_id=int(account))
        elif account:
            keys = keys.filter(service_account__name=account)
        state = params.get("state")
        if state and state not in services.KEY_STATES:
            choices = ", ".join(services.KEY_STATES)
            raise serializers.ValidationError(
                {"state": _("Choose one of %(choices)s.") % {"choices": choices}}
            )
        if state:
            keys = services.keys_in_state(keys, state)
        return keys

    @extend_schema(
        request=ConsumerKeyCreateSerializer, responses={201: ConsumerKeyCreatedSerializer}
    )
    def create(self, request, *args, **kwargs):
        recorder.describe(action="gateway.key.create")
        body = ConsumerKeyCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            key, raw = services.create_key_as(request.user, body.validated_data)
        except DjangoPermissionDenied as exc:
            raise PermissionDenied(str(exc)) from None
        except KeyRefused as exc:
            raise serializers.ValidationError({"detail": str(exc)}) from None
        key = services.keys_visible_to(request.user).get(pk=key.pk)
        # The key is in this one response only: Hangar keeps its SHA-256, never the key.
        key.key = raw
        return Response(ConsumerKeyCreatedSerializer(key).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=ConsumerKeySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        """Revoke now: every gateway refuses it once it has the next snapshot (within 1 s)."""
        recorder.describe(action="gateway.key.revoke")
        key = self.get_object()
        revoke_consumer_key(key)
        return Response(ConsumerKeySerializer(key).data)

    @extend_schema(request=None, responses=ConsumerKeySerializer)
    @action(detail=True, methods=["post"])
    def approve(self, request, pk=None):
        """Let a pending key work (owners of its project, and `keys.manage`)."""
        recorder.describe(action="gateway.key.approve")
        key = self.get_object()
        if not services.may_approve(request.user, key):
            raise PermissionDenied(_("Only the project's owners and administrators approve keys."))
        if not approve_consumer_key(key, request.user):
            raise serializers.ValidationError(
                {"detail": _("Key %(name)s is not pending.") % {"name": key.name}}
            )
        return Response(ConsumerKeySerializer(key).data)


def _as_drf(call, *args):
    """Run a service call; its refusals become DRF's 403 and 400."""
    try:
        return call(*args)
    except DjangoPermissionDenied as exc:
        raise PermissionDenied(str(exc)) from None
    except (projects.ProjectRefused, reports.ReportRefused) as exc:
        raise serializers.ValidationError({"detail": str(exc)}) from None


class ProjectViewSet(*READ, mixins.CreateModelMixin, HangarViewSet):
    """Projects (docs/limits.md). Admins (`projects.manage`) see and create every
    project; members see theirs; owners change title, description and
    require_approval, admins everything (weight, name, is_active)."""

    queryset = Project.objects.none()
    serializer_class = ProjectSerializer
    policy = {
        "list": AUTHENTICATED,
        "retrieve": AUTHENTICATED,
        "create": projects.MANAGE,
        "partial_update": AUTHENTICATED,
    }

    def get_queryset(self):
        return projects.projects_visible_to(self.request.user).prefetch_related("members")

    def perform_create(self, serializer):
        _as_drf(projects.save_project, serializer, self.request.user)

    def partial_update(self, request, pk=None):
        recorder.describe(action="gateway.project.change")
        project = self.get_object()
        serializer = self.get_serializer(project, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        _as_drf(projects.save_project, serializer, request.user)
        return Response(serializer.data)


class ProjectMemberViewSet(*READ, HangarViewSet):
    """Members of projects: a user or an LDAP group, as member or owner. Owners of a
    project and admins add, change and remove them; members read their projects'."""

    queryset = ProjectMember.objects.none()
    serializer_class = ProjectMemberSerializer
    policy = {
        "list": AUTHENTICATED,
        "retrieve": AUTHENTICATED,
        "create": AUTHENTICATED,
        "partial_update": AUTHENTICATED,
        "destroy": AUTHENTICATED,
    }

    def get_queryset(self):
        members = projects.members_visible_to(self.request.user)
        if self.request.query_params.get("project"):
            members = members.filter(project__name=self.request.query_params["project"])
        return members

    def create(self, request):
        recorder.describe(action="gateway.project.member.add")
        body = self.get_serializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        project = data["project"]
        if not projects.projects_visible_to(request.user).filter(pk=project.pk).exists():
            raise serializers.ValidationError({"project": str(NO_PROJECT) % {"name": project.name}})
        member = _as_drf(
            lambda: projects.add_member(
                project,
                by=request.user,
                user=data.get("user"),
                ldap_group=data.get("ldap_group", ""),
                role=data.get("role", "member"),
            )
        )
        return Response(ProjectMemberSerializer(member).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=ProjectMemberSerializer, responses=ProjectMemberSerializer)
    def partial_update(self, request, pk=None):
        recorder.describe(action="gateway.project.member.change")
        member = self.get_object()
        role = request.data.get("role")
        if set(request.data) - {"role"}:
            raise serializers.ValidationError(
                {"detail": _("Only a member's role changes; remove and add for anything else.")}
            )
        _as_drf(projects.change_member_role, member, role, request.user)
        return Response(ProjectMemberSerializer(member).data)

    def destroy(self, request, pk=None):
        recorder.describe(action="gateway.project.member.remove")
        member = self.get_object()
        _as_drf(projects.remove_member, member, request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class LimitViewSet(*READ, HangarViewSet):
    """Limits (docs/limits.md "Limits"): admins set them; everyone reads the ones that
    apply to them, owners their projects', each with its use in the current window."""

    queryset = Limit.objects.none()
    serializer_class = LimitSerializer
    policy = {
        "list": AUTHENTICATED,
        "retrieve": AUTHENTICATED,
        "create": projects.MANAGE,
        "partial_update": projects.MANAGE,
        "destroy": projects.MANAGE,
    }

    def get_queryset(self):
        return projects.limits_visible_to(self.request.user)

    def create(self, request):
        body = self.get_serializer(data=request.data)
        body.is_valid(raise_exception=True)
        _as_drf(projects.save_limit, body, request.user)
        return Response(body.data, status=status.HTTP_201_CREATED)

    def partial_update(self, request, pk=None):
        limit = self.get_object()
        body = self.get_serializer(limit, data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        _as_drf(projects.save_limit, body, request.user)
        return Response(body.data)

    def destroy(self, request, pk=None):
        limit = self.get_object()
        projects.delete_limit(limit)
        return Response(status=status.HTTP_204_NO_CONTENT)


class GatewayPolicyView(APIView):
    """The site's rules for self-service keys: everyone reads them, admins change them."""

    policy = {"get": AUTHENTICATED, "patch": projects.MANAGE}

    @extend_schema(responses=GatewayPolicySerializer)
    def get(self, request):
        return Response(GatewayPolicySerializer(projects.current_policy()).data)

    @extend_schema(request=GatewayPolicySerializer, responses=GatewayPolicySerializer)
    def patch(self, request):
        policy = projects.current_policy()
        recorder.watch(policy)
        body = GatewayPolicySerializer(policy, data=request.data, partial=True)
        recorder.watch_form(body)
        body.is_valid(raise_exception=True)
        projects.save_policy(body)
        return Response(body.data)


class UsageView(APIView):
    """Usage over time and totals (the top consumers first), from the per-minute table.

    Parameters: range (1h, 24h, 7d, 30d) or start/end (ISO 8601); group_by (project,
    user, key, route, deployment); filters project, user, key, route, deployment.
    Admins see every row, a project's owners its rows, everyone their own keys' rows.
    """

    policy = {"get": AUTHENTICATED}

    @extend_schema(responses={200: None})
    def get(self, request):
        return Response(_as_drf(reports.report, request.user, request.query_params))


class EnergyView(APIView):
    """kWh and GPU-hours per project in a range (range or start/end; deployment).

    A deployment's energy of a minute is split among projects by their share of its
    tokens in that minute; minutes without requests are the "idle" line (admins only).
    """

    policy = {"get": AUTHENTICATED}

    @extend_schema(responses={200: None})
    def get(self, request):
        return Response(_as_drf(reports.energy_by_project, request.user, request.query_params))


class OpenRoutesView(APIView):
    """The routes a consumer may send requests to (enabled ones): name and description
    only, nothing of the deployments behind them."""

    policy = {"get": "gateway.use"}

    @extend_schema(responses={200: None})
    def get(self, request):
        routes = Route.objects.filter(enabled=True).order_by("name")
        return Response([{"name": r.name, "description": r.description} for r in routes])
