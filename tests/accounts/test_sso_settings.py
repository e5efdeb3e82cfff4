"""HANGAR_CAS_* and HANGAR_OIDC_* to settings: off by default, one clear line for a bad value."""

from __future__ import annotations

import pytest

from console.config import ConfigError
from console.sso import CAS_BACKEND, OIDC_BACKEND, sso_settings

OIDC = {
    "HANGAR_OIDC_CLIENT_ID": "hangar",
    "HANGAR_OIDC_CLIENT_SECRET": "s3cret",
    "HANGAR_OIDC_AUTHORIZATION_ENDPOINT": "https://id.example.edu/authorize",
    "HANGAR_OIDC_TOKEN_ENDPOINT": "https://id.example.edu/token",
    "HANGAR_OIDC_USERINFO_ENDPOINT": "https://id.example.edu/userinfo",
    "HANGAR_OIDC_JWKS_ENDPOINT": "https://id.example.edu/jwks",
}


@pytest.fixture
def env(monkeypatch):
    def apply(values: dict[str, str]) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return apply


def test_sso_is_off_unless_configured():
    built = sso_settings()
    assert (built["SSO_CAS"], built["SSO_OIDC"], built["SSO_BACKENDS"]) == (None, None, [])


def test_cas_and_oidc_each_switch_on_their_backend(env):
    env({"HANGAR_CAS_SERVER_URL": "https://cas.example.edu/cas", **OIDC})
    built = sso_settings()

    assert built["SSO_BACKENDS"] == [CAS_BACKEND, OIDC_BACKEND]
    assert built["CAS_SERVER_URL"] == "https://cas.example.edu/cas/"
    assert built["SSO_CAS"]["group_attributes"] == ["eduPersonAffiliation"]
    assert (built["OIDC_USE_PKCE"], built["OIDC_USE_NONCE"]) == (True, True)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"HANGAR_CAS_SERVER_URL": "cas.example.edu"}, "must start with https:// or http://"),
        ({"HANGAR_CAS_SERVER_URL": "https://c/", "HANGAR_CAS_VERSION": "4"}, "must be 2 or 3"),
        ({"HANGAR_CAS_SERVER_URL": "https://c/", "HANGAR_CAS_TIMEOUT": "0"}, "at least 1"),
        ({"HANGAR_OIDC_CLIENT_ID": "hangar"}, "HANGAR_OIDC_CLIENT_SECRET is required"),
        ({**OIDC, "HANGAR_OIDC_TOKEN_ENDPOINT": ""}, "HANGAR_OIDC_TOKEN_ENDPOINT is required"),
        ({**OIDC, "HANGAR_OIDC_SIGN_ALGO": "none"}, "must be RS256, ES256 or HS256"),
        ({**OIDC, "HANGAR_SSO_APPROVAL": "maybe"}, "is not a boolean"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(env, values, message):
    env(values)
    with pytest.raises(ConfigError, match=message) as raised:
        sso_settings()
    assert "\n" not in str(raised.value) and "HANGAR_" in str(raised.value)
