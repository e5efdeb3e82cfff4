"""Audit forwarding: every event reaches a real syslog receiver (or a JSON Lines
file), in order and intact, through a receiver outage; nothing blocks or is lost."""

from __future__ import annotations

import json
import ssl
import subprocess
import time

import pytest

from apps.audit import recorder
from apps.audit.archive import archive_old_events
from apps.audit.chain import verify_events
from apps.audit.forwarding import forward_events, forwarding_state
from apps.audit.models import AuditEvent, ForwardCursor
from tests.support.syslog_receiver import SyslogReceiver

pytestmark = pytest.mark.django_db


@pytest.fixture
def receiver(settings):
    server = SyslogReceiver().start()
    settings.AUDIT_FORWARD = "syslog"
    settings.AUDIT_SYSLOG_ADDRESS = f"127.0.0.1:{server.port}"
    settings.AUDIT_SYSLOG_TLS = False
    yield server
    server.stop()


def _write(n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        recorder.record("test.event", changes={"n": i, "text": 'grüße ] " \\ 中文'})


def _events_of(server) -> list[dict]:
    return [json.loads(m["msg"]) for m in server.messages]


def _wait_for(server, count: int) -> None:
    # The receiver's handler thread parses what the socket delivered; the
    # forwarder has sent everything already when forward_events returns.
    deadline = time.monotonic() + 10
    while len(server.messages) < count and time.monotonic() < deadline:
        time.sleep(0.01)


def _assert_intact_chain(events: list[dict]) -> None:
    first = events[0]
    count, problem, _ = verify_events(
        [{**e, "time": _parse(e["time"])} for e in events], first["prev_hash"], first["seq"]
    )
    assert (count, problem) == (len(events), None)


def _parse(value):
    from django.utils.dateparse import parse_datetime

    return parse_datetime(value)


def test_events_reach_the_syslog_receiver_in_order_and_intact(receiver):
    _write(5)

    assert forward_events() == 5
    _wait_for(receiver, 5)

    events = _events_of(receiver)
    assert [e["seq"] for e in events] == list(
        AuditEvent.objects.order_by("seq").values_list("seq", flat=True)
    )
    assert [e["changes"]["n"] for e in events] == list(range(5))
    _assert_intact_chain(events)
    message = receiver.messages[0]
    assert (message["app"], message["msgid"], message["pri"]) == ("hangar", "test.event", "85")
    assert f'seq="{events[0]["seq"]}"' in message["sd"]


def test_forwarding_resumes_after_a_receiver_outage_without_losing_an_event(receiver, settings):
    _write(3)
    assert forward_events() == 3
    _wait_for(receiver, 3)
    port = receiver.port
    receiver.stop()
    assert SyslogReceiver.refuses(port)

    _write(4, start=3)  # the mutations go on while the collector is down
    assert forward_events() == 0
    [state] = forwarding_state()
    assert state["behind"] == 4
    assert "ConnectionRefused" in state["last_error"]

    back = SyslogReceiver(port=port).start()
    try:
        assert forward_events() == 4
        _wait_for(back, 4)
        events = _events_of(receiver) + _events_of(back)
        assert [e["changes"]["n"] for e in events] == list(range(7))
        _assert_intact_chain(events)
        assert forwarding_state()[0]["behind"] == 0
        assert forwarding_state()[0]["last_error"] == ""
    finally:
        back.stop()


def test_events_archived_before_forwarding_are_reported_as_a_gap(receiver, tmp_path):
    _write(3)
    archive_old_events(hot_days=0, directory=tmp_path)
    _write(1, start=3)

    forward_events()
    _wait_for(receiver, 2)

    cursor = ForwardCursor.objects.get(destination="syslog")
    assert cursor.gaps == [{"first_seq": 1, "last_seq": 3}]
    actions = [m["msgid"] for m in receiver.messages]
    assert actions == ["test.event", "audit.forward.gap"]


def test_events_go_to_a_json_lines_file_for_a_log_shipper(settings, tmp_path):
    settings.AUDIT_FORWARD = "file"
    settings.AUDIT_FORWARD_FILE = str(tmp_path / "forward" / "audit.jsonl")
    _write(2)
    forward_events()
    _write(1, start=2)
    forward_events()

    lines = (tmp_path / "forward" / "audit.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["changes"]["n"] for e in events] == [0, 1, 2]
    _assert_intact_chain(events)


def test_syslog_over_tls(settings, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = SyslogReceiver(tls=context).start()
    settings.AUDIT_FORWARD = "syslog"
    settings.AUDIT_SYSLOG_ADDRESS = f"127.0.0.1:{server.port}"
    settings.AUDIT_SYSLOG_TLS = True
    settings.AUDIT_SYSLOG_CA = str(cert)
    try:
        _write(2)
        assert forward_events() == 2
        _wait_for(server, 2)
        assert [e["changes"]["n"] for e in _events_of(server)] == [0, 1]
    finally:
        server.stop()


@pytest.mark.django_db(transaction=True)
def test_a_mutation_succeeds_while_the_collector_is_down(settings, admin_api):
    settings.AUDIT_FORWARD = "syslog"
    settings.AUDIT_SYSLOG_ADDRESS = "127.0.0.1:9"  # nothing listens on discard

    created = admin_api.post("/api/v1/clusters/", {"name": "while-down"})

    assert created.status_code == 201
    assert AuditEvent.objects.filter(action="inventory.cluster.create").exists() or (
        AuditEvent.objects.filter(changes__path="/api/v1/clusters/").exists()
    )
    assert forward_events() == 0
    assert forwarding_state()[0]["behind"] >= 1


def test_the_security_policy_page_reports_the_backlog_and_the_last_error(settings, make_user):
    from rest_framework.test import APIClient

    settings.AUDIT_FORWARD = "syslog"
    settings.AUDIT_SYSLOG_ADDRESS = "127.0.0.1:9"
    _write(2)
    forward_events()
    client = APIClient()
    client.force_login(make_user("root", "admin"))

    page = client.get("/security/policy/").content.decode()

    assert "syslog: forwarded through event #0, 2 waiting." in page
    assert "Last error: ConnectionRefusedError" in page
