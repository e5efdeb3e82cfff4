"""Route changes and what the pages and the API read about routes and keys.

A route and its targets change together, in one transaction, and the request's
audit event records both (the row alone would not show a weight that moved).
Keys are made and revoked by apps.gateway.keys.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Count, Prefetch, Q, QuerySet
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from apps.accounts.policy import can, restrict
from apps.audit import recorder
from apps.core.i18n import lazy_message
from apps.deployments.models import DesiredState, WorkerState
from apps.gateway import projects
from apps.gateway.keys import KeyRefused, create_consumer_key
from apps.gateway.models import ConsumerKey, GatewayPolicy, Limit, Route, RouteTarget

# As the gateway's snapshot counts them (apps.gateway.snapshot.build): the
# workers a request may be sent to now.
_READY = Q(
    deployment__desired_state=DesiredState.RUNNING,
    deployment__workers__state=WorkerState.READY,
    deployment__workers__desired_state=DesiredState.RUNNING,
    deployment__workers__node__state__in=("online", "degraded"),
)


def targets_with_ready_workers() -> QuerySet:
    # Ordered here: Meta.ordering is not applied to a query that aggregates.
    return (
        RouteTarget.objects.select_related("deployment")
        .annotate(ready_workers=Count("deployment__workers", filter=_READY))
        .order_by("-weight", "pk")
    )


def with_targets(routes: QuerySet) -> QuerySet:
    """Routes with their fallback and targets (each with `ready_workers`) in three queries."""
    return routes.select_related("fallback", "created_by").prefetch_related(
        Prefetch("targets", queryset=targets_with_ready_workers())
    )


def visible_routes(user) -> QuerySet:
    return with_targets(restrict(Route.objects.all(), user, "gateway.view"))


def route_record(route: Route) -> dict:
    """The route as the audit log records it: its row and its targets."""
    targets = RouteTarget.objects.filter(route=route).order_by("deployment_id")
    return {
        **recorder.snapshot(route),
        "fallback": route.fallback.name if route.fallback_id else None,
        "targets": [{"deployment": t.deployment_id, "weight": t.weight} for t in targets],
    }


@transaction.atomic
def save_route(serializer, user=None) -> Route:
    """Create or update from a valid RouteSerializer; `targets`, when given,
    replaces every target of the route."""
    instance = serializer.instance
    before = None
    if instance is not None:
        # One change of a route at a time: two replacements of the targets would collide.
        Route.objects.select_for_update().filter(pk=instance.pk).first()
        before = route_record(instance)
    targets = serializer.validated_data.pop("targets", None)
    extra = {"created_by": user} if instance is None and user is not None else {}
    route = serializer.save(**extra)
    if targets is not None:
        RouteTarget.objects.filter(route=route).delete()
        RouteTarget.objects.bulk_create(
            RouteTarget(route=route, deployment=t["deployment"], weight=t["weight"])
            for t in targets
        )
    after = route_record(route)
    changes = {"created": after} if before is None else recorder.diff(before, after)
    recorder.describe(target=route, changes=changes)
    return route


@transaction.atomic
def delete_route(route: Route) -> None:
    """Keys limited to this route lose it; routes falling back to it lose their fallback."""
    recorder.describe(target=route, changes={"deleted": route_record(route)})
    route.delete()


def routes_of_deployment(deployment, user) -> QuerySet:
    """Routes that send requests to `deployment`, for its page."""
    return (
        restrict(RouteTarget.objects.all(), user, "gateway.view")
        .filter(deployment=deployment)
        .select_related("route", "route__fallback")
        .order_by("route__name")
    )


def may_own_service_keys(user) -> bool:
    """Keys for applications are made by those who manage routes or every key."""
    return can(user, "gateway.manage") or can(user, "keys.manage")


def keys_visible_to(user) -> QuerySet:
    """Everyone's own keys; service accounts' keys to those who may make them; the
    keys of the projects they own to owners; all keys to `keys.manage`. A key
    outside this set answers 404."""
    keys = ConsumerKey.objects.select_related(
        "user", "service_account", "created_by", "project", "approved_by"
    ).prefetch_related("routes")
    if can(user, "keys.manage"):
        return keys
    visible = Q(user=user)
    if may_own_service_keys(user):
        visible |= Q(service_account__isnull=False)
    owned = projects.owned_project_ids(user)
    if owned:
        visible |= Q(project__in=owned)
    return keys.filter(visible)


def may_approve(user, key: ConsumerKey) -> bool:
    """Owners of the key's project and administrators approve; nobody approves their own
    pending key unless they could have made it approved."""
    return projects.is_owner(user, key.project) or can(user, "keys.manage")


KEY_STATES = ("active", "pending", "expired", "revoked")


def keys_in_state(keys: QuerySet, state: str) -> QuerySet:
    """Narrow to one of KEY_STATES (ConsumerKey.state, in SQL)."""
    assert state in KEY_STATES, state
    now = timezone.now()
    if state == "active":
        return keys.filter(revoked_at__isnull=True, expires_at__gt=now, approved_at__isnull=False)
    if state == "pending":
        return keys.filter(revoked_at__isnull=True, expires_at__gt=now, approved_at__isnull=True)
    if state == "expired":
        return keys.filter(revoked_at__isnull=True, expires_at__lte=now)
    return keys.filter(revoked_at__isnull=False)


def create_key_as(user, data: dict) -> tuple[ConsumerKey, str]:
    """A key made by `user` from validated form or API data: theirs, or a service
    account's when they may own those. One path for the API and the pages.

    The site's policy (GatewayPolicy) applies to everyone who does not manage
    keys: self-service on, at most max_key_days, a project they belong to (or
    none when keys_without_project). A key of a project that requires approval
    is pending unless its maker owns the project (docs/limits.md)."""
    account = data.get("service_account")
    if account is not None and not may_own_service_keys(user):
        raise PermissionDenied(
            _("Only those who manage routes or all keys make keys for service accounts.")
        )
    project = data.get("project")
    if account is not None:
        # An application's keys count under its own project, which those who manage
        # routes set on the account; they make its keys, so those work at once.
        if project is not None and project != account.project:
            raise KeyRefused(
                lazy_message(
                    _("A service account's keys count under its own project (%(name)s)."),
                    name=account.project.name if account.project else "-",
                )
            )
        project = account.project
    policy = GatewayPolicy.current()
    privileged = not bound_by_policy(user)
    if not privileged:
        _check_self_service(user, data, project, account, policy)
    approved = (
        project is None
        or not project.require_approval
        or privileged
        or account is not None
        or projects.is_owner(user, project)
    )
    return create_consumer_key(
        name=data["name"],
        days=data["days"],
        user=None if account else user,
        service_account=account,
        routes=data["routes"],
        all_routes=data["all_routes"],
        source_networks=data["source_networks"],
        created_by=user,
        project=project,
        approved=approved,
    )


def bound_by_policy(user) -> bool:
    """Does the site's key policy hold this user? Not those who manage keys or projects."""
    return not (can(user, "keys.manage") or projects.manages_projects(user))


