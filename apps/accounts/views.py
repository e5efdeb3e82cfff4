"""Login and logout pages (the rest of the identity UI lives in the API for now)."""

from __future__ import annotations

from django.contrib import auth
from django.contrib.auth import get_user_model
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _

from apps.accounts import lockout
from apps.accounts.permissions import requires
from apps.accounts.policy import AUTHENTICATED, PUBLIC, can
from apps.audit import recorder
from apps.audit.middleware import client_address


def _valid_username(username: str) -> bool:
    # Control characters (NUL above all) have no place in a username, and the
    # database refuses to store NUL in the audit log; Django caps usernames at 150.
    max_length = get_user_model()._meta.get_field(get_user_model().USERNAME_FIELD).max_length
    return len(username) <= max_length and not any(ord(ch) < 32 for ch in username)


def _safe_next(request) -> str:
    target = request.POST.get("next") or request.GET.get("next") or "/"
    if url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
        return target
    return "/"


@requires(PUBLIC, methods=("GET", "HEAD", "POST"))
def login_view(request):
    if request.method == "GET":
        return render(request, "accounts/login.html", {"next": _safe_next(request)})
    username = request.POST.get("username", "").strip()
    password = request.POST.get("password", "")
    address = client_address(request)
    shown = username[:150] if _valid_username(username[:150]) else repr(username[:150])
    recorder.describe(action="auth.login", target=("auth.user", "", shown), actor_name=shown)
    context = {"next": _safe_next(request), "username": shown}
    if not username or not password:
        recorder.describe(outcome=recorder.Outcome.FAILED)
        context["error"] = _("Enter your username and password.")
        return render(request, "accounts/login.html", context, status=400)
    if not _valid_username(username):
        recorder.describe(outcome=recorder.Outcome.DENIED, changes={"reason": "invalid-username"})
        context["error"] = _(
            "That is not a valid username: at most 150 characters, no control characters."
        )
        return render(request, "accounts/login.html", context, status=400)
    refusal = lockout.check_login_allowed(username, address)
    if refusal is not None:
        recorder.describe(outcome=recorder.Outcome.DENIED, changes={"reason": "locked"})
        context["error"] = refusal.message
        response = render(request, "accounts/login.html", context, status=429)
        response["Retry-After"] = str(refusal.retry_after)
        return response
    user = auth.authenticate(request, username=username, password=password)
    if user is None:
        lockout.note_login_failure(username, address)
        recorder.describe(outcome=recorder.Outcome.DENIED, changes={"reason": "bad-credentials"})
        context["error"] = _("Wrong username or password.")
        if getattr(request, "ldap_unreachable", False):
            context["error"] = _(
                "The directory server is unreachable, so directory accounts cannot log in "
                "right now. Local accounts still work."
            )
            recorder.describe(changes={"directory": "unreachable"})
        return render(request, "accounts/login.html", context, status=401)
    lockout.note_login_success(username, address)
    auth.login(request, user)
    recorder.describe(target=user, changes={"backend": user.backend.rsplit(".", 1)[-1]})
    if context["next"] == "/" and not can(user, "inventory.view"):
        # The dashboard is the inventory's: someone who only uses the gateway (the
        # consumer role, or no role) starts at their keys.
        return redirect("my-keys")
    return redirect(context["next"])


@requires(AUTHENTICATED, methods=("POST",))
def logout_view(request):
    recorder.describe(action="auth.logout", target=request.user)
    auth.logout(request)
    return redirect("login")
