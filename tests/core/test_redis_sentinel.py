"""Every Redis user goes through one RedisTarget; with Sentinels it finds the master.

Real servers of the test's own (tests/support/servers.py): a master, its replica
and a Sentinel on free ports. The URL's own host is a port nothing listens on, so
a connection that did not ask the Sentinel would fail.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from celery import Celery
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.core.cache.backends.redis import RedisCache

from apps.core import redis_target
from apps.gateway.proxy import config as gateway_config
from tests.support import processes
from tests.support.servers import Servers, wait_seconds

MASTER = "hangar-test"
DB = 5


def started_pair():
    servers = Servers()
    try:
        master = servers.redis("master")
        replica = servers.redis("replica", replica_of=master.port)
        sentinel = servers.sentinel("sentinel", MASTER, master.port)
        processes.wait_for(
            lambda: replica.client().info("replication")["master_link_status"] == "up",
            what="the replica in sync",
        )
        environ = {
            "HANGAR_REDIS_URL": f"redis://127.0.0.1:{processes.free_port()}/{DB}",
            "HANGAR_REDIS_SENTINELS": f"127.0.0.1:{sentinel.port}",
            "HANGAR_REDIS_MASTER": MASTER,
        }
        yield servers, master, replica, environ
    finally:
        servers.close()


# Shared by the tests that only use the pair; the failover test gets its own.
sentinel_pair = pytest.fixture(scope="module", name="sentinel_pair")(started_pair)
fresh_sentinel_pair = pytest.fixture(name="fresh_sentinel_pair")(started_pair)


def test_sentinels_without_a_master_name_are_refused_with_the_variable_named():
    with pytest.raises(ValueError, match="HANGAR_REDIS_MASTER"):
        redis_target.from_environment({"HANGAR_REDIS_SENTINELS": "10.0.0.1:26379"})
    with pytest.raises(ValueError, match="HANGAR_REDIS_SENTINELS"):
        redis_target.from_environment(
            {"HANGAR_REDIS_SENTINELS": "10.0.0.1", "HANGAR_REDIS_MASTER": "m"}
        )


def test_without_sentinels_every_user_gets_the_plain_url():
    target = redis_target.from_environment({"HANGAR_REDIS_URL": "redis://:pw@10.0.0.1:6379/3"})
    assert target.celery_url() == "redis://:pw@10.0.0.1:6379/3"
    assert target.channel_layer_host() == "redis://:pw@10.0.0.1:6379/3"
    assert target.celery_transport_options() == {} and target.cache_options() == {}
    assert target.db == 3


def test_the_client_and_the_asyncio_client_write_to_the_master(sentinel_pair):
    _, master, _, environ = sentinel_pair
    target = redis_target.from_environment(environ)
    target.client().set("plain", "1")

    async def write() -> None:
        client = target.async_client()
        await client.set("async", "2")
        await client.aclose()

    asyncio.run(write())
    assert master.client(db=DB).mget("plain", "async") == [b"1", b"2"]


def test_the_outbox_keeps_on_the_master(sentinel_pair, settings, monkeypatch):
    """The outbox matters most in a failover: it must not talk to the URL's host."""
    from apps.core import outbox

    _, master, _, environ = sentinel_pair
    settings.REDIS = redis_target.from_environment(environ)
    monkeypatch.setattr(outbox, "_client", None)
    record = '{"kind": "test", "args": {}, "kept_at": 0}'
    assert outbox.client().rpush(outbox.QUEUE, record) == 1
    assert outbox.state()["waiting"] == 1
    assert master.client(db=DB).lrange(outbox.QUEUE, 0, -1) == [record.encode()]
    master.client(db=DB).delete(outbox.QUEUE)


def test_the_django_cache_uses_the_master(sentinel_pair):
    _, master, _, environ = sentinel_pair
    target = redis_target.from_environment(environ)
    cache = RedisCache(target.url, {"KEY_PREFIX": "t", "OPTIONS": target.cache_options()})
    cache.set("login-failures", 3)
    assert cache.get("login-failures") == 3
    assert master.client(db=DB).exists("t:1:login-failures") == 1


def test_the_channel_layer_sends_through_the_master(sentinel_pair):
    _, master, _, environ = sentinel_pair
    target = redis_target.from_environment(environ)

    async def round_trip() -> dict:
        layer = RedisPubSubChannelLayer(hosts=[target.channel_layer_host()], prefix="t")
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "hello"})
        message = await asyncio.wait_for(layer.receive(channel), 10)
        await layer.flush()
        return message

    assert asyncio.run(round_trip()) == {"type": "hello"}
    assert master.client().info("stats")["total_commands_processed"] > 0


def test_celery_queues_and_stores_results_on_the_master(sentinel_pair):
    _, master, _, environ = sentinel_pair
    target = redis_target.from_environment(environ)
    app = Celery(
        "sentinel-test",
        broker=target.celery_url(),
        backend=target.celery_url(),
        set_as_current=False,
    )
    app.conf.broker_transport_options = target.celery_transport_options()
    app.conf.result_backend_transport_options = target.celery_transport_options()
    app.send_task("hangar.test.nothing", queue="sentinel-test")
    task_id = str(uuid.uuid4())
    app.backend.store_result(task_id, {"answer": 42}, "SUCCESS")
    data = master.client(db=DB)
    assert data.llen("sentinel-test") == 1
    assert data.exists(f"celery-task-meta-{task_id}") == 1


def test_the_gateway_reads_the_same_sentinel_settings(sentinel_pair, monkeypatch):
    _, master, _, environ = sentinel_pair
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    config = gateway_config.load()
    assert config.redis == redis_target.from_environment(environ)
    assert config.namespace == f"db{DB}"

    async def write() -> None:
        client = config.redis.async_client(socket_timeout=2)
        await client.incr("gateway-limit")
        await client.aclose()

    asyncio.run(write())
    assert master.client(db=DB).get("gateway-limit") == b"1"


def test_when_the_master_dies_writes_move_to_the_promoted_replica(fresh_sentinel_pair):
    _, master, replica, environ = fresh_sentinel_pair
    target = redis_target.from_environment(environ)
    client = target.client(socket_timeout=1, socket_connect_timeout=1)
    client.set("before", "kept")
    assert client.wait(1, 2000) == 1  # on the replica before the master dies
    master.kill()

    def writes() -> bool:
        client.set("after", "written")
        return True

    took = wait_seconds(writes, timeout=60, what="writes through the promoted replica")
    print(f"\nRedis failover through Sentinel: writes again after {took:.1f} s")
    assert replica.client(db=DB).mget("before", "after") == [b"kept", b"written"]
