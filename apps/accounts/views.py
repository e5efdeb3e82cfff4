"""Login (password, then the second factor when the account has one), logout, and
one's own account (the forced password change, enrolling a second factor).

Single sign-on's views are in apps/accounts/sso/views.py; they end in
`login.finish_sso_login`, so an SSO login passes the same second-factor step and
session policy as a password login.
"""

from __future__ import annotations

from django.contrib import auth, messages
from django.contrib.auth import get_user_model, password_validation, update_session_auth_hash
from django.core.exceptions import ValidationError
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _

from apps.accounts import lockout, login, passwords, sessions, twofactor
from apps.accounts.permissions import requires
from apps.accounts.policy import AUTHENTICATED, PUBLIC
from apps.accounts.settings_view import security_settings
from apps.accounts.sso import services as sso
from apps.audit import recorder
from apps.audit.forwarding import forwarding_state
from apps.audit.middleware import client_address


def _valid_username(username: str) -> bool:
    # Control characters (NUL above all) have no place in a username, and the
    # database refuses to store NUL in the audit log; Django caps usernames at 150.
    max_length = get_user_model()._meta.get_field(get_user_model().USERNAME_FIELD).max_length
    return len(username) <= max_length and not any(ord(ch) < 32 for ch in username)


@requires(PUBLIC, methods=("GET", "HEAD", "POST"))
def login_view(request):
    if request.method == "GET":
        return render(request, "accounts/login.html", login.login_context(request))
    username = request.POST.get("username", "").strip()
    password = request.POST.get("password", "")
    address = client_address(request)
    shown = username[:150] if _valid_username(username[:150]) else repr(username[:150])
    recorder.describe(action="auth.login", target=("auth.user", "", shown), actor_name=shown)
    context = login.login_context(request, username=shown)
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
    backend = user.backend.rsplit(".", 1)[-1]
    recorder.describe(target=user, changes={"backend": backend})
    if twofactor.has_second_factor(user):
        # The password was right; the login is not done until the code is.
        request.session[login.PENDING] = {
            "user": user.pk,
            "backend": user.backend,
            "next": context["next"],
        }
        recorder.describe(outcome=recorder.Outcome.ALLOWED, changes={"second_factor": "asked"})
        return render(request, "accounts/login_code.html", {"next": context["next"]})
    lockout.note_login_success(username, address)
    return login.finish_login(request, user, address, context["next"])


@requires(PUBLIC, methods=("POST",))
def login_code_view(request):
    """The second step: a TOTP or recovery code for the user whose password was right.

    A wrong code counts toward the lockout exactly as a wrong password does.
    """
    pending = request.session.get(login.PENDING) or {}
    address = client_address(request)
    User = get_user_model()
    user = User.objects.filter(pk=pending.get("user"), is_active=True).first()
    recorder.describe(action="auth.login.second-factor")
    if user is None:
        recorder.describe(outcome=recorder.Outcome.FAILED, changes={"reason": "no-pending-login"})
        context = {"next": "/", "error": _("Log in with your password first.")}
        return render(request, "accounts/login.html", context, status=400)
    username = user.get_username()
    recorder.describe(target=user, actor_name=username)
    context = {"next": pending.get("next") or "/"}
    refusal = lockout.check_login_allowed(username, address)
    if refusal is not None:
        request.session.pop(login.PENDING, None)
        recorder.describe(outcome=recorder.Outcome.DENIED, changes={"reason": "locked"})
        context["error"] = refusal.message
        response = render(request, "accounts/login.html", context, status=429)
        response["Retry-After"] = str(refusal.retry_after)
        return response
    kind = twofactor.verify_second_factor(user, request.POST.get("code", ""))
    if kind is None:
        lockout.note_login_failure(username, address)
        recorder.describe(outcome=recorder.Outcome.DENIED, changes={"reason": "bad-code"})
        context["error"] = _("That code is wrong, expired or already used. Try the next one.")
        return render(request, "accounts/login_code.html", context, status=401)
    request.session.pop(login.PENDING, None)
    lockout.note_login_success(username, address)
    user.backend = pending["backend"]
    recorder.describe(changes={"second_factor": kind})
    return login.finish_login(request, user, address, context["next"], verified=True)


@requires(AUTHENTICATED, methods=("POST",))
def logout_view(request):
    recorder.describe(action="auth.logout", target=request.user)
    # Read before the session is flushed; the identity server's own logout follows.
    identity_server_logout = sso.logout_redirect(request)
    if identity_server_logout:
        recorder.describe(changes={"single_logout": request.session.get(sso.SESSION_PROTOCOL)})
    auth.logout(request)
    return redirect(identity_server_logout or "login")


# -- one's own account: forced password change, second factor -------------------------


@requires(AUTHENTICATED, methods=("GET", "HEAD", "POST"))
def password_change(request):
    reason = passwords.password_change_required(request.user)
    context = {"reason": reason, "errors": []}
    if request.method != "POST":
        return render(request, "accounts/password_change.html", context)
    recorder.describe(action="accounts.password.change", target=request.user)
    user = request.user
    current = request.POST.get("current_password", "")
    new = request.POST.get("new_password", "")
    if not user.check_password(current):
        recorder.describe(outcome=recorder.Outcome.DENIED, changes={"reason": "wrong-password"})
        context["errors"] = [_("Your current password is wrong.")]
        return render(request, "accounts/password_change.html", context, status=400)
    if new != request.POST.get("new_password_again", ""):
        context["errors"] = [_("The two new passwords differ.")]
        return render(request, "accounts/password_change.html", context, status=400)
    try:
        password_validation.validate_password(new, user)
    except ValidationError as refused:
        context["errors"] = list(refused.messages)
        return render(request, "accounts/password_change.html", context, status=400)
    passwords.change_password(user, new)
    # The session stays; the others end (they knew the old password).
    update_session_auth_hash(request, user)
    messages.success(request, _("Your password is changed."))
    return redirect(sessions.gate_of(request) or "/")


@requires(AUTHENTICATED, methods=("GET", "HEAD", "POST"))
def second_factor(request):
    """Enrol (or re-enrol) TOTP: a QR code drawn here, confirmed by a first code."""
    user = request.user
    context = {
        "enrolled": twofactor.has_second_factor(user),
        "required": twofactor.second_factor_required(user),
    }
    if request.method != "POST":
        factor = twofactor.start_enrolment(user)
        context.update(qr=twofactor.qr_svg(factor), secret=factor.secret)
        return render(request, "accounts/second_factor.html", context)
    recorder.describe(action="accounts.second-factor.enrol", target=user)
    codes = twofactor.confirm_enrolment(user, request.POST.get("code", ""))
    if codes is None:
        recorder.describe(changes={"reason": "bad-code"})
        factor = twofactor.start_enrolment(user)
        context.update(
            qr=twofactor.qr_svg(factor),
            secret=factor.secret,
            error=_("That code does not match. Check the time on your phone and try again."),
        )
        return render(request, "accounts/second_factor.html", context, status=400)
    twofactor.mark_verified(request)
    recorder.describe(changes={"enrolled": True, "recovery_codes": len(codes)})
    # The recovery codes are in this one response only.
    context.update(enrolled=True, recovery_codes=codes)
    return render(request, "accounts/second_factor.html", context)


@requires("security.view")
def security_policy(request):
    """The password, session and second-factor policy in force, for administrators."""
    context = {"policy": security_settings(), "forwarding": forwarding_state()}
    return render(request, "accounts/security_policy.html", context)
