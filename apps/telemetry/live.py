"""Live telemetry state in Redis and fan-out through the channel layer.

Keys: `hangar:latest:<node>` (the newest sample, JSON, for instant page loads)
and the hash `hangar:last_seen` (node id -> Unix time of the last message).
Groups: `telemetry.cluster.<id>` (browsers) and `agent.node.<id>` (the agent's
own socket, to be told its credential was revoked or its node changed).
"""

from __future__ import annotations

import json

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction

LAST_SEEN = "hangar:last_seen"
LOST = "hangar:lost_samples"


def latest_key(node_id: int) -> str:
    return f"hangar:latest:{node_id}"


def cluster_group(cluster_id: int) -> str:
    return f"telemetry.cluster.{cluster_id}"


def agent_group(node_id: int) -> str:
    return f"agent.node.{node_id}"


_client: redis.Redis | None = None


def client() -> redis.Redis:
    global _client
    if _client is None:
        _client = settings.REDIS.client(socket_timeout=2, socket_connect_timeout=2)
    return _client


def last_seen_all() -> dict[int, float]:
    return {int(k): float(v) for k, v in client().hgetall(LAST_SEEN).items()}


def latest_samples(node_ids: list[int]) -> dict[int, dict]:
    if not node_ids:
        return {}
    raw = client().mget([latest_key(n) for n in node_ids])
    return {n: json.loads(value) for n, value in zip(node_ids, raw, strict=True) if value}


def publish_node_state(node) -> None:
    async_to_sync(get_channel_layer().group_send)(
        cluster_group(node.cluster_id),
        {
            "type": "node.state",
            "cluster": node.cluster_id,
            "node": node.pk,
            "state": node.state,
            "reason": node.state_reason,
        },
    )
    tell_agent_node_changed(node.pk)


def tell_agent_node_changed(node_id: int) -> None:
    """Have the node's agent socket re-read its node (state, cluster, labels).

    The socket keeps the Node it loaded at connect for its whole life and decides
    node states and fan-out groups from it; after commit, so it reads the change.
    """
    transaction.on_commit(
        lambda: async_to_sync(get_channel_layer().group_send)(
            agent_group(node_id), {"type": "node.changed"}
        )
    )


def disconnect_agent(node_id: int) -> None:
    async_to_sync(get_channel_layer().group_send)(agent_group(node_id), {"type": "agent.revoked"})
