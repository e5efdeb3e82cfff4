"""A small cookie-keeping HTTP client for tests against a real server process."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # tests look at the 302 itself


class Session:
    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")
        self.jar = CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect
        )

    def request(
        self, method: str, path: str, data: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, bytes, dict]:
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers=headers or {}
        )
        try:
            with self.opener.open(request, timeout=10) as response:
                return response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)

    def json(self, path: str):
        status, body, _ = self.request("GET", path)
        assert status == 200, (status, body[:300])
        return json.loads(body)

    def csrf_token(self) -> str:
        return next(c.value for c in self.jar if c.name == "csrftoken")

    def login(self, username: str, password: str) -> int:
        status, _body, _ = self.request("GET", "/login/")
        assert status == 200, status
        form = urllib.parse.urlencode(
            {
                "username": username,
                "password": password,
                "csrfmiddlewaretoken": self.csrf_token(),
                "next": "/",
            }
        ).encode()
        status, _body, _ = self.request(
            "POST",
            "/login/",
            form,
            {"Content-Type": "application/x-www-form-urlencoded", "Referer": self.base_url + "/"},
        )
        return status

    def first_admin_login(self, password: str, new_password: str = "The admin's Own passphrase 1"):
        """What a person does after `make run`: log in with the generated password,
        replace it (forced at first login), then turn on the second factor the
        default policy requires of administrators (HANGAR_REQUIRE_2FA=admins)."""
        import pyotp

        assert self.login("admin", password) == 302
        status, _body, headers = self.request("GET", "/nodes/")
        assert (status, headers.get("Location")) == (302, "/account/password/")
        form = urllib.parse.urlencode(
            {
                "current_password": password,
                "new_password": new_password,
                "new_password_again": new_password,
                "csrfmiddlewaretoken": self.csrf_token(),
            }
        ).encode()
        post = {"Content-Type": "application/x-www-form-urlencoded", "Referer": self.base_url + "/"}
        status, _body, headers = self.request("POST", "/account/password/", form, post)
        assert (status, headers.get("Location")) == (302, "/account/second-factor/")
        status, page, _ = self.request("GET", "/account/second-factor/")
        assert status == 200 and b"<svg" in page
        secret = re.search(rb"<code>([A-Z2-7]{16,})</code>", page).group(1).decode()
        form = urllib.parse.urlencode(
            {"code": pyotp.TOTP(secret).now(), "csrfmiddlewaretoken": self.csrf_token()}
        ).encode()
        status, page, _ = self.request("POST", "/account/second-factor/", form, post)
        assert status == 200 and b"recovery codes" in page, page[:500]


def admin_password(output: str) -> str:
    match = re.search(r"Created administrator 'admin' with password: (\S+)", output)
    assert match, f"no admin password in the output:\n{output[-2000:]}"
    return match.group(1)
