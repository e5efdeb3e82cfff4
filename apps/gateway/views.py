"""Pages: routes (list, create, edit, delete), one's own consumer keys (create,
shown once, revoke), and every key (`keys.manage`).

Forms are validated with the API's serializers and saved through the same
functions its viewsets call (apps.gateway.services.save_route / delete_route,
apps.gateway.keys.create_consumer_key / revoke_consumer_key). The request's
audit event gets its target and changes as the API's does."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _

from apps.accounts.permissions import requires
from apps.accounts.policy import AUTHENTICATED, can
from apps.audit import recorder
from apps.core.i18n import in_english
from apps.core.pages import found_or_404
from apps.deployments.models import Deployment
from apps.gateway import projects, reports, services
from apps.gateway.api.serializers import ConsumerKeyCreateSerializer, RouteSerializer
from apps.gateway.keys import KeyRefused, revoke_consumer_key
from apps.gateway.models import Route, ServiceAccount

VIEW, MANAGE = "gateway.view", "gateway.manage"
BLANK_TARGET_ROWS = 3
KEYS_PER_PAGE = 100


def gateway_url(request) -> str:
    """Where clients reach the gateway: its bind address, or this console's host
    name when it listens on every interface."""
    host = settings.GATEWAY_BIND_HOST
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 (comparing, not binding)
        host = urlsplit(f"//{request.get_host()}").hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.GATEWAY_BIND_PORT}"


def errors_text(errors) -> list[str]:
    """Every message of a (possibly nested) serializer error, flat, for one place on a form."""
    if isinstance(errors, dict):
        return [m for value in errors.values() for m in errors_text(value)]
    if isinstance(errors, list):
        return [m for value in errors for m in errors_text(value)]
    return [str(errors)]


# --- routes ------------------------------------------------------------------------


def _route_data(post) -> dict:
    """The form as the API's body: target rows are (deployment, weight) pairs; a
    row without a deployment is ignored, a blank weight is the default."""
    targets = []
    weights = post.getlist("target_weight")
    for index, deployment in enumerate(post.getlist("target_deployment")):
        if not deployment:
            continue
        weight = weights[index] if index < len(weights) else ""
        targets.append({"deployment": deployment, **({"weight": weight} if weight else {})})
    return {
        "name": post.get("name", ""),
        "description": post.get("description", ""),
        "enabled": post.get("enabled") in ("on", "true", "1"),
        "fallback": post.get("fallback") or None,
        "targets": targets,
    }


def _route_values(route: Route) -> dict:
    return {
        "name": route.name,
        "description": route.description,
        "enabled": "on" if route.enabled else "",
        "fallback": str(route.fallback_id or ""),
    }


def _target_rows(targets: list[dict]) -> list[dict]:
    return [*targets, *({"deployment": "", "weight": ""} for _ in range(BLANK_TARGET_ROWS))]


def _posted_targets(post) -> list[dict]:
    weights = post.getlist("target_weight")
    return [
        {"deployment": d, "weight": weights[i] if i < len(weights) else ""}
        for i, d in enumerate(post.getlist("target_deployment"))
        if d
    ]


def _form_context(route: Route | None = None) -> dict:
    fallbacks = Route.objects.order_by("name")
    if route is not None:
        fallbacks = fallbacks.exclude(pk=route.pk)
    return {
        "deployments": Deployment.objects.select_related("cluster").order_by("name"),
        "fallbacks": fallbacks,
    }


def _routes_page(request, context: dict | None = None, status: int = 200):
    context = context or {}
    can_manage = can(request.user, MANAGE)
    context.update(routes=services.visible_routes(request.user), can_manage=can_manage)
    if can_manage:
        context.update(_form_context())
    context.setdefault("form", {"enabled": "on"})
    context.setdefault("errors", {})
    context.setdefault("target_rows", _target_rows([]))
    return render(request, "gateway/routes.html", context, status=status)


def _failed_form(request, form) -> dict:
    return {
        "form": request.POST,
        "errors": form.errors,
        "target_errors": errors_text(form.errors.get("targets", [])),
        "target_rows": _target_rows(_posted_targets(request.POST)),
    }


@requires(VIEW)
def route_list(request):
    return _routes_page(request)


@requires(MANAGE, methods=("POST",))
def route_create(request):
    form = RouteSerializer(data=_route_data(request.POST))
    recorder.watch_form(form)
    if not form.is_valid():
        return _routes_page(request, _failed_form(request, form), status=400)
    route = services.save_route(form, request.user)
    messages.success(request, _("Route %(name)s is created.") % {"name": route.name})
    return redirect("route-list")


def _route_or_404(request, pk: int) -> Route:
    return found_or_404(services.visible_routes(request.user), pk)


@requires(MANAGE, methods=("GET", "HEAD", "POST"))
def route_edit(request, pk: int):
    route = _route_or_404(request, pk)
    context = {"route": route, **_form_context(route)}
    if request.method != "POST":
        targets = [
            {"deployment": str(t.deployment_id), "weight": t.weight} for t in route.targets.all()
        ]
        context.update(form=_route_values(route), errors={}, target_rows=_target_rows(targets))
        return render(request, "gateway/route_edit.html", context)
    form = RouteSerializer(route, data=_route_data(request.POST))
    recorder.watch_form(form)
    if not form.is_valid():
        context.update(_failed_form(request, form))
        return render(request, "gateway/route_edit.html", context, status=400)
    route = services.save_route(form)
    messages.success(request, _("Route %(name)s is saved.") % {"name": route.name})
    return redirect("route-list")


@requires(MANAGE, methods=("POST",))
def route_delete(request, pk: int):
    route = _route_or_404(request, pk)
    name = route.name
    services.delete_route(route)
    messages.success(request, _("Route %(name)s is deleted.") % {"name": name})
    return redirect("route-list")


# --- consumer keys -------------------------------------------------------------------


def _networks(text: str) -> list[str]:
    return [n for n in text.replace(",", "\n").split() if n]


def _key_data(post) -> dict:
    data = {
        "name": post.get("name", ""),
        "days": post.get("days", ""),
        "all_routes": post.get("all_routes") in ("on", "true", "1"),
        "routes": post.getlist("routes"),
        "source_networks": _networks(post.get("source_networks", "")),
    }
    if post.get("service_account"):
        data["service_account"] = post["service_account"]
    if post.get("project"):
        data["project"] = post["project"]
    return data


def _max_days(user, policy) -> int:
    if services.bound_by_policy(user):
        return min(policy.max_key_days, settings.GATEWAY_KEY_MAX_DAYS)
    return settings.GATEWAY_KEY_MAX_DAYS


def _keys_page(request, context: dict, status: int = 200):
    user = request.user
    policy = projects.current_policy()
    context.setdefault("form", {"days": 90})
    context.setdefault("errors", {})
    context.update(
        keys=services.keys_visible_to(user).filter(user=user),
        service_keys=(
            services.keys_visible_to(user).filter(service_account__isnull=False)
            if services.may_own_service_keys(user)
            else []
        ),
        routes=Route.objects.order_by("name"),
        selected=context.get("selected", []),
        service_accounts=(
            ServiceAccount.objects.filter(is_active=True)
            if services.may_own_service_keys(user)
            else []
        ),
        max_days=_max_days(user, policy),
        gateway_url=gateway_url(request),
        policy=policy,
        can_skip_policy=services.bound_by_policy(user) is False,
        key_projects=projects.projects_for_new_keys(user),
        limits=reports.limits_with_use(services.limits_on_keys_of(user)),
        open_routes=(
            Route.objects.filter(enabled=True).order_by("name") if can(user, "gateway.use") else []
        ),
    )
    return render(request, "gateway/keys.html", context, status=status)


@requires(AUTHENTICATED, methods=("GET", "HEAD", "POST"))
def my_keys(request):
    if request.method != "POST":
        return _keys_page(request, {})
    recorder.describe(action="gateway.key.create")
    form = ConsumerKeyCreateSerializer(data=_key_data(request.POST))
    failed = {"form": request.POST, "selected": request.POST.getlist("routes")}
    if not form.is_valid():
        return _keys_page(request, {**failed, "errors": form.errors}, status=400)
    data = form.validated_data
    try:
        key, raw = services.create_key_as(request.user, data)
    except PermissionDenied as exc:
        recorder.describe(outcome=recorder.Outcome.DENIED, changes={"reason": in_english(exc)})
        errors = {"non_field_errors": [str(exc)]}
        return _keys_page(request, {**failed, "errors": errors}, status=403)
    except KeyRefused as exc:
        recorder.describe(outcome=recorder.Outcome.FAILED, changes={"reason": in_english(exc)})
        errors = {"non_field_errors": [str(exc)]}
        return _keys_page(request, {**failed, "errors": errors}, status=400)
    names = sorted(r.name for r in data["routes"]) or list(
        Route.objects.filter(enabled=True).values_list("name", flat=True)[:1]
    )
    # The key is in this one response only: Hangar keeps its SHA-256, never the key.
    return _keys_page(
        request, {"created": key, "raw_key": raw, "example_model": names[0] if names else "MODEL"}
    )


@requires(AUTHENTICATED, methods=("POST",))
def key_revoke(request, pk: int):
    recorder.describe(action="gateway.key.revoke")
    key = found_or_404(services.keys_visible_to(request.user), pk)
    revoke_consumer_key(key)
    messages.success(request, _("Key %(name)s is revoked.") % {"name": key.name})
    return redirect(request.POST.get("next") or "my-keys")


@requires("keys.manage")
def all_keys(request):
    params = request.GET
    keys = services.keys_visible_to(request.user)
    owner = params.get("owner", "").strip()
    if owner:
        keys = keys.filter(user__username=owner) | keys.filter(service_account__name=owner)
    state = params.get("state", "")
    if state in services.KEY_STATES:
        keys = services.keys_in_state(keys, state)
    page = Paginator(keys.order_by("-created_at", "-id"), KEYS_PER_PAGE).get_page(
        params.get("page")
    )
    return render(
        request,
        "gateway/all_keys.html",
        {
            "page": page,
            "keys": page.object_list,
            "states": services.KEY_STATES,
            "filters": {"owner": owner, "state": state},
        },
    )
