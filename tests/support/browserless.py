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


def admin_password(output: str) -> str:
    match = re.search(r"Created administrator 'admin' with password: (\S+)", output)
    assert match, f"no admin password in the output:\n{output[-2000:]}"
    return match.group(1)
