"""The client address is not the client's to choose: a forged X-Forwarded-For moves
neither the login lockout nor the audit log's source address (through a real
Daphne, whose ASGI layer decides the address: apps/core/forwarded.py)."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar

import pytest

from apps.accounts import lockout
from apps.audit.models import AuditEvent
from tests.core.test_forwarded import live_console

__all__ = ["live_console"]

pytestmark = pytest.mark.django_db(transaction=True)


def _forged_login(url: str, forged: str, username: str) -> int:
    """A wrong password, sent with a forged X-Forwarded-For, through the login form."""
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(f"{url}/login/", timeout=10).read()
    csrf = next(c.value for c in jar if c.name == "csrftoken")
    body = urllib.parse.urlencode(
        {"username": username, "password": "wrong", "csrfmiddlewaretoken": csrf}
    ).encode()
    request = urllib.request.Request(
        f"{url}/login/",
        data=body,
        headers={"X-Forwarded-For": forged, "Referer": f"{url}/login/"},
        method="POST",
    )
    try:
        return opener.open(request, timeout=10).status
    except urllib.error.HTTPError as refused:
        return refused.code


def test_a_forged_forwarded_for_moves_neither_the_lockout_nor_the_audit_address(live_console):
    console = live_console()  # no trusted proxies: the peer is the client
    # A new username each time, so only the address's counter can hold them back.
    statuses = [
        _forged_login(console.url, f"203.0.113.{n}", f"user{n}")
        for n in range(lockout.THROTTLE_AFTER + 1)
    ]

    assert statuses == [401] * lockout.THROTTLE_AFTER + [429]
    assert lockout.failures("address", "127.0.0.1")[0] == lockout.THROTTLE_AFTER
    assert all(lockout.failures("address", f"203.0.113.{n}")[0] == 0 for n in range(4))
    sources = set(
        AuditEvent.objects.filter(action="auth.login").values_list("source_address", flat=True)
    )
    assert sources == {"127.0.0.1"}
