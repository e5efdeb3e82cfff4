"""The database goes away under a live console: nothing judged meanwhile is lost.

A PostgreSQL server of the test's own (tests/support/postgres.py) is really
stopped and started again under a real Daphne, with a hand-driven agent socket
(exact samples, exact counts) and a real `hangar-agent --simulate 8`.
docs/reliability.md, "When the database is away", is the design these prove.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path
from urllib.parse import urlencode

import psycopg
import pytest
import redis
from django.conf import settings
from websockets.exceptions import ConnectionClosed

from agents.protocol import CLOSE_TRY_AGAIN_LATER
from apps.core import outbox
from tests.support import processes
from tests.support.postgres import ThrowawayPostgres
from tests.telemetry.conftest import FACTS, AgentSocket, gpu_sample, sample

SETUP = r"""
import json, django
django.setup()
from django.contrib.auth import get_user_model
from apps.accounts.models import RoleBinding
from apps.accounts.tokens import create_api_token
from apps.alerts.models import AlertRule
from apps.inventory.models import Cluster
from apps.inventory.services import create_enrollment_token, enroll_node
facts = json.loads(%r)
cluster = Cluster.objects.create(name="outage")
admin = get_user_model().objects.create_user("outage-admin", password="a long passphrase")
RoleBinding.objects.create(role="admin", user=admin)
_, api_token = create_api_token(admin, "outage", 1)
_, secret = create_enrollment_token(cluster, admin)
node, credential = enroll_node(secret, "outage-hand", facts, None)
_, agent_token = create_enrollment_token(cluster, admin)
AlertRule.objects.create(
    name="outage-hot", metric="gpu.*.temperature", comparison=">", threshold=90,
    clear_threshold=80, for_seconds=1,
)
print(json.dumps({"api_token": api_token, "node": node.pk, "credential": credential,
                  "agent_token": agent_token}))
