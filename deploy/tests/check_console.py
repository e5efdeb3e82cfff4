"""Wait for a Hangar console to be healthy with its local agent online.

Run with any Python 3.11 (standard library only: it runs inside the test roots,
before or without the console's virtual environment). The same judgement as
tests/core/test_make_run.py: /healthz answers 200 with status "ok", the admin
logs in (replacing the generated password and enrolling the second factor, as
the first login asks), and the API lists the local node as `online`. Prints one
line of JSON on success; one line naming what did not happen on failure (exit 1).

usage: check_console.py URL PASSWORD_SOURCE [--timeout S]
PASSWORD_SOURCE is a file holding the output that printed
"Created administrator 'admin' with password: ...".
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import re
import secrets
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def csrf_token(jar) -> str:
    return next(c.value for c in jar if c.name == "csrftoken")


def totp(secret: str, at: float | None = None) -> str:
    """RFC 6238 with the defaults pyotp uses (SHA-1, 30 s, 6 digits): the root has
    no virtual environment to import pyotp from."""
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    counter = int((time.time() if at is None else at) // 30)
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    code = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return f"{code % 1_000_000:06d}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("password_source", type=Path)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    base = args.url.rstrip("/")
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), NoRedirect)

    def request(path, data=None, headers=None):
        req = urllib.request.Request(base + path, data=data, headers=headers or {})  # noqa: S310
        try:
            with opener.open(req, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    deadline = time.monotonic() + args.timeout

    def wait(what, check):
        last = None
        while time.monotonic() < deadline:
            try:
                result = check()
            except (OSError, ValueError) as exc:
                result, last = None, exc
            if result:
                return result
            time.sleep(1)
        sys.exit(f"check_console: timed out waiting for {what} (last error: {last})")

    wait("/healthz to answer 200", lambda: request("/healthz")[0] == 200)

    def password():
        found = re.search(
            r"Created administrator 'admin' with password: (\S+)",
            args.password_source.read_text(errors="replace"),
        )
        return found and found.group(1)

    secret = wait("the admin password in " + str(args.password_source), password)
    request("/login/")

    def post(path, fields):
        fields = {**fields, "csrfmiddlewaretoken": csrf_token(jar)}
        return request(
            path,
            urllib.parse.urlencode(fields).encode(),
            {"Content-Type": "application/x-www-form-urlencoded", "Referer": base + "/"},
        )

    status, _ = post("/login/", {"username": "admin", "password": secret, "next": "/"})
    if status != 302:
        sys.exit(f"check_console: the admin login answered {status}, not 302")
    # What a person does next (tests/support/browserless.py, first_admin_login):
    # the generated password must be replaced, then the second factor that the
    # default policy (HANGAR_REQUIRE_2FA=admins) asks of administrators enrolled.
    new_password = "Clean-root check " + secrets.token_urlsafe(12)
    status, _ = post(
        "/account/password/",
        {
            "current_password": secret,
            "new_password": new_password,
            "new_password_again": new_password,
        },
    )
    if status != 302:
        sys.exit(f"check_console: the forced password change answered {status}, not 302")
    status, page = request("/account/second-factor/")
    found = re.search(rb"<code>([A-Z2-7]{16,})</code>", page)
    if status != 200 or not found:
        sys.exit(f"check_console: the second-factor page answered {status} without a secret")
    status, page = post("/account/second-factor/", {"code": totp(found.group(1).decode())})
    if status != 200 or b"recovery codes" not in page:
        sys.exit(f"check_console: enrolling the second factor answered {status}")

    def local_node_online():
        status, body = request("/api/v1/nodes/")
        nodes = json.loads(body)["results"] if status == 200 else []
        return len(nodes) == 1 and nodes[0]["state"] == "online" and nodes[0]

    node = wait("the local agent's node to be online", local_node_online)

    def healthy():
        status, body = request("/healthz")
        report = json.loads(body)
        # The console's own Celery worker answers too (apps/core/health.py).
        return status == 200 and report["checks"]["celery"]["state"] == "up" and report

    health = wait("/healthz with a Celery worker up", healthy)
    print(
        json.dumps(
            {
                "status": health["status"],
                "database": health["checks"]["database"].get("vendor"),
                "celery_workers": health["checks"]["celery"]["workers"],
                "node": {"hostname": node["hostname"], "state": node["state"]},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
