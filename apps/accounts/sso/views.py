"""Single sign-on's views (CAS, OpenID Connect).

The protocol work is the libraries' views (django-cas-ng, mozilla-django-oidc);
the subclasses here add what Hangar needs around them: a clear page for every
way a login fails, the audit event, and the same second-factor step and session
policy as a password login (`finish_sso_login`).
"""

from __future__ import annotations

import requests
from django.conf import settings
from django.core.exceptions import PermissionDenied, SuspiciousOperation
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils.translation import gettext_lazy
from django.views.decorators.csrf import csrf_exempt
from django_cas_ng import views as cas_views
from mozilla_django_oidc import views as oidc_views

from apps.accounts.login import finish_sso_login, landing, login_context
from apps.accounts.permissions import requires
from apps.accounts.policy import PUBLIC
from apps.accounts.sso import services as sso
from apps.accounts.sso.identity import Refused
from apps.audit import recorder

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
    checks_ticket = False  # set per request in get()

    def successful_login(self, request, next_page):
        if not self.checks_ticket:
            return redirect(landing(request.user, next_page))
        sso.record_login(request, "cas", user=request.user)
        return finish_sso_login(request, request.user, next_page)

    def get(self, request):
        if not settings.SSO_CAS:
            raise Http404
        # Only a ticket checked now is a login; an open session is just sent on.
        self.checks_ticket = bool(request.GET.get("ticket")) and not request.user.is_authenticated
        try:
            response = super().get(request)
        except requests.RequestException:
            return _failed(request, "cas", Refused("unreachable", UNREACHABLE))
        except PermissionDenied:
            refusal = getattr(request, "sso_refusal", None) or Refused("refused", NOT_CONFIRMED)
            return _failed(request, "cas", refusal)
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
        super().login_success()  # the library's auth.login and token bookkeeping
        sso.record_login(self.request, "oidc", user=self.user)
        amr = getattr(self.request, "sso_amr", None)
        return finish_sso_login(self.request, self.user, self.success_url, amr=amr)


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
