"""A real campus identity server (CAS and OpenID Connect) for the SSO tests,
and a requests session that walks through its login forms like a browser."""

from __future__ import annotations

import html
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.support.processes import ROOT, free_port, start, stop, wait_for


@dataclass
class IdentityServer:
    url: str

    @property
    def cas_url(self) -> str:
        return f"{self.url}/cas/"

    def hangar_env(self) -> dict[str, str]:
        """HANGAR_CAS_* and HANGAR_OIDC_* variables pointing Hangar at this server."""
        return {
            "HANGAR_CAS_SERVER_URL": self.cas_url,
            "HANGAR_CAS_GROUP_ATTRIBUTES": "eduPersonAffiliation,departmentCode",
            "HANGAR_CAS_LABEL": "Campus CAS",
            "HANGAR_OIDC_CLIENT_ID": "hangar",
            "HANGAR_OIDC_CLIENT_SECRET": "hangar-client-secret",
            "HANGAR_OIDC_AUTHORIZATION_ENDPOINT": f"{self.url}/o/authorize/",
            "HANGAR_OIDC_TOKEN_ENDPOINT": f"{self.url}/o/token/",
            "HANGAR_OIDC_USERINFO_ENDPOINT": f"{self.url}/o/userinfo/",
            "HANGAR_OIDC_JWKS_ENDPOINT": f"{self.url}/o/.well-known/jwks.json",
            "HANGAR_OIDC_END_SESSION_ENDPOINT": f"{self.url}/o/logout/",
            "HANGAR_OIDC_LABEL": "Campus OIDC",
        }


@pytest.fixture(scope="session")
def identity_server(live_server, tmp_path_factory) -> IdentityServer:
    """django-mama-cas and django-oauth-toolkit in a subprocess, knowing Hangar's live URL."""
    state = tmp_path_factory.mktemp("idp")
    port = free_port()
    env = {"IDP_STATE_DIR": str(state), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    argv = [sys.executable, "-m", "tests.support.idp.serve", str(port), live_server.url]
    process = start(argv, env, Path(state) / "idp.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: requests.get(f"{url}/o/.well-known/openid-configuration", timeout=2).ok,
            what="the test identity server",
            process=process,
        )
        yield IdentityServer(url)
    finally:
        stop(process)


def submit_login_form(
    browser: requests.Session, page: requests.Response, username: str, password: str, **kwargs
) -> requests.Response:
    """Fill the identity server's login form on `page` and send it, as a person would."""
    assert 'name="password"' in page.text, f"no login form at {page.url}:\n{page.text[:500]}"
    found = re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', page.text)
    fields = {name: html.unescape(value) for name, value in found}
    fields.update({"username": username, "password": password})
    return browser.post(page.url, data=fields, **kwargs)
