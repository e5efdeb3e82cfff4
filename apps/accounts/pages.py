"""Pages for people: the language switch, one's own API tokens, and (admins)
users and role bindings. Validation goes through the API's serializers and the
work through the same functions the API calls (apps.accounts.tokens/services);
AuditMiddleware records every POST, described here as the API describes it."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.db.models import Prefetch
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.i18n import set_language as django_set_language

from apps.accounts.api.serializers import ApiTokenSerializer, RoleBindingSerializer, UserSerializer
from apps.accounts.models import ApiToken, RoleBinding
from apps.accounts.permissions import requires
from apps.accounts.policy import AUTHENTICATED, PUBLIC, can
from apps.accounts.roles import Role
from apps.accounts.services import deactivate_user
from apps.accounts.tokens import create_api_token, revoke_api_token
from apps.audit import recorder
from apps.core.pages import found_or_404, visible_or_404
from apps.core.templatetags.console import role_label
from apps.inventory.models import Cluster

LANGUAGE_COOKIE_DAYS = 365


@requires(PUBLIC, methods=("POST",))
def set_language(request):
    """Django's set_language, audited, with a cookie that outlives the browser
    session (Django's default LANGUAGE_COOKIE_AGE of None ends with it)."""
    language = request.POST.get("language", "")[:16]
    recorder.describe(action="accounts.set-language", changes={"language": language})
    response = django_set_language(request)
    cookie = response.cookies.get(settings.LANGUAGE_COOKIE_NAME)
    if cookie is not None and settings.LANGUAGE_COOKIE_AGE is None:
        cookie["max-age"] = LANGUAGE_COOKIE_DAYS * 24 * 3600
    return response


# -- API tokens (any logged-in user, their own) --------------------------------------


def _tokens_page(request, context: dict, status: int = 200):
    context.setdefault("form", {"days": 90})
    context.setdefault("errors", {})
    context["tokens"] = ApiToken.objects.filter(user=request.user)
    context["max_days"] = settings.API_TOKEN_MAX_DAYS
    return render(request, "accounts/api_tokens.html", context, status=status)


@requires(AUTHENTICATED, methods=("GET", "HEAD", "POST"))
def api_tokens(request):
    if request.method != "POST":
        return _tokens_page(request, {})
    recorder.describe(action="accounts.token.create")
    form = ApiTokenSerializer(data=request.POST)
    if not form.is_valid():
        return _tokens_page(request, {"form": request.POST, "errors": form.errors}, status=400)
    try:
        token, secret = create_api_token(
            request.user, form.validated_data["name"], form.validated_data["days"]
        )
    except ValueError:
        errors = {
            "days": [_("Choose between 1 and %(max)d days.") % {"max": settings.API_TOKEN_MAX_DAYS}]
        }
        return _tokens_page(request, {"form": request.POST, "errors": errors}, status=400)
    recorder.describe(target=token, changes={"created": recorder.snapshot(token)})
    # The secret is in this one response only: never stored, never shown again.
    return _tokens_page(request, {"created": token, "secret": secret})


@requires(AUTHENTICATED, methods=("POST",))
def api_token_revoke(request, pk: int):
    recorder.describe(action="accounts.token.revoke")
    token = found_or_404(ApiToken.objects.filter(user=request.user), pk)
    recorder.describe(target=token, changes={"revoked": True})
    revoke_api_token(token)
    messages.success(request, _("Token %(name)s is revoked.") % {"name": token.name})
    return redirect("api-tokens")


# -- users and role bindings (accounts.view to see, accounts.manage to change) --------


def describe_binding(binding: RoleBinding) -> str:
    """ "Operator for group cn=…, in campus-a", in the reader's language."""
    subject = binding.user.username if binding.user_id else binding.ldap_group
    if binding.cluster_id:
        return _("%(role)s for %(subject)s in %(cluster)s") % {
            "role": role_label(binding.role),
            "subject": subject,
            "cluster": binding.cluster.name,
        }
    return _("%(role)s for %(subject)s everywhere") % {
        "role": role_label(binding.role),
        "subject": subject,
    }


def _users_page(request, context: dict | None = None, status: int = 200):
    context = context or {}
    users = (
        get_user_model()
        .objects.order_by("username")
        .prefetch_related(
            Prefetch("role_bindings", queryset=RoleBinding.objects.select_related("cluster"))
        )
    )
    context.update(
        users=users,
        group_bindings=RoleBinding.objects.filter(user__isnull=True)
        .select_related("cluster")
        .order_by("ldap_group", "role"),
        clusters=Cluster.objects.all(),
        roles=Role.values,
        can_manage=can(request.user, "accounts.manage"),
    )
    context.setdefault("user_form", {})
    context.setdefault("user_errors", {})
    context.setdefault("binding_form", {})
    context.setdefault("binding_errors", {})
    return render(request, "accounts/users.html", context, status=status)


@requires("accounts.view")
def user_list(request):
    return _users_page(request)


@requires("accounts.manage", methods=("POST",))
def user_create(request):
    form = UserSerializer(data=request.POST)
    if not form.is_valid():
        context = {"user_form": request.POST, "user_errors": form.errors}
        return _users_page(request, context, status=400)
    user = form.save()
    recorder.describe(target=user, changes={"created": recorder.snapshot(user)})
    messages.success(request, _("User %(name)s is created.") % {"name": user.username})
    return redirect("user-list")


@requires("accounts.manage", methods=("POST",))
def user_deactivate(request, pk: int):
    user = visible_or_404(get_user_model().objects.all(), request.user, "accounts.view", pk)
    recorder.describe(target=user, changes={"is_active": [user.is_active, False]})
    deactivate_user(user)
    messages.success(
        request,
        _("User %(name)s is deactivated and their API tokens revoked.") % {"name": user.username},
    )
    return redirect("user-list")


@requires("accounts.manage", methods=("POST",))
def binding_create(request):
    data = {k: v for k, v in request.POST.items() if k != "csrfmiddlewaretoken" and v != ""}
    form = RoleBindingSerializer(data=data)
    if not form.is_valid():
        context = {"binding_form": request.POST, "binding_errors": form.errors}
        return _users_page(request, context, status=400)
    binding = form.save()
    recorder.describe(target=binding, changes={"created": recorder.snapshot(binding)})
    messages.success(
        request, _("Role binding added: %(binding)s.") % {"binding": describe_binding(binding)}
    )
    return redirect("user-list")


@requires("accounts.manage", methods=("POST",))
def binding_delete(request, pk: int):
    binding = visible_or_404(RoleBinding.objects.all(), request.user, "accounts.view", pk)
    recorder.describe(target=binding, changes={"deleted": recorder.snapshot(binding)})
    text = describe_binding(binding)
    binding.delete()
    messages.success(request, _("Role binding removed: %(binding)s.") % {"binding": text})
    return redirect("user-list")
