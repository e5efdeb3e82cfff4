"""Configure SSO exactly as console/settings.py does, from HANGAR_CAS_* / HANGAR_OIDC_*."""

from __future__ import annotations

from urllib.parse import parse_qs, urljoin, urlsplit

import requests

from tests.support.identity_server import submit_login_form

UNREACHABLE = "The identity server could not be reached"


def use_sso(settings, monkeypatch, env: dict[str, str]) -> dict:
    from console.sso import sso_settings

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    built = sso_settings()
    for name, value in built.items():
        setattr(settings, name, value)
    settings.AUTHENTICATION_BACKENDS = [
        "django.contrib.auth.backends.ModelBackend",
        *built["SSO_BACKENDS"],
    ]
    return built


def cas_ticket_url(browser: requests.Session, hangar: str, username: str, password: str) -> str:
    """Log in at the CAS server from Hangar's button; the service URL with the
    ticket that the CAS server sends the browser back with (not yet followed)."""
    form = browser.get(f"{hangar}/sso/cas/login/", timeout=10)
    answer = submit_login_form(browser, form, username, password, allow_redirects=False)
    assert answer.status_code == 302, answer.text[:500]
    location = answer.headers["Location"]
    assert "ticket=ST-" in location, location
    return location


def oidc_code_url(
    browser: requests.Session,
    hangar: str,
    username: str,
    password: str,
    tamper=None,
) -> str:
    """Start Hangar's OIDC login, log in at the provider; the callback URL with the
    code and state (not yet followed). `tamper(url) -> url` may alter the
    authorization request on its way through the browser."""
    start = browser.get(f"{hangar}/sso/oidc/login/", allow_redirects=False, timeout=10)
    assert start.status_code == 302
    authorize = start.headers["Location"]
    if tamper:
        authorize = tamper(authorize)
    form = browser.get(authorize, timeout=10)
    answer = submit_login_form(browser, form, username, password, allow_redirects=False)
    # The provider's login form sends the browser back to the authorization endpoint.
    while answer.status_code == 302 and "/sso/oidc/callback/" not in answer.headers["Location"]:
        following = urljoin(answer.url, answer.headers["Location"])
        answer = browser.get(following, allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text[:500]
    return answer.headers["Location"]


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
