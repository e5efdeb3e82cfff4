"""Wait for a Hangar console to be healthy with its local agent online.

Run with any Python 3.11 (standard library only: it runs inside the test roots,
before or without the console's virtual environment). The same judgement as
tests/core/test_make_run.py: /healthz answers 200 with status "ok", the admin
logs in, and the API lists the local node as `online`. Prints one line of
JSON on success; one line naming what did not happen on failure (exit 1).

usage: check_console.py URL PASSWORD_SOURCE [--timeout S]
PASSWORD_SOURCE is a file holding the output that printed
"Created administrator 'admin' with password: ...".
"""

from __future__ import annotations

import argparse
import json
import re
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
    csrf = next(c.value for c in jar if c.name == "csrftoken")
    form = urllib.parse.urlencode(
        {"username": "admin", "password": secret, "csrfmiddlewaretoken": csrf, "next": "/"}
    ).encode()
    status, _ = request(
        "/login/",
        form,
        {"Content-Type": "application/x-www-form-urlencoded", "Referer": base + "/"},
    )
    if status != 302:
        sys.exit(f"check_console: the admin login answered {status}, not 302")

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
