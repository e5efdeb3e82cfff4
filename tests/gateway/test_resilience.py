"""Several gateways, and a gateway whose Redis goes away."""

from __future__ import annotations

import shutil
import signal

import pytest
import redis
from django.conf import settings

from apps.gateway import snapshot
from apps.gateway.keys import revoke_consumer_key
from apps.gateway.models import ConsumerKey
from tests.gateway.conftest import http
from tests.gateway.test_gateway import CHAT
from tests.support import processes


def test_a_revoked_key_is_refused_by_every_gateway_process(start_gateway, serving, consumer_key):
    serving("chat")
    key = consumer_key(name="to-revoke")
    first, second = start_gateway(), start_gateway()
    generation = snapshot.publish()
    for gateway in (first, second):
        gateway.wait_for_generation(generation)
        assert http("POST", f"{gateway.url}/v1/chat/completions", CHAT, key)[0] == 200
    revoke_consumer_key(ConsumerKey.objects.get(name="to-revoke"))
    # The revocation's own publication (on commit) is what both follow: no extra publish.
    stored = int(
        redis.Redis.from_url(settings.REDIS_URL).get(f"{snapshot.SNAPSHOT_KEY}:generation-stored")
    )
    assert stored > generation
    for gateway in (first, second):
        gateway.wait_for_generation(stored)
        status, body, _ = http("POST", f"{gateway.url}/v1/chat/completions", CHAT, key)
        assert status == 401 and body["error"]["code"] == "invalid_api_key"


@pytest.fixture
def private_redis(tmp_path):
    """A Redis of the gateway's own, which the test can kill and bring back."""
    port = processes.free_port()
    binary = shutil.which("redis-server")
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    started = []

    def start():
        proc = processes.start(argv, {}, tmp_path / "private-redis.log")
        started.append(proc)
        client = redis.Redis(port=port)
        processes.wait_for(client.ping, what="the private Redis", process=proc)
        return proc

    start.port = port
    start.url = f"redis://127.0.0.1:{port}/0"
    yield start
    for proc in started:
        processes.stop(proc, signal.SIGKILL)


def copy_snapshot(to_port: int) -> None:
    """Play the console for the gateway's private Redis: the snapshot as published."""
    source = redis.Redis.from_url(settings.REDIS_URL)
    target = redis.Redis(port=to_port)
    for suffix in ("", ":generation-stored", ":checked-at"):
        target.set(snapshot.SNAPSHOT_KEY + suffix, source.get(snapshot.SNAPSHOT_KEY + suffix))


def test_known_keys_keep_working_for_a_bounded_time_when_redis_goes_away(
    start_gateway, serving, consumer_key, private_redis
):
    serving("chat")
    key = consumer_key()
    snapshot.publish()
    redis_proc = private_redis()
    copy_snapshot(private_redis.port)
    gateway = start_gateway(HANGAR_REDIS_URL=private_redis.url, HANGAR_GATEWAY_STALE_SECONDS="20")
    processes.wait_for(lambda: gateway.health()["status"] == "ok", what="the gateway ready")
    assert http("POST", f"{gateway.url}/v1/chat/completions", CHAT, key)[0] == 200

    processes.stop(redis_proc, signal.SIGKILL)
    processes.wait_for(
        lambda: gateway.health()["redis"] == "unreachable", what="the gateway to notice"
    )
    health = gateway.health()
    assert health["status"] == "degraded"
    metrics = http("GET", f"{gateway.admin}/metrics")[1]
    assert "hangar_gateway_redis_up 0" in metrics
    # Known keys still work from the last snapshot...
    assert http("POST", f"{gateway.url}/v1/chat/completions", CHAT, key)[0] == 200
    # ...until the bound: then the gateway refuses rather than trust an old view.
    processes.wait_for(
        lambda: gateway.health()["status"] == "unavailable", timeout=90, what="the bound passed"
    )
    status, body, _ = http("POST", f"{gateway.url}/v1/chat/completions", CHAT, key)
    assert status == 503 and body["error"]["code"] == "gateway_stale"

    # Redis back, the console confirms again: the gateway serves again.
    private_redis()
    snapshot.publish()
    copy_snapshot(private_redis.port)
    processes.wait_for(lambda: gateway.health()["status"] == "ok", what="the gateway recovered")
    assert http("POST", f"{gateway.url}/v1/chat/completions", CHAT, key)[0] == 200
