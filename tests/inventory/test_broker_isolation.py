"""A node's broker identity opens its own queue and results, and nothing else.

Real Redis with ACLs, real agent command workers (`python -m agents.tasks`), the
console's own dispatch (apps/inventory/commands.py). docs/agent.md says what a
node can and can't reach; these tests hold it to that.
"""

from __future__ import annotations

import base64
import json
import pickle
import socket
import uuid
from urllib.parse import urlsplit

import pytest
import redis
from django.conf import settings
from kombu import Connection

from apps.inventory import broker, commands
from apps.inventory.models import Node
from apps.inventory.services import create_enrollment_token, enroll_node, revoke_node_credential
from tests.support import processes


@pytest.fixture
def enroll(transactional_db, cluster):
    """enroll() -> (node, credential), with its broker identity created on commit."""
    made = []

    def make(hostname: str = "gpu"):
        _token, secret = create_enrollment_token(cluster, None)
        node, credential = enroll_node(secret, f"{hostname}-{len(made)}", {}, None)
        made.append(node.pk)
        return node, credential

    yield make
    for pk in made:
        broker.remove_identity(pk)


def as_node(node, credential) -> redis.Redis:
    return redis.Redis.from_url(broker.agent_broker_url(node.pk, credential), socket_timeout=5)


@pytest.fixture
def command_worker(tmp_path):
    """command_worker(node, credential) -> a real agent command worker for that node."""
    started = []

    def start(node, credential):
        from agents.enroll import write_credential

        state = tmp_path / f"agent-{node.pk}"
        write_credential(
            state,
            {
                "console": "http://127.0.0.1:1",
                "node_id": node.pk,
                "credential": credential,
                **broker.credential_fields(node.pk, credential),
            },
        )
        proc = processes.start(
            [str(processes.BIN / "python"), "-m", "agents.tasks", "--state-dir", str(state)],
            processes.console_env(),
            tmp_path / f"worker-{node.pk}.log",
        )
        started.append(proc)
        processes.wait_for(
            lambda: "ready" in processes.read_log(proc), what="the command worker", process=proc
        )
        return proc

    yield start
    for proc in started:
        processes.stop(proc)


FORBIDDEN = {
    "push onto the console's own queue": ("LPUSH", "console", "x"),
    "read the console's queue": ("LRANGE", "console", 0, -1),
    "read live telemetry": ("GET", "hangar:latest:1"),
    "rewrite last-seen times": ("HSET", "hangar:last_seen", "1", "0"),
    "reset login counters": ("DEL", "hangar:1:lockout:ann"),
    "publish into a browser group": ("PUBLISH", "asgi.db0__group__telemetry.cluster.1", "x"),
    "list keys": ("KEYS", "*"),
    "scan keys": ("SCAN", 0),
    "flush everything": ("FLUSHALL",),
    "flush the database": ("FLUSHDB",),
    "read the configuration": ("CONFIG", "GET", "*"),
    "watch every command": ("MONITOR",),
    "list clients": ("CLIENT", "LIST"),
    "kill clients": ("CLIENT", "KILL", "TYPE", "normal"),
    "debug": ("DEBUG", "SLEEP", "0"),
    "manage users": ("ACL", "LIST"),
    "list channels": ("PUBSUB", "CHANNELS"),
    "run a script": ("EVAL", "return redis.call('flushall')", 0),
}


@pytest.mark.parametrize("what", sorted(FORBIDDEN))
def test_a_node_credential_is_refused_everything_outside_its_own_prefix(enroll, what):
    node, credential = enroll()
    client = as_node(node, credential)
    assert client.ping() is True  # the identity exists and works
    command = FORBIDDEN[what]
    # The ACL's own verdict (DEBUG is also refused by the server's setting, earlier).
    verdict = broker.admin_client().execute_command(
        "ACL", "DRYRUN", broker.username(node.pk), *command
    )
    assert b"no permissions" in verdict
    if command[0] != "DEBUG":
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*command)


