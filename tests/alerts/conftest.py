"""Fixtures for alert tests: rules, a webhook receiver that records, a real Celery worker."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from apps.alerts.models import AlertRule, Receiver
from apps.alerts.services import rules as rule_cache
from tests.support import processes
from tests.telemetry.conftest import FACTS, AgentSocket, enrolled, gpu_sample, sample

__all__ = ["enrolled"]

SECRET = "webhook-signing-key"


@pytest.fixture(autouse=True)
def _only_the_tests_rules(request):
    """Each test sees only the rules it makes: the shipped ones (migration 0002) would
    raise alerts of their own, and this process's rule cache must not outlive a test."""
    if {"db", "transactional_db"} & set(request.fixturenames):
        request.getfixturevalue(
            "transactional_db" if "transactional_db" in request.fixturenames else "db"
        )
        AlertRule.objects.filter(builtin=True).delete()
    rule_cache.clear()
    yield
    rule_cache.clear()


def make_rule(**fields) -> AlertRule:
    receivers = fields.pop("receivers", ())
    defaults = {
        "name": "hot GPU",
        "metric": "gpu.*.temperature",
        "comparison": ">",
        "threshold": 85.0,
        "for_seconds": 0,
        "severity": "critical",
    }
    rule = AlertRule.objects.create(**{**defaults, **fields})
    rule.receivers.set(receivers)
    return rule


class Hooks:
    """What the local webhook server received; `fail_next` makes it answer 500 that often."""

    def __init__(self):
        self.received: list[dict] = []
        self.fail_next = 0
        self.failed = 0
        self.lock = threading.Lock()

    def events(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(r["body"]["event"], r["body"]["alert"]["series"]) for r in self.received]

    def wait_for_count(self, count: int) -> list[dict]:
        processes.wait_for(lambda: len(self.received) >= count, what=f"{count} webhook(s)")
        return self.received


@pytest.fixture
def webhook():
    hooks = Hooks()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with hooks.lock:
                if hooks.fail_next:
                    hooks.fail_next -= 1
                    hooks.failed += 1
                    self.send_response(500)
                    self.end_headers()
                    return
                hooks.received.append(
                    {"body": json.loads(body), "raw": body, "headers": dict(self.headers)}
                )
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hooks.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    yield hooks
    server.shutdown()
    server.server_close()


class GarbageServer:
    """A local HTTP endpoint that reads each request and answers `reply`, which is not
    HTTP: the receiver behind a broken proxy, or something else on the port."""

    def __init__(self, reply: bytes):
        self.reply = reply
        self.requests = 0
        self.lock = threading.Lock()


@pytest.fixture
def garbage_webhook(request):
    """`garbage_webhook.url` answers every POST with b"garbage\\r\\n" (http.client's
    BadStatusLine), or with the bytes a test parametrizes it with indirectly."""
    garbage = GarbageServer(getattr(request, "param", b"garbage\r\n"))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            with garbage.lock:
                garbage.requests += 1
            self.wfile.write(garbage.reply)
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    garbage.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    yield garbage
    server.shutdown()
    server.server_close()


def signature_valid(record: dict, secret: str = SECRET) -> bool:
    header = record["headers"]["X-Hangar-Signature"]
    parts = dict(part.split("=", 1) for part in header.split(","))
    mac = hmac.new(secret.encode(), f"{parts['t']}.".encode() + record["raw"], hashlib.sha256)
    return hmac.compare_digest(mac.hexdigest(), parts["sha256"])


@pytest.fixture
def receiver(webhook, db) -> Receiver:
    return Receiver.objects.create(name="ops-hook", kind="webhook", url=webhook.url, secret=SECRET)


@pytest.fixture
def celery_worker(transactional_db, tmp_path):
    """A real console Celery worker (queue console) on the test database."""
    import redis
    from django.conf import settings

    redis.Redis.from_url(settings.REDIS_URL).delete("console")  # nothing left by other tests
    proc = processes.start(
        [
            str(processes.BIN / "celery"),
            "-A",
            "console.celery",
            "worker",
            "-Q",
            "console",
            "--pool",
            "threads",
            "-c",
            "2",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"alerts-test-{time.monotonic_ns()}@%h",
            "-l",
            "info",
        ],
        processes.console_env(),
        tmp_path / "celery.log",
    )
    processes.wait_for(
        lambda: b"ready." in (tmp_path / "celery.log").read_bytes(),
        what="the Celery worker to be ready",
        process=proc,
    )
    yield proc
    processes.stop(proc)


class Agent:
    """An enrolled agent on a real websocket sending crafted GPU values."""

    def __init__(self, url: str, credential: str):
        self.socket = AgentSocket(url, credential)
        self.socket.send({"type": "hello", "protocol": 1, "agent_version": "1", "facts": FACTS})
        self.seq = 0
        self.ts = float(int(time.time()))  # whole seconds: durations compare exactly

    def send(self, advance: float = 1.0, **gpu0) -> None:
        """One sample whose GPU 0 carries `gpu0`; its ts moves `advance` seconds on
        (durations are judged on sample time, so no test sleeps through a `for`)."""
        self.seq += 1
        self.ts += advance
        gpus = [gpu_sample(0, **gpu0), gpu_sample(1)]
        self.socket.send({"type": "telemetry", "sample": sample(self.seq, gpus, ts=self.ts)})

    def temperatures(self, *values: float) -> None:
        for value in values:
            self.send(temperature=value)

    def close(self) -> None:
        self.socket.close()
