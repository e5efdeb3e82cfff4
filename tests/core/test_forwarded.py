"""The client address: the direct peer, or X-Forwarded-For only behind a trusted proxy."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest

from apps.audit.middleware import client_address as audit_client_address
from apps.audit.models import AuditEvent
from apps.core.forwarded import ForwardedClientMiddleware, client_address, parse_networks
from apps.gateway.proxy import config as gateway_config
from console.config import ConfigError, networks
from tests.support import processes

NGINX = parse_networks("127.0.0.1, 10.0.0.0/8")
FORGED = "203.0.113.99"


def test_without_trusted_proxies_the_peer_is_the_client():
    assert client_address("127.0.0.1", ["203.0.113.99"], ()) == "127.0.0.1"


def test_a_peer_that_is_not_a_trusted_proxy_cannot_name_another_address():
    assert client_address("192.0.2.7", ["203.0.113.99"], NGINX) == "192.0.2.7"


def test_behind_a_trusted_proxy_the_address_it_saw_is_the_client():
    assert client_address("127.0.0.1", ["198.51.100.4"], NGINX) == "198.51.100.4"


def test_what_a_client_wrote_left_of_the_proxys_entry_is_ignored():
    # The client sent "X-Forwarded-For: 203.0.113.99"; a proxy that appends adds the
    # address it saw on the right, and only that one is believed.
    assert client_address("127.0.0.1", ["203.0.113.99, 198.51.100.4"], NGINX) == "198.51.100.4"


def test_a_chain_of_trusted_proxies_is_walked_to_the_first_untrusted_hop():
    hops = ["203.0.113.99, 198.51.100.4, 10.1.2.3", "10.9.9.9"]
    assert client_address("127.0.0.1", hops, NGINX) == "198.51.100.4"


def test_an_unparsable_hop_stops_the_walk_at_the_last_trusted_address():
    assert client_address("127.0.0.1", ["198.51.100.4, garbage"], NGINX) == "127.0.0.1"


def test_an_ipv4_mapped_peer_counts_as_its_ipv4_address():
    assert client_address("::ffff:127.0.0.1", ["198.51.100.4"], NGINX) == "198.51.100.4"


def test_a_bad_trusted_proxies_setting_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("HANGAR_TRUSTED_PROXIES", "127.0.0.1, nginx.local")
    with pytest.raises(ConfigError) as caught:
        networks("TRUSTED_PROXIES")
    assert str(caught.value) == (
        "HANGAR_TRUSTED_PROXIES: 'nginx.local' is not an IP address or CIDR network"
    )


def _seen_scope(trusted, scope: dict) -> dict:
    seen = {}

    async def app(scope, receive, send):
        seen.update(scope)

    asyncio.run(ForwardedClientMiddleware(app, trusted)(scope, None, None))
    return seen


HEADERS = [
    (b"host", b"hangar.example.org"),
    (b"x-forwarded-for", b"203.0.113.99"),
    (b"x-forwarded-proto", b"https"),
]


def test_an_untrusted_peers_forwarding_headers_never_reach_the_application():
    scope = {"type": "http", "client": ["192.0.2.7", 5555], "headers": HEADERS, "scheme": "http"}
    seen = _seen_scope(NGINX, scope)
    assert seen["client"] == ["192.0.2.7", 5555]
    assert seen["headers"] == [(b"host", b"hangar.example.org")]
    assert seen["scheme"] == "http"


def test_a_trusted_proxy_sets_the_websocket_client_and_scheme():
    scope = {"type": "websocket", "client": ["127.0.0.1", 5555], "headers": HEADERS}
    seen = _seen_scope(NGINX, scope)
    assert seen["client"][0] == "203.0.113.99"
    assert seen["scheme"] == "wss"


@pytest.fixture
def live_console(transactional_db, tmp_path):
    """A real Daphne; `start(trusted)` gives it HANGAR_TRUSTED_PROXIES."""
    started = []

    def start(trusted: str = ""):
        port = processes.free_port()
        proc = processes.start(
            [
                str(processes.BIN / "daphne"),
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "console.asgi:application",
            ],
            processes.console_env(HANGAR_TRUSTED_PROXIES=trusted),
            tmp_path / f"daphne-{port}.log",
        )
        started.append(proc)
        proc.url = f"http://127.0.0.1:{port}"
        processes.wait_for(
            lambda: urllib.request.urlopen(f"{proc.url}/healthz", timeout=2).status == 200,
            what="daphne to answer /healthz",
            process=proc,
        )
        return proc

    yield start
    for proc in started:
        processes.stop(proc)


def enroll_with_forged_address(url: str) -> None:
    """An audited request anyone may send: enrolment with a token that doesn't exist."""
    request = urllib.request.Request(
        f"{url}/api/v1/agent/enroll/",
        data=json.dumps({"token": "no-such-token", "hostname": "forger"}).encode(),
        headers={"Content-Type": "application/json", "X-Forwarded-For": "203.0.113.99"},
        method="POST",
    )
    try:
        urllib.request.urlopen(request, timeout=10)
    except urllib.error.HTTPError as exc:
        assert exc.code == 403, exc.read()
    else:
        raise AssertionError("enrolment with an unknown token was accepted")


def test_directly_a_forged_forwarded_for_is_not_the_audit_source(live_console):
    console = live_console()
    enroll_with_forged_address(console.url)
    event = AuditEvent.objects.get(action="inventory.enroll")
    assert event.source_address == "127.0.0.1"


def test_a_daphne_told_to_trust_its_peer_takes_the_forwarded_address(live_console):
    # The other side of the test above: the same request, from a peer named as a proxy.
    console = live_console("127.0.0.1")
    enroll_with_forged_address(console.url)
    event = AuditEvent.objects.get(action="inventory.enroll")
    assert event.source_address == "203.0.113.99"


def test_the_audit_address_is_remote_addr_even_with_https_and_a_forged_header(rf, settings):
    # Before, HANGAR_HTTPS made the audit middleware (and so the login lockout)
    # take the leftmost X-Forwarded-For: the one a client writes.
    settings.HTTPS = True
    request = rf.post("/login/", REMOTE_ADDR="192.0.2.7", HTTP_X_FORWARDED_FOR=FORGED)
    assert audit_client_address(request) == "192.0.2.7"


def test_the_gateway_trusts_the_consoles_proxies_unless_told_otherwise(monkeypatch):
    monkeypatch.setenv("HANGAR_TRUSTED_PROXIES", "127.0.0.1")
    monkeypatch.delenv("HANGAR_GATEWAY_TRUSTED_PROXIES", raising=False)
    assert gateway_config.load().trusted_proxies == parse_networks("127.0.0.1")
    monkeypatch.setenv("HANGAR_GATEWAY_TRUSTED_PROXIES", "10.0.0.0/8")
    assert gateway_config.load().trusted_proxies == parse_networks("10.0.0.0/8")
