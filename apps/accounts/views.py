"""Login and logout pages, the password form and single sign-on (CAS, OIDC).

For SSO the protocol work is the libraries' views (django-cas-ng,
mozilla-django-oidc); the subclasses here add what Hangar needs around them: a
clear page for every way a login fails, and the audit event. The rest of the
identity UI lives in the API and apps/accounts/pages.py.
"""

from __future__ import annotations

import requests
from django.conf import settings
from django.contrib import auth
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, SuspiciousOperation
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.csrf import csrf_exempt
from django_cas_ng import views as cas_views
from mozilla_django_oidc import views as oidc_views

from apps.accounts import lockout
from apps.accounts.permissions import requires
from apps.accounts.policy import AUTHENTICATED, PUBLIC, can
from apps.accounts.sso import services as sso
from apps.accounts.sso.identity import Refused
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


def login_context(request, **extra) -> dict:
    """What every rendering of the login page needs, the SSO buttons included."""
    next_url = _safe_next(request)
    return {"next": next_url, "sso_choices": sso.login_choices(next_url), **extra}


@requires(PUBLIC, methods=("GET", "HEAD", "POST"))
def login_view(request):
    if request.method == "GET":
        return render(request, "accounts/login.html", login_context(request))
    username = request.POST.get("username", "").strip()
    password = request.POST.get("password", "")
    address = client_address(request)
    shown = username[:150] if _valid_username(username[:150]) else repr(username[:150])
    recorder.describe(action="auth.login", target=("auth.user", "", shown), actor_name=shown)
    context = login_context(request, username=shown)
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
    return redirect(landing(user, context["next"]))


def landing(user, next_url: str) -> str:
    """Where a login lands: `next`, but not the dashboard for someone who cannot see it."""
    if next_url == "/" and not can(user, "inventory.view"):
        # The dashboard is the inventory's: someone who only uses the gateway (the
        # consumer role, or no role) starts at their keys.
        return reverse("my-keys")
    return next_url


@requires(AUTHENTICATED, methods=("POST",))
def logout_view(request):
    recorder.describe(action="auth.logout", target=request.user)
    # Read before the session is flushed; the identity server's own logout follows.
    identity_server_logout = sso.logout_redirect(request)
    if identity_server_logout:
        recorder.describe(changes={"single_logout": request.session.get(sso.SESSION_PROTOCOL)})
    auth.logout(request)
    return redirect(identity_server_logout or "login")


# -- single sign-on ------------------------------------------------------------------

UNREACHABLE = gettext_lazy(
    "The identity server could not be reached, so single sign-on does not work right now. "
    "Local accounts still log in with their password."
)
STATE_MISMATCH = gettext_lazy(
    "This answer from the identity server does not belong to a login started in this "
    "browser. Start the login again."
)
NOT_VERIFIED = gettext_lazy(
    "The identity server's answer could not be verified, so you were not logged in. "
    "Start the login again."
)
NOT_CONFIRMED = gettext_lazy(
    "The identity server did not confirm your login. Start the login again."
)

STATUS = {"unreachable": 503, "state": 400, "unverified": 400, "awaiting-approval": 403}


def _failed(request, protocol: str, refusal: Refused):
    sso.record_login(request, protocol, refusal=refusal)
    context = login_context(request, error=refusal.message)
    return render(request, "accounts/login.html", context, status=STATUS.get(refusal.reason, 401))


class CASLoginView(cas_views.LoginView):
    def successful_login(self, request, next_page):
        return redirect(landing(request.user, next_page))

    def get(self, request):
        if not settings.SSO_CAS:
            raise Http404
        # Only a ticket checked now is a login; an open session is just sent on.
        checks_ticket = bool(request.GET.get("ticket")) and not request.user.is_authenticated
        try:
            response = super().get(request)
        except requests.RequestException:
            return _failed(request, "cas", Refused("unreachable", UNREACHABLE))
        except PermissionDenied:
            refusal = getattr(request, "sso_refusal", None) or Refused("refused", NOT_CONFIRMED)
            return _failed(request, "cas", refusal)
        if checks_ticket and request.user.is_authenticated:
            sso.record_login(request, "cas", user=request.user)
        return response

    def post(self, request):
        # The CAS server's single-logout request (a SAML LogoutRequest naming the ticket).
        if not settings.SSO_CAS:
            raise Http404
        if request.POST.get("logoutRequest"):
            recorder.describe(action="auth.sso-logout", changes={"backend": "cas"})
        return super().post(request)


class OIDCCallbackView(oidc_views.OIDCAuthenticationCallbackView):
    def get(self, request):
        if not settings.SSO_OIDC:
            raise Http404
        if not {"code", "state", "error"} & set(request.GET):
            return redirect("login")  # a bare visit, no answer from a provider: no login attempt
        state = request.GET.get("state")
        if state is not None and state not in request.session.get("oidc_states", {}):
            return _failed(request, "oidc", Refused("state", STATE_MISMATCH))
        try:
            return super().get(request)
        except SuspiciousOperation:
            # A nonce that does not match, a bad signature: the library says which in its log.
            return _failed(request, "oidc", Refused("unverified", NOT_VERIFIED))
        except requests.HTTPError:
            return _failed(request, "oidc", Refused("code-refused", NOT_CONFIRMED))
        except requests.RequestException:
            return _failed(request, "oidc", Refused("unreachable", UNREACHABLE))

    def login_failure(self):
        refusal = getattr(self.request, "sso_refusal", None) or Refused("refused", NOT_CONFIRMED)
        return _failed(self.request, "oidc", refusal)

    @property
    def success_url(self) -> str:
        return landing(self.user, super().success_url)

    def login_success(self):
        response = super().login_success()
        sso.record_login(self.request, "oidc", user=self.user)
        return response


class OIDCLoginView(oidc_views.OIDCAuthenticationRequestView):
    def get(self, request):
        if not settings.SSO_OIDC:
            raise Http404
        return super().get(request)

    def __init__(self, *args, **kwargs):
        # The library reads its endpoints when the view is made; with OIDC off
        # there are none, and get() answers 404 before they are needed.
        if settings.SSO_OIDC:
            super().__init__(*args, **kwargs)
        else:
            oidc_views.View.__init__(self, *args, **kwargs)


cas_login = csrf_exempt(requires(PUBLIC, methods=("GET", "HEAD", "POST"))(CASLoginView.as_view()))
oidc_login = requires(PUBLIC)(OIDCLoginView.as_view())
oidc_callback = requires(PUBLIC)(OIDCCallbackView.as_view())