def test_a_node_cannot_touch_another_nodes_queue_or_results(enroll):
    node_a, credential_a = enroll("a")
    node_b, _ = enroll("b")
    client = as_node(node_a, credential_a)
    own = broker.key_prefix(node_a.pk)
    other = broker.key_prefix(node_b.pk)
    client.lpush(own + "node.x", "mine")  # its own keys work
    assert client.lrange(own + "node.x", 0, -1) == [b"mine"]
    client.delete(own + "node.x")
    for command in (
        ("LRANGE", f"{other}node.{node_b.pk}", 0, -1),
        ("LPUSH", f"{other}node.{node_b.pk}", "x"),
        ("GET", f"{other}celery-task-meta-{uuid.uuid4()}"),
        ("HGET", f"{other}unacked", "tag"),
        ("SUBSCRIBE", f"{other}celery-task-meta-{uuid.uuid4()}"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*command)


def test_the_agent_is_handed_its_own_identity_not_the_consoles_redis_url(enroll):
    node, credential = enroll()
    fields = broker.credential_fields(node.pk, credential)
    assert fields["broker_url"] != settings.REDIS_URL
    assert f"{broker.username(node.pk)}:{credential}@" in fields["broker_url"]
    assert fields["broker_key_prefix"] == broker.key_prefix(node.pk)


def test_dispatch_to_two_nodes_stays_isolated(enroll, command_worker):
    node_a, credential_a = enroll("a")
    node_b, credential_b = enroll("b")
    command_worker(node_a, credential_a)
    admin = broker.admin_client()
    queue_b = f"{broker.key_prefix(node_b.pk)}node.{node_b.pk}"
    commands.send_to_node(node_b, "ping")  # B's agent is not running yet
    assert commands.ask_node(node_a, "ping", timeout=30)["node_id"] == node_a.pk
    # A's worker answered its own command and left B's where it was...
    assert admin.llen(queue_b) == 1
    # ...where A's identity can neither look nor take.
    client_a = as_node(node_a, credential_a)
    for command in (("LLEN", queue_b), ("RPOP", queue_b), ("BRPOP", queue_b, 1)):
        with pytest.raises(redis.exceptions.NoPermissionError):
            client_a.execute_command(*command)
    command_worker(node_b, credential_b)
    assert commands.ask_node(node_b, "ping", timeout=30)["node_id"] == node_b.pk
    processes.wait_for(lambda: admin.llen(queue_b) == 0, what="B's first ping taken")


def _raw_connection(node, credential) -> socket.socket:
    """A plain socket authenticated as the node, to see the server close it."""
    url = urlsplit(settings.REDIS_URL)
    sock = socket.create_connection((url.hostname, url.port or 6379), timeout=5)
    user = broker.username(node.pk)
    sock.sendall(
        f"*3\r\n$4\r\nAUTH\r\n${len(user)}\r\n{user}\r\n"
        f"${len(credential)}\r\n{credential}\r\n".encode()
    )
    assert sock.recv(100) == b"+OK\r\n"
    return sock


def test_revoking_a_credential_closes_its_broker_connections_at_once(enroll):
    node, credential = enroll()
    sock = _raw_connection(node, credential)
    client = as_node(node, credential)
    assert client.ping() is True
    revoke_node_credential(Node.objects.get(pk=node.pk))
    # No waiting: by the time revocation returns, the server has closed the socket...
    sock.settimeout(1)
    assert sock.recv(100) == b""
    sock.close()
    # ...and neither a reconnect nor a new connection can authenticate.
    with pytest.raises(redis.exceptions.ConnectionError):
        client.ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        as_node(node, credential).ping()


def test_sync_brings_identities_back_after_redis_forgets_them_and_removes_revoked(enroll):
    node, credential = enroll("kept")
    gone, gone_credential = enroll("revoked")
    admin = broker.admin_client()
    admin.execute_command("ACL", "DELUSER", broker.username(node.pk))  # a Redis restart
    Node.objects.filter(pk=gone.pk).update(credential_revoked_at="2026-01-01T00:00:00Z")
    changed = broker.sync_identities()
    assert changed["created"] >= 1 and changed["removed"] >= 1
    assert as_node(node, credential).ping() is True
    with pytest.raises(redis.exceptions.AuthenticationError):
        as_node(gone, gone_credential).ping()


class _Plant:
    """Unpickling this creates a file: the proof that a pickle was trusted."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _pickled_task_message(task: str, marker) -> dict:
    body = pickle.dumps(((_Plant(str(marker)),), {}, {}))
    task_id = str(uuid.uuid4())
    return {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "binary",
        "content-type": "application/x-python-serialize",
        "headers": {"lang": "py", "task": task, "id": task_id, "root_id": task_id},
        "properties": {
            "correlation_id": task_id,
            "delivery_tag": str(uuid.uuid4()),
            "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": ""},
            "delivery_mode": 2,
            "priority": 0,
        },
    }


def test_the_agent_refuses_a_pickled_command(enroll, command_worker, tmp_path):
    node, credential = enroll()
    worker = command_worker(node, credential)
    marker = tmp_path / "unpickled"
    # Whoever can write the node's queue (the console, or anyone with its Redis)
    # pushes a pickle; it must be refused, not unpickled.
    admin = broker.admin_client()
    message = _pickled_task_message("hangar.agent.ping", marker)
    admin.lpush(f"{broker.key_prefix(node.pk)}node.{node.pk}", json.dumps(message))
    # A JSON command sent after it is answered, so the pickle was taken off first.
    assert commands.ask_node(node, "ping", timeout=30)["node_id"] == node.pk
    assert not marker.exists()
    log = processes.read_log(worker)
    assert "pickle" in log and ("ContentDisallowed" in log or "untrusted content" in log)


def test_the_console_worker_refuses_a_pickled_task(console_worker, tmp_path, transactional_db):
    marker = tmp_path / "unpickled"
    message = _pickled_task_message("inventory.mark_offline_nodes", marker)
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.lpush("console", json.dumps(message))
    # Then a JSON task through the normal path; once it ran, the pickle was handled.
    with Connection(settings.REDIS_URL) as connection:
        from console.celery import app

        result = app.send_task("inventory.sync_broker_identities", connection=connection)
        result.get(timeout=60)
    assert not marker.exists()
    log = processes.read_log(console_worker)
    assert "pickle" in log and ("ContentDisallowed" in log or "untrusted content" in log)
