"""Pages: projects (list, detail with members, keys, limits and usage), the key
policy, usage reports with charts, one's own usage, and the CSV export.

Forms are validated with the API's serializers and saved through the same
services its viewsets call (apps.gateway.projects, apps.gateway.reports), so a
page and the API refuse the same things with the same words."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _

from apps.accounts.permissions import requires
from apps.accounts.policy import AUTHENTICATED
from apps.audit import recorder
from apps.core.i18n import in_english
from apps.core.pages import found_or_404
from apps.gateway import projects, reports, services
from apps.gateway.api.serializers import GatewayPolicySerializer, LimitSerializer, ProjectSerializer
from apps.gateway.keys import approve_consumer_key
from apps.gateway.models import LIMIT_FIELDS, LimitScope, ProjectRole, Route
from apps.gateway.views import errors_text

MANAGE = projects.MANAGE
PROJECT_SCOPES = (LimitScope.PROJECT, LimitScope.EACH_MEMBER, LimitScope.EACH_KEY)


def _refused(request, exc) -> None:
    """A refusal shown on the page it came from, and recorded as failed on the audit event."""
    recorder.describe(outcome=recorder.Outcome.FAILED, changes={"reason": in_english(exc)})
    messages.error(request, str(exc))


# --- projects ------------------------------------------------------------------------


def _project_list(request, context: dict | None = None, status: int = 200):
    context = context or {}
    visible = projects.projects_visible_to(request.user).prefetch_related("members")
    owned = projects.owned_project_ids(request.user)
    context.update(
        projects=visible,
        owned=owned,
        can_manage=projects.manages_projects(request.user),
    )
    context.setdefault("form", {"weight": 100})
    context.setdefault("errors", {})
    return render(request, "gateway/projects.html", context, status=status)


@requires(AUTHENTICATED)
def project_list(request):
    return _project_list(request)


def _checkbox(post, name: str) -> bool:
    return post.get(name) in ("on", "true", "1")


def _project_data(post) -> dict:
    data = {
        "name": post.get("name", ""),
        "title": post.get("title", ""),
        "description": post.get("description", ""),
        "require_approval": _checkbox(post, "require_approval"),
    }
    if post.get("weight"):
        data["weight"] = post["weight"]
    if "is_active_shown" in post:
        data["is_active"] = _checkbox(post, "is_active")
    return data


@requires(MANAGE, methods=("POST",))
def project_create(request):
    form = ProjectSerializer(data=_project_data(request.POST))
    recorder.watch_form(form)
    if not form.is_valid():
        return _project_list(request, {"form": request.POST, "errors": form.errors}, status=400)
    project = projects.save_project(form, request.user)
    messages.success(request, _("Project %(name)s is created.") % {"name": project.name})
    return redirect("project-detail", project.pk)


def _project_or_404(request, pk: int):
    return found_or_404(projects.projects_visible_to(request.user), pk)


def _detail(request, project, context: dict | None = None, status: int = 200):
    user = request.user
    context = context or {}
    owner = projects.is_owner(user, project)
    keys = services.keys_visible_to(user).filter(project=project)
    limits = project.limits.select_related("route")
    usage = reports.report(user, {"project": project.name, "range": "30d", "group_by": "user"})
    context.update(
        project=project,
        is_owner=owner,
        can_manage=projects.manages_projects(user),
        members=project.members.select_related("user"),
        keys=keys.order_by("-created_at"),
        pending=[k for k in keys if k.state == "pending"],
        limits=reports.limits_with_use(limits),
        limit_fields=LIMIT_FIELDS,
        scopes=PROJECT_SCOPES,
        routes=Route.objects.order_by("name"),
        roles=ProjectRole.values,
        usage=usage["totals"][:20],
    )
    context.setdefault("form", {"weight": project.weight, "title": project.title})
    context.setdefault("errors", {})
    return render(request, "gateway/project_detail.html", context, status=status)


@requires(AUTHENTICATED, methods=("GET", "HEAD", "POST"))
def project_detail(request, pk: int):
    project = _project_or_404(request, pk)
    if request.method != "POST":
        return _detail(request, project)
    recorder.describe(action="gateway.project.change")
    data = _project_data(request.POST)
    data.pop("name")
    if not projects.manages_projects(request.user):
        data = {k: v for k, v in data.items() if k in projects.OWNER_FIELDS}
    form = ProjectSerializer(project, data=data, partial=True)
    recorder.watch_form(form)
    if not form.is_valid():
        return _detail(request, project, {"errors": form.errors}, status=400)
    try:
        projects.save_project(form, request.user)
    except PermissionDenied as exc:
        raise PermissionDenied(str(exc)) from None
    messages.success(request, _("Project %(name)s is saved.") % {"name": project.name})
    return redirect("project-detail", project.pk)


@requires(AUTHENTICATED, methods=("POST",))
def member_add(request, pk: int):
    recorder.describe(action="gateway.project.member.add")
    project = _project_or_404(request, pk)
    post = request.POST
    user = None
    username = post.get("username", "").strip()
    if username:
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            _refused(request, _("There is no user %(name)s.") % {"name": username})
            return redirect("project-detail", project.pk)
    try:
        projects.add_member(
            project,
            by=request.user,
            user=user,
            ldap_group=post.get("ldap_group", ""),
            role=post.get("role", ProjectRole.MEMBER),
        )
    except projects.ProjectRefused as exc:
        _refused(request, exc)
        return redirect("project-detail", project.pk)
    messages.success(request, _("The member is added."))
    return redirect("project-detail", project.pk)


@requires(AUTHENTICATED, methods=("POST",))
def member_remove(request, pk: int):
    recorder.describe(action="gateway.project.member.remove")
    member = found_or_404(projects.members_visible_to(request.user), pk)
    try:
        projects.remove_member(member, request.user)
    except projects.ProjectRefused as exc:
        _refused(request, exc)
    else:
        messages.success(request, _("The member is removed."))
    return redirect("project-detail", member.project_id)


def _limit_data(post, project) -> dict:
    data = {"scope": post.get("scope", ""), "project": project.pk}
    if post.get("route"):
        data["route"] = post["route"]
    for field in LIMIT_FIELDS:
        if post.get(field, "").strip():
            data[field] = post[field].strip()
    return data


@requires(MANAGE, methods=("POST",))
def limit_add(request, pk: int):
    project = _project_or_404(request, pk)
    if request.POST.get("scope") not in PROJECT_SCOPES:
        form_errors = {"scope": [_("Choose project, each-member or each-key.")]}
        return _detail(request, project, {"limit_errors": errors_text(form_errors)}, status=400)
    form = LimitSerializer(data=_limit_data(request.POST, project))
    recorder.watch_form(form)
    if not form.is_valid():
        return _detail(request, project, {"limit_errors": errors_text(form.errors)}, status=400)
    try:
        projects.save_limit(form, request.user)
    except projects.ProjectRefused as exc:
        recorder.describe(outcome=recorder.Outcome.FAILED, changes={"reason": in_english(exc)})
        return _detail(request, project, {"limit_errors": [str(exc)]}, status=400)
    messages.success(request, _("The limit is set."))
    return redirect("project-detail", project.pk)


@requires(MANAGE, methods=("POST",))
def limit_delete(request, pk: int):
    limit = found_or_404(projects.limits_visible_to(request.user), pk)
    projects.delete_limit(limit)
    messages.success(request, _("The limit is removed."))
    return redirect(request.POST.get("next") or "project-list")


@requires(AUTHENTICATED, methods=("POST",))
def key_approve(request, pk: int):
    recorder.describe(action="gateway.key.approve")
    key = found_or_404(services.keys_visible_to(request.user), pk)
    if not services.may_approve(request.user, key):
        raise PermissionDenied(_("Only the project's owners and administrators approve keys."))
    if approve_consumer_key(key, request.user):
        messages.success(request, _("Key %(name)s is approved.") % {"name": key.name})
    else:
        messages.error(request, _("Key %(name)s is not pending.") % {"name": key.name})
    return redirect(request.POST.get("next") or "my-keys")


# --- policy --------------------------------------------------------------------------


@requires(MANAGE, methods=("GET", "HEAD", "POST"))
def policy(request):
    current = projects.current_policy()
    if request.method != "POST":
        return render(request, "gateway/policy.html", {"policy": current, "errors": {}})
    post = request.POST
    form = GatewayPolicySerializer(
        current,
        data={
            "self_service": _checkbox(post, "self_service"),
            "keys_without_project": _checkbox(post, "keys_without_project"),
            "max_key_days": post.get("max_key_days", ""),
        },
    )
    recorder.watch(current)
    recorder.watch_form(form)
    if not form.is_valid():
        return render(
            request, "gateway/policy.html", {"policy": current, "errors": form.errors}, status=400
        )
    projects.save_policy(form)
    messages.success(request, _("The key policy is saved."))
    return redirect("gateway-policy")


# --- usage ---------------------------------------------------------------------------


def _usage_params(request, mine: bool) -> dict:
    params = {k: v for k, v in request.GET.items() if k in ("range", "start", "end", "group_by")}
    params.update(
        {k: v for k, v in request.GET.items() if k in ("project", "user", "key", "route")}
    )
    params.setdefault("range", "24h")
    params.setdefault("group_by", "key" if mine else "project")
    if mine:
        params["user"] = request.user.get_username()
    return params


def _usage_page(request, mine: bool):
    params = _usage_params(request, mine)
    try:
        data = reports.report(request.user, params)
        energy = None if mine else reports.energy_by_project(request.user, params)
    except reports.ReportRefused as exc:
        messages.error(request, str(exc))
        return redirect("my-usage" if mine else "usage")
    user = request.user
    limits = projects.limits_visible_to(user)
    if mine:
        # Only the limits that hold this person's requests, even for an admin.
        mine_only = Q(key__user=user) | Q(user=user) | Q(project__in=projects.project_ids_of(user))
        limits = limits.filter(mine_only)
    return render(
        request,
        "gateway/usage.html",
        {
            "mine": mine,
            "report": data,
            "energy": energy,
            # Shown when there is energy to share out (the agents sent power samples).
            "energy_shown": bool(energy and any(line["joules"] for line in energy["lines"])),
            "window": reports.window_from(params),
            "params": params,
            "ranges": list(reports.RANGES),
            "groups": list(reports.GROUPS),
            "limits": reports.limits_with_use(limits[:50]),
            "projects": projects.projects_visible_to(user),
            "query": request.GET.urlencode(),
        },
    )


@requires(AUTHENTICATED)
def usage(request):
    return _usage_page(request, mine=False)


@requires(AUTHENTICATED)
def my_usage(request):
    return _usage_page(request, mine=True)


@requires(AUTHENTICATED)
def usage_export(request):
    """The report as CSV: the same rows, the same people, as the page and the API."""
    params = _usage_params(request, mine=request.GET.get("mine") == "1")
    try:
        data = reports.report(request.user, params)
    except reports.ReportRefused as exc:
        return HttpResponse(str(exc), status=400, content_type="text/plain; charset=utf-8")
    response = HttpResponse(reports.report_csv(data), content_type="text/csv; charset=utf-8")
    stamp = timezone.now().strftime("%Y%m%d-%H%M")
    response["Content-Disposition"] = f'attachment; filename="hangar-usage-{stamp}.csv"'
    return response
