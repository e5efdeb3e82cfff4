"""Turn HANGAR_CAS_* and HANGAR_OIDC_* variables into single sign-on settings.

CAS is on when HANGAR_CAS_SERVER_URL is set, OpenID Connect when
HANGAR_OIDC_CLIENT_ID is set; both may be on beside local and LDAP accounts
(docs/identity.md). The result holds the settings of the two libraries that speak
the protocols (django-cas-ng, mozilla-django-oidc) and Hangar's own mapping of
attributes and claims (SSO_CAS, SSO_OIDC). Timeouts are short on purpose, as for
LDAP: an identity server that is down must not hold the login page.
"""

from __future__ import annotations

from console import config
from console.config import PREFIX, ConfigError

CAS_BACKEND = "apps.accounts.sso.cas.HangarCASBackend"
OIDC_BACKEND = "apps.accounts.sso.oidc.HangarOIDCBackend"


def _url(name: str, required: bool = True) -> str | None:
    value = config.raw(name)
    if value is None:
        if required:
            raise ConfigError(f"{PREFIX}{name} is required")
        return None
    if not value.startswith(("https://", "http://")):
        raise ConfigError(f"{PREFIX}{name}={value!r} must start with https:// or http://")
    return value


def timed_session_factory(timeout: int):
    """python-cas asks the server with no timeout; a hung CAS server would hold the
    login request (and a web worker) as long as it hangs. Here every call has one."""
    import requests

    class TimedSession(requests.Session):
        def request(self, *args, **kwargs):
            kwargs.setdefault("timeout", timeout)
            return super().request(*args, **kwargs)

    return TimedSession


def cas_settings() -> dict:
    server = _url("CAS_SERVER_URL", required=False)
    if server is None:
        return {}
    version = config.raw("CAS_VERSION", "3")
    if version not in {"2", "3"}:
        raise ConfigError(f"{PREFIX}CAS_VERSION={version!r} must be 2 or 3")
    timeout = config.integer("CAS_TIMEOUT", 5, minimum=1)
    return {
        "CAS_SERVER_URL": server if server.endswith("/") else server + "/",
        "CAS_VERSION": version,
        # Hangar applies attributes itself (apps.accounts.sso.identity).
        "CAS_APPLY_ATTRIBUTES_TO_USER": False,
        "CAS_CREATE_USER": True,
        "CAS_REDIRECT_URL": "/",
        "CAS_LOGIN_MSG": None,
        "CAS_LOGGED_MSG": None,
        "CAS_RETRY_LOGIN": False,
        "CAS_SESSION_FACTORY": timed_session_factory(timeout),
        "SSO_CAS": {
            "label": config.raw("CAS_LABEL", ""),
            # Empty: the CAS <cas:user> element is the username.
            "username_attribute": config.raw("CAS_USERNAME_ATTRIBUTE", ""),
            "name_attribute": config.raw("CAS_NAME_ATTRIBUTE", "displayName"),
            "email_attribute": config.raw("CAS_EMAIL_ATTRIBUTE", "mail"),
            "group_attributes": config.listing("CAS_GROUP_ATTRIBUTES", ["eduPersonAffiliation"]),
            "single_logout": config.boolean("CAS_SINGLE_LOGOUT", True),
        },
    }


def oidc_settings() -> dict:
    client_id = config.raw("OIDC_CLIENT_ID")
    if client_id is None:
        return {}
    secret = config.raw("OIDC_CLIENT_SECRET")
    if secret is None:
        raise ConfigError(f"{PREFIX}OIDC_CLIENT_SECRET is required with OpenID Connect")
    algorithm = config.raw("OIDC_SIGN_ALGO", "RS256")
    if algorithm not in {"RS256", "ES256", "HS256"}:
        raise ConfigError(f"{PREFIX}OIDC_SIGN_ALGO={algorithm!r} must be RS256, ES256 or HS256")
    jwks = _url("OIDC_JWKS_ENDPOINT", required=algorithm != "HS256")
    return {
        "OIDC_RP_CLIENT_ID": client_id,
        "OIDC_RP_CLIENT_SECRET": secret,
        "OIDC_OP_AUTHORIZATION_ENDPOINT": _url("OIDC_AUTHORIZATION_ENDPOINT"),
        "OIDC_OP_TOKEN_ENDPOINT": _url("OIDC_TOKEN_ENDPOINT"),
        "OIDC_OP_USER_ENDPOINT": _url("OIDC_USERINFO_ENDPOINT"),
        "OIDC_OP_JWKS_ENDPOINT": jwks,
        "OIDC_RP_SIGN_ALGO": algorithm,
        "OIDC_RP_SCOPES": config.raw("OIDC_SCOPES", "openid profile email"),
        "OIDC_USE_NONCE": True,
        "OIDC_USE_PKCE": True,
        "OIDC_PKCE_CODE_CHALLENGE_METHOD": "S256",
        "OIDC_TIMEOUT": config.integer("OIDC_TIMEOUT", 5, minimum=1),
        # Kept for the end_session request's id_token_hint at logout.
        "OIDC_STORE_ID_TOKEN": True,
        "OIDC_AUTHENTICATION_CALLBACK_URL": "sso-oidc-callback",
        "SSO_OIDC": {
            "label": config.raw("OIDC_LABEL", ""),
            "username_claim": config.raw("OIDC_USERNAME_CLAIM", "preferred_username"),
            "name_claim": config.raw("OIDC_NAME_CLAIM", "name"),
            "email_claim": config.raw("OIDC_EMAIL_CLAIM", "email"),
            "group_claims": config.listing("OIDC_GROUP_CLAIMS", ["groups"]),
            "end_session_endpoint": _url("OIDC_END_SESSION_ENDPOINT", required=False),
        },
    }


def sso_settings() -> dict:
    """Both protocols' settings, the backends to add, and the approval switch."""
    settings = {**cas_settings(), **oidc_settings()}
    settings.setdefault("SSO_CAS", None)
    settings.setdefault("SSO_OIDC", None)
    # New SSO accounts wait, inactive, until an administrator activates them.
    settings["SSO_APPROVAL_REQUIRED"] = config.boolean("SSO_APPROVAL", False)
    backends = []
    if settings["SSO_CAS"]:
        backends.append(CAS_BACKEND)
    if settings["SSO_OIDC"]:
        backends.append(OIDC_BACKEND)
    settings["SSO_BACKENDS"] = backends
    return settings