"""


class Stack:
    """Throwaway PostgreSQL + migrated database + Daphne, and SQL on that database."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.pg = ThrowawayPostgres()
        self.pg.start()
        self.pg.create_database("hangar")
        self.env = os.environ.copy()
        self.env.update(
            {
                "HANGAR_DATABASE_URL": self.pg.url(),
                "HANGAR_REDIS_URL": settings.REDIS_URL,
                "HANGAR_DATA_DIR": str(tmp / "data"),
                "HANGAR_ALLOWED_HOSTS": "127.0.0.1,localhost",
                "DJANGO_SETTINGS_MODULE": "console.settings",
                "PYTHONUNBUFFERED": "1",
                "PATH": f"{processes.BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            }
        )
        (tmp / "data").mkdir()
        self._python("manage.py", "migrate", "--noinput")
        self.setup = json.loads(self._python("-c", SETUP % json.dumps(FACTS)).splitlines()[-1])
        port = processes.free_port()
        self.daphne = processes.start(
            [*daphne_argv(port)],
            self.env,
            tmp / "daphne.log",
        )
        self.url = f"http://127.0.0.1:{port}"
        processes.wait_for(
            lambda: urllib.request.urlopen(f"{self.url}/healthz", timeout=2).status == 200,
            timeout=60,
            what="daphne to answer /healthz",
            process=self.daphne,
        )

    def _python(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, *args],
            cwd=processes.ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def rows(self, query: str, *params) -> list[tuple]:
        with psycopg.connect(self.pg.url(), connect_timeout=5) as db:
            return db.execute(query, params).fetchall()

    def close(self) -> None:
        processes.stop(self.daphne)
        self.pg.remove()


def daphne_argv(port: int) -> list[str]:
    return [
        str(processes.BIN / "daphne"),
        "-b",
        "127.0.0.1",
        "-p",
        str(port),
        "console.asgi:application",
    ]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    built = Stack(tmp_path_factory.mktemp("database-away"))
    yield built
    built.close()


@pytest.fixture
def database_away(stack):
    """Stop the stack's PostgreSQL; started again at the end of the test whatever happens."""
    stack.pg.stop()
    yield stack
    if not (stack.pg.data / "postmaster.pid").exists():
        stack.pg.start()


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def kept_records() -> list[dict]:
    return [json.loads(raw) for raw in redis_client().lrange(outbox.QUEUE, 0, -1)]


def kept_minutes() -> set[int]:
    return {
        minute
        for record in kept_records()
        if record["kind"] == "telemetry.rollups"
        for minute, _samples, _series in record["args"]["minutes"]
    }


def minute_rows(stack: Stack, node_id: int) -> dict[int, int]:
    found = stack.rows(
        "SELECT minute, samples FROM telemetry_nodemetricminute WHERE node_id = %s", node_id
    )
    return {int(minute.timestamp()) // 60: samples for minute, samples in found}


def events(stack: Stack, action_prefix: str, target_id) -> list[tuple]:
    return stack.rows(
        "SELECT seq, action, changes FROM audit_auditevent"
        " WHERE action LIKE %s AND target_id = %s ORDER BY seq",
        action_prefix + "%",
        str(target_id),
    )


def test_minutes_states_and_alerts_judged_while_the_database_is_away_are_written_in_order(
    stack,
):
    node_id, credential = stack.setup["node"], stack.setup["credential"]
    first = int(time.time()) // 60 - 30  # minutes of their own, long finished
    socket = AgentSocket(stack.url, credential)
    socket.send({"type": "hello", "protocol": 1, "agent_version": "1", "facts": FACTS})
    for seq in range(1, 6):  # minute 0, the database up
        socket.send({"type": "telemetry", "sample": sample(seq, ts=first * 60 + seq)})
    processes.wait_for(
        lambda: (
            stack.rows("SELECT state FROM inventory_node WHERE id = %s", node_id) == [("online",)]
        ),
        what="the node online",
    )
    # Sample 5 live means 1 to 4 were judged, by an evaluator that read the rules.
    processes.wait_for(
        lambda: json.loads(redis_client().get(f"hangar:latest:{node_id}"))["seq"] == 5,
        what="the samples taken with the database up",
    )

    stack.pg.stop()
    try:
        minute1 = (first + 1) * 60
        hot = [gpu_sample(0, temperature=95), gpu_sample(1)]
        steps = [
            sample(6, ts=minute1 + 1),  # finishes minute 0: its write finds no database
            sample(7, faults=["gpu 0: Xid 79"], ts=minute1 + 2),  # degraded
            sample(8, hot, ts=minute1 + 3),  # the alert pending
            sample(9, hot, ts=minute1 + 5),  # ... and firing
            sample(10, ts=minute1 + 6),  # resolved, and the node online again
            sample(11, ts=minute1 + 7),
            sample(12, ts=minute1 + 61),  # minute 2 finishes minute 1
            sample(13, ts=minute1 + 62),
            sample(14, ts=minute1 + 63),
        ]
        for step in steps:
            socket.send({"type": "telemetry", "sample": step})
        socket.close()  # the partial minute 2 is flushed on closing, into no database
        # An agent connecting now is told to come back, not refused (it would give up).
        with pytest.raises(ConnectionClosed) as closed:
            AgentSocket(stack.url, credential)
        assert closed.value.rcvd.code == CLOSE_TRY_AGAIN_LATER
        # Kept, all of it: minutes 0, 1 and 2 (2 once the closed socket flushed it).
        processes.wait_for(
            lambda: kept_minutes() == {first, first + 1, first + 2},
            timeout=60,
            what="every minute kept",
        )
        kinds = [record["kind"] for record in kept_records()]
        assert kinds.count("telemetry.node-state") == 2
        assert "alerts.transitions" in kinds
    finally:
        stack.pg.start()

    processes.wait_for(
        lambda: redis_client().llen(outbox.QUEUE) == 0, timeout=90, what="the kept writes written"
    )
    assert minute_rows(stack, node_id) == {first: 5, first + 1: 6, first + 2: 3}
    states = [changes["state"] for _, _, changes in events(stack, "inventory.node-state", node_id)]
    assert states == [["pending", "online"], ["online", "degraded"], ["degraded", "online"]]
    (alert_id,) = stack.rows("SELECT id FROM alerts_alert WHERE rule_name = 'outage-hot'")[0]
    actions = [action for _, action, _ in events(stack, "alerts.", alert_id)]
    assert actions == ["alerts.pending", "alerts.firing", "alerts.resolved"]
    assert stack.rows("SELECT state FROM alerts_alert WHERE id = %s", alert_id) == [("resolved",)]
    assert outbox.state()["dropped"] == {} and outbox.state()["failed"] == {}


@pytest.mark.timeout(600)  # two or three minute boundaries, waited for
def test_a_real_agent_streams_through_the_outage_and_every_minute_has_all_its_sweeps(stack):
    state_dir = stack.tmp / "agent"
    agent_bin = processes.BIN / "hangar-agent"
    token_args = ["--token", stack.setup["agent_token"], "--state-dir", str(state_dir)]
    enroll = subprocess.run(
        [str(agent_bin), "enroll", "--console", stack.url, "--simulate", "8", *token_args],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert enroll.returncode == 0, enroll.stderr
    (node_id,) = stack.rows("SELECT id FROM inventory_node WHERE hostname != 'outage-hand'")[0]
    agent = processes.start(
        [str(agent_bin), "run", "--state-dir", str(state_dir), "--simulate", "8", "--no-celery"],
        stack.env,
        stack.tmp / "agent.log",
    )
    try:
        # Until its first (partial) minute is written: the next one is whole, and
        # ends with the database away.
        processes.wait_for(
            lambda: len(minute_rows(stack, node_id)) >= 1,
            timeout=150,
            what="the first minute written",
            process=agent,
        )
        now = time.time()
        time.sleep(max(0.0, 60 - now % 60 - 5))  # 5 s before the next minute ends
        stack.pg.stop()
        try:
            stopped_in = int(time.time()) // 60
            processes.wait_for(
                lambda: int(time.time()) // 60 > stopped_in and time.time() % 60 > 10,
                timeout=90,
                what="the minute to end with the database away",
            )
            assert redis_client().llen(outbox.QUEUE) >= 1  # that minute, kept
        finally:
            stack.pg.start()
        back = int(time.time()) // 60
        processes.wait_for(
            lambda: max(minute_rows(stack, node_id)) >= back,
            timeout=150,
            what="a minute after the return written",
            process=agent,
        )
    finally:
        processes.stop(agent)
    processes.wait_for(
        lambda: redis_client().llen(outbox.QUEUE) == 0, timeout=60, what="the outbox drained"
    )
    written = minute_rows(stack, node_id)
    minutes = sorted(written)
    assert minutes == list(range(minutes[0], minutes[-1] + 1)), "a minute is missing"
    assert stopped_in in written
    # Every sweep the agent took is in some minute: the count of the whole run is
    # its last sequence number, none lost (the console counts gaps per node).
    latest = json.loads(redis_client().get(f"hangar:latest:{node_id}"))
    lost = int(redis_client().hget("hangar:lost_samples", node_id) or 0)
    assert lost == 0
    # Sweeps are numbered from 1 (agents/collect.py): every one of them is in a minute.
    assert sum(written.values()) == latest["seq"], written


def test_a_change_asked_for_while_the_database_is_away_is_a_503_and_changes_nothing(
    database_away,
):
    stack = database_away
    body = json.dumps({"name": "made-during-outage"}).encode()
    request = urllib.request.Request(
        f"{stack.url}/api/v1/clusters/",
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {stack.setup['api_token']}",
        },
    )
    with pytest.raises(urllib.error.HTTPError) as api:
        urllib.request.urlopen(request, timeout=30)
    assert api.value.code == 503
    answer = json.loads(api.value.read())
    assert answer["code"] == "database_unavailable"
    assert "nothing was changed" in answer["detail"]

    page = browser_post(stack.url, "/login/", {"username": "outage-admin", "password": "x"})
    assert page.code == 503
    text = page.read().decode()
    assert page.headers["Content-Type"].startswith("text/html")
    assert "Database unavailable" in text and "nothing was changed" in text

    stack.pg.start()
    assert stack.rows(
        "SELECT count(*) FROM inventory_cluster WHERE name = %s", "made-during-outage"
    ) == [(0,)]
    assert stack.rows(
        "SELECT count(*) FROM audit_auditevent WHERE changes->>'path' = %s", "/api/v1/clusters/"
    ) == [(0,)]
    # And once it is back, the same request works, with its one event.
    processes.wait_for(
        lambda: urllib.request.urlopen(request, timeout=10).status == 201,
        timeout=60,
        what="the API to take the change again",
    )
    assert stack.rows(
        "SELECT count(*) FROM audit_auditevent WHERE changes->>'path' = %s", "/api/v1/clusters/"
    ) == [(1,)]


def browser_post(base: str, path: str, fields: dict):
    """A browser's form POST, with a CSRF cookie and the matching form token (the
    check compares the two; no session, which would need the database)."""
    token = "a" * 32
    request = urllib.request.Request(
        base + path,
        data=urlencode({**fields, "csrfmiddlewaretoken": token}).encode(),
        method="POST",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"csrftoken={token}",
            "Referer": base + path,
            "Accept": "text/html",
        },
    )
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    try:
        return opener.open(request, timeout=30)
    except urllib.error.HTTPError as exc:
        return exc
