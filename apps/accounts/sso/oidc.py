"""OpenID Connect login (authorization code with PKCE) through mozilla-django-oidc."""

from __future__ import annotations

from urllib.parse import urlencode

from django.conf import settings
from django.urls import reverse
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from apps.accounts.sso import identity


class HangarOIDCBackend(OIDCAuthenticationBackend):
    """Finds users by the configured username claim, not by e-mail (the library's
    default): two people may share a mailing-list address, never a username."""

    def authenticate(self, request, **kwargs):
        if not settings.SSO_OIDC or "nonce" not in kwargs:
            # Only the callback view passes a nonce; a password login never reaches here.
            return None
        return super().authenticate(request, **kwargs)

    def verify_claims(self, claims) -> bool:
        return True  # user_for checks what Hangar needs (a username)

    def get_or_create_user(self, access_token, id_token, payload):
        claims = self.get_userinfo(access_token, id_token, payload)
        # The ID token's claims count too: some servers put groups only there.
        found = identity.identity_from("oidc", "", {**payload, **claims}, settings.SSO_OIDC)
        # How the provider authenticated the person (RFC 8176 `amr`), for the
        # second-factor policy (HANGAR_SSO_MFA_TRUSTED): only the ID token's own claim.
        self.request.sso_amr = payload.get("amr")
        try:
            return identity.user_for(found)
        except identity.Refused as refusal:
            self.request.sso_refusal = refusal
            self.request.sso_username = found.username
            return None


def end_session_url(request) -> str | None:
    """Where the browser goes to end its session at the provider (RP-initiated
    logout), or None when the provider has no end_session endpoint."""
    endpoint = (settings.SSO_OIDC or {}).get("end_session_endpoint")
    if not endpoint:
        return None
    params = {
        "client_id": settings.OIDC_RP_CLIENT_ID,
        "post_logout_redirect_uri": request.build_absolute_uri(reverse("login")),
    }
    if request.session.get("oidc_id_token"):
        params["id_token_hint"] = request.session["oidc_id_token"]
    return f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(params)}"
