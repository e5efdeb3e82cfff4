"""The telemetry batcher: many sockets' samples, one Redis pipeline and one publish per
flush. Real Redis, the real pub/sub channel layer, a browser consumer in this process."""

import asyncio
import json
import logging
import time

import redis
import redis.asyncio as aioredis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings

from apps.inventory.models import Node
from apps.telemetry import live
from apps.telemetry.batcher import TelemetryBatcher
from apps.telemetry.consumers import TelemetryConsumer
from tests.telemetry.conftest import sample


def browser(user) -> WebsocketCommunicator:
    consumer = TelemetryConsumer.as_asgi()

    async def app(scope, receive, send):
        await consumer({**scope, "user": user}, receive, send)

    return WebsocketCommunicator(app, "/ws/telemetry/")


async def subscribed(user, **subscription) -> WebsocketCommunicator:
    socket = browser(user)
    assert (await socket.connect())[0]
    await socket.send_json_to({"action": "subscribe", **subscription})
    assert (await socket.receive_json_from(timeout=5))["type"] == "snapshot"
    return socket


async def texts(socket: WebsocketCommunicator, count: int) -> list[str]:
    return [await socket.receive_from(timeout=5) for _ in range(count)]


def sample_json(seq: int) -> str:
    return json.dumps(sample(seq))


def test_several_nodes_samples_in_one_flush_reach_browsers_in_order_exactly_once(
    cluster, make_user
):
    nodes = [Node.objects.create(cluster=cluster, hostname=f"b{i}").pk for i in range(3)]
    viewer = make_user("vera", ("viewer", cluster))
    sent = [(nodes[0], 1), (nodes[1], 1), (nodes[2], 1), (nodes[0], 2)]
    encoded = {item: sample_json(item[1]) for item in sent}

    async def scenario():
        everything = await subscribed(viewer, cluster=cluster.pk)
        one_node = await subscribed(viewer, node=nodes[1])
        batcher = TelemetryBatcher(
            aioredis.Redis.from_url(settings.REDIS_URL), get_channel_layer(), interval=0.05
        )
        await asyncio.gather(
            *(
                batcher.put(node, cluster.pk, encoded[(node, seq)], lost=1 if seq == 2 else 0)
                for node, seq in sent
            )
        )
        received = await texts(everything, 4), await texts(one_node, 1)
        assert await everything.receive_nothing(timeout=0.3)
        assert await one_node.receive_nothing(timeout=0.1)
        await everything.disconnect()
        await one_node.disconnect()
        await batcher.redis.aclose()
        return batcher.flushes, received

    flushes, (everything, one_node) = async_to_sync(scenario)()

    assert flushes == 1
    # Byte for byte what browsers got from one telemetry.sample message each.
    for text, (node, seq) in zip(everything, sent, strict=True):
        assert text.startswith(
            f'{{"type": "sample", "node": {node}, "sample": {encoded[(node, seq)]}, "sent": '
        )
        assert list(json.loads(text)) == ["type", "node", "sample", "sent"]
    assert [(m["node"], m["sample"]["seq"]) for m in map(json.loads, everything)] == sent
    assert [(m["node"], m["sample"]["seq"]) for m in map(json.loads, one_node)] == [(nodes[1], 1)]
    # Redis keeps the newest sample per node, when each node was seen, and gaps.
    assert {n: s["seq"] for n, s in live.latest_samples(nodes).items()} == {
        nodes[0]: 2,
        nodes[1]: 1,
        nodes[2]: 1,
    }
    assert set(live.last_seen_all()) == set(nodes)
    client = redis.Redis.from_url(settings.REDIS_URL)
    assert client.ttl(live.latest_key(nodes[0])) > 3500
    assert client.hgetall(live.LOST) == {str(nodes[0]).encode(): b"1"}


class RedisFailingOnce:
    """A real Redis client whose first pipeline fails, as when Redis restarts."""

    def __init__(self):
        self.real = aioredis.Redis.from_url(settings.REDIS_URL)
        self.failures_left = 1

    def pipeline(self, transaction: bool):
        pipe = self.real.pipeline(transaction=transaction)
        if self.failures_left:
            self.failures_left -= 1

            async def refuse():
                raise redis.ConnectionError("Connection reset by peer")

            pipe.execute = refuse
        return pipe


def test_a_failed_flush_is_logged_and_retried_without_losing_a_sample(cluster, make_user, caplog):
    node = Node.objects.create(cluster=cluster, hostname="flaky").pk
    viewer = make_user("vera", ("viewer", cluster))

    async def scenario():
        socket = await subscribed(viewer, cluster=cluster.pk)
        batcher = TelemetryBatcher(RedisFailingOnce(), get_channel_layer(), interval=0.05)
        await asyncio.gather(
            batcher.put(node, cluster.pk, sample_json(1)),
            batcher.put(node, cluster.pk, sample_json(2)),
        )
        received = await texts(socket, 2)
        assert await socket.receive_nothing(timeout=0.3)
        await socket.disconnect()
        await batcher.redis.real.aclose()
        return batcher.failures, batcher.flushes, received

    with caplog.at_level(logging.ERROR, logger="apps.telemetry.batcher"):
        failures, flushes, received = async_to_sync(scenario)()

    assert (failures, flushes) == (1, 1)
    assert [json.loads(t)["sample"]["seq"] for t in received] == [1, 2]
    assert live.latest_samples([node])[node]["seq"] == 2
    [record] = [r for r in caplog.records if r.name == "apps.telemetry.batcher"]
    assert "writing to Redis" in record.getMessage() and "2 samples of 1 nodes" in (
        record.getMessage()
    )


def test_the_beat_sweep_copies_last_seen_into_the_database(cluster):
    # The stream keeps last_seen in Redis only; Node.last_seen follows within a sweep.
    from apps.inventory.tasks import mark_offline_nodes_task

    node = Node.objects.create(cluster=cluster, hostname="seen", state="online")
    seen_at = time.time() - 2
    redis.Redis.from_url(settings.REDIS_URL).hset(live.LAST_SEEN, node.pk, seen_at)
    assert mark_offline_nodes_task() == []
    node.refresh_from_db()
    assert node.state == "online"
    assert abs(node.last_seen.timestamp() - seen_at) < 0.001
