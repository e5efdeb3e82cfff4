"""What the login page offers, what an SSO login leaves in the audit log, and
where a logout sends the browser so the identity server's session ends too."""

from __future__ import annotations

from urllib.parse import urlencode

from django.conf import settings
from django.urls import reverse
from django.utils.translation import gettext as _
from django_cas_ng.models import SessionTicket
from django_cas_ng.utils import get_cas_client

from apps.accounts.sso import oidc
from apps.accounts.sso.identity import Refused
from apps.audit import recorder
from apps.audit.middleware import client_address

# The session remembers which protocol logged it in, for the logout.
SESSION_PROTOCOL = "hangar_sso"
# What a session must keep across the second-factor step for the single logout.
SESSION_KEPT = (SESSION_PROTOCOL, "oidc_id_token")


def login_choices(next_url: str) -> list[dict]:
    """The SSO buttons of the login page, in the order CAS, OpenID Connect."""
    query = "?" + urlencode({"next": next_url}) if next_url and next_url != "/" else ""
    choices = []
    if settings.SSO_CAS:
        label = settings.SSO_CAS["label"] or _("CAS single sign-on")
        choices.append({"protocol": "cas", "url": reverse("sso-cas-login") + query, "label": label})
    if settings.SSO_OIDC:
        label = settings.SSO_OIDC["label"] or _("OpenID Connect")
        choices.append(
            {"protocol": "oidc", "url": reverse("sso-oidc-login") + query, "label": label}
        )
    return choices


def record_login(request, protocol: str, user=None, refusal: Refused | None = None) -> None:
    """One audit event per SSO login attempt. The callbacks are GET requests,
    which the audit middleware leaves alone, so the event is written here."""
    if user is not None:
        request.session[SESSION_PROTOCOL] = protocol
        recorder.record(
            "auth.login",
            target=user,
            changes={"backend": protocol, "groups": _groups_of(user)},
            actor_type=recorder.Actor.USER,
            actor_id=str(user.pk),
            actor_name=user.get_username(),
            source_address=client_address(request),
            request_id=getattr(request, "request_id", ""),
        )
        return
    name = getattr(request, "sso_username", "") or ""
    recorder.record(
        "auth.login",
        target=("auth.user", "", name),
        changes={"backend": protocol, "reason": refusal.reason if refusal else "refused"},
        outcome=recorder.Outcome.FAILED
        if refusal and refusal.reason == "unreachable"
        else recorder.Outcome.DENIED,
        actor_type=recorder.Actor.ANONYMOUS,
        actor_name=name,
        source_address=client_address(request),
        request_id=getattr(request, "request_id", ""),
    )


def _groups_of(user) -> list[str]:
    from apps.accounts.models import DirectoryMembership

    return DirectoryMembership.groups_of(user)


def logout_redirect(request) -> str | None:
    """Where to send the browser after the local logout, to end the SSO session
    at the identity server as well (CAS /logout, OIDC end_session), or None.
    Called before the local session is flushed: it reads what the session knew."""
    protocol = request.session.get(SESSION_PROTOCOL)
    back = request.build_absolute_uri(reverse("login"))
    if protocol == "cas" and settings.SSO_CAS:
        SessionTicket.objects.filter(session_key=request.session.session_key).delete()
        if settings.SSO_CAS["single_logout"]:
            return get_cas_client(request=request).get_logout_url(back)
    if protocol == "oidc" and settings.SSO_OIDC:
        return oidc.end_session_url(request)
    return None