def limits_on_keys_of(user) -> QuerySet:
    """The limits that hold requests made with `user`'s own keys, for their keys page."""
    project_ids = set(
        ConsumerKey.objects.filter(user=user)
        .exclude(project=None)
        .values_list("project", flat=True)
    )
    return Limit.objects.select_related("route", "project", "user", "key").filter(
        Q(key__user=user)
        | Q(user=user)
        | Q(project__in=project_ids | projects.project_ids_of(user))
    )


def _check_self_service(user, data: dict, project, account, policy: GatewayPolicy) -> None:
    if not policy.self_service:
        raise PermissionDenied(
            _("Self-service keys are off on this appliance: ask an administrator for a key.")
        )
    # Beyond the appliance's own ceiling create_consumer_key answers, with that ceiling.
    if settings.GATEWAY_KEY_MAX_DAYS >= data["days"] > policy.max_key_days:
        raise KeyRefused(
            lazy_message(
                _("Keys on this appliance last at most %(max)d days."), max=policy.max_key_days
            )
        )
    if account is not None:
        return  # the account's project, not the maker's membership
    if project is None:
        if not policy.keys_without_project:
            raise KeyRefused(_("Choose one of your projects for this key."))
        return
    if not project.is_active:
        raise KeyRefused(lazy_message(_("Project %(name)s is closed."), name=project.name))
    if project.pk not in projects.project_ids_of(user):
        raise PermissionDenied(
            _("You are not a member of project %(name)s.") % {"name": project.name}
        )
