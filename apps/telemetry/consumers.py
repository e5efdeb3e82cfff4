"""The two websockets: agents stream in, browsers subscribe out."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import redis.asyncio as aioredis
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer
from django.conf import settings
from django.contrib.auth import get_user_model

from agents.protocol import (
    CLOSE_TRY_AGAIN_LATER,
    MAX_BATCH_SAMPLES,
    PROTOCOL_VERSION,
    ProtocolError,
    validate_worker_status,
)
from apps.accounts.policy import can, visible_cluster_ids
from apps.accounts.signals import user_group
from apps.alerts.services import evaluate_samples, forget_evaluator
from apps.audit import recorder
from apps.core import outbox
from apps.deployments.services import apply_worker_status
from apps.inventory.models import Cluster, Node
from apps.inventory.services import node_for_credential
from apps.telemetry import grid, live
from apps.telemetry.batcher import batcher_for_this_loop
from apps.telemetry.ingest import NodeIngest

log = logging.getLogger(__name__)
REFUSED = 4401
TRY_AGAIN_LATER = CLOSE_TRY_AGAIN_LATER  # the database is away: reconnect later
SNAPSHOT_NODES = 100  # nodes per snapshot message
GRID_NODES = 1000  # nodes per grid message: 8-GPU rows are ~300 bytes
VIEWS = ("full", "grid")  # what a browser socket streams (apps/telemetry/grid.py)
PROTOCOL_ERROR = 4400
RIGHTS_CHANGED = 4403  # the user's rights changed: reconnect, and subscriptions are re-checked
_redis: dict[int, aioredis.Redis] = {}


def async_redis() -> aioredis.Redis:
    loop_id = id(asyncio.get_running_loop())
    if loop_id not in _redis:
        _redis[loop_id] = settings.REDIS.async_client()
    return _redis[loop_id]


def _log_failure(future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("writing telemetry to the database failed", exc_info=future.exception())


def _bearer(scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return ""


def _address(scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


class DirectDispatch:
    """Dispatch each message without channels' close_old_connections round trip.

    channels >= 4.2 runs close_old_connections on the one database thread before
    every handler: a thread round trip per telemetry message and per browser
    delivery (2,000 a second at 1,000 nodes), queued behind whatever database
    write that thread is doing. That made every socket in the process wait on
    the slowest write (docs/benchmarks.md). Every database call in these
    consumers goes through database_sync_to_async, which closes stale
    connections around the call itself, so nothing is lost by skipping it.
    """

    async def dispatch(self, message):
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)


class AgentConsumer(DirectDispatch, AsyncWebsocketConsumer):
    """One per connected agent. The node comes from the credential, never a message."""

    ingest: NodeIngest | None = None
    persisting: asyncio.Future | None = None

    async def connect(self):
        credential = _bearer(self.scope)
        try:
            node = await database_sync_to_async(node_for_credential)(credential)
        except outbox.DATABASE_AWAY:
            # Not a refusal (the agent would give up on 4401): try again later, and
            # its buffer keeps the samples meanwhile.
            await self.accept()
            await self.close(code=TRY_AGAIN_LATER)
            return
        await self.accept()
        if node is None:
            await database_sync_to_async(recorder.record)(
                "agent.connect",
                outcome=recorder.Outcome.DENIED,
                actor_type=recorder.Actor.NODE,
                actor_name="unknown agent",
                source_address=_address(self.scope),
                changes={
                    "reason": "unknown or revoked credential",
                    "credential_prefix": credential[:8],
                },
            )
            await self.close(code=REFUSED)
            return
        self.ingest = NodeIngest(node)
        self.cluster_group = live.cluster_group(node.cluster_id)
        await self.channel_layer.group_add(live.agent_group(node.pk), self.channel_name)
        await self.send(
            json.dumps({"type": "welcome", "protocol": PROTOCOL_VERSION, "node_id": node.pk})
        )

    async def disconnect(self, code):
        if self.ingest is None:
            return
        await self.channel_layer.group_discard(
            live.agent_group(self.ingest.node.pk), self.channel_name
        )
        forget_evaluator(self.ingest.node.pk)
        if self.persisting is not None:
            await asyncio.gather(self.persisting, return_exceptions=True)
        await database_sync_to_async(self.ingest.flush_rollups)(include_current=True)

    async def receive(self, text_data=None, bytes_data=None):
        if self.ingest is None:
            return
        try:
            message = json.loads(text_data or "")
            kind = message.get("type") if isinstance(message, dict) else None
            if kind == "telemetry":
                await self.take_samples([message.get("sample")])
            elif kind == "batch":
                samples = message.get("samples")
                if not isinstance(samples, list) or len(samples) > MAX_BATCH_SAMPLES:
                    raise ProtocolError(
                        f"batch.samples must be a list of at most {MAX_BATCH_SAMPLES} samples"
                    )
                await self.take_samples(samples)
            elif kind == "hello":
                await database_sync_to_async(self.ingest.hello)(
                    message.get("facts"), str(message.get("agent_version", ""))
                )
                await self.touch()
            elif kind == "worker":
                await self.take_worker_status(validate_worker_status(message.get("worker")))
            else:
                raise ProtocolError(f"unknown message type {kind!r}")
        except (ProtocolError, ValueError, TypeError, KeyError) as exc:
            await self.send(json.dumps({"type": "error", "detail": str(exc)[:300]}))
        except outbox.DATABASE_AWAY:
            # A write with no keeping of its own (facts, a worker's report): the
            # agent sends them again after its next hello, and keeps its samples
            # meanwhile; the minutes taken so far are kept on closing (disconnect).
            log.warning(
                "database away: closing node %s's socket; its agent will reconnect",
                self.ingest.node.pk,
            )
            await self.close(code=TRY_AGAIN_LATER)

    async def take_samples(self, raw_samples: list) -> None:
        ingest = self.ingest
        samples = [ingest.accept_sample(raw) for raw in raw_samples]
        newest = max(samples, key=lambda s: s["seq"])
        lost, ingest.lost = ingest.lost, 0
        # Encoded once: Redis keeps this text and every browser gets it pasted in.
        # Stored and sent with every other socket's samples of this flush window
        # (apps/telemetry/batcher.py); awaited, so it reaches browsers before any
        # node-state or alert message it causes below.
        await batcher_for_this_loop(self.channel_layer).put(
            ingest.node.pk,
            ingest.node.cluster_id,
            json.dumps(newest),
            lost,
            grid=[newest["seq"], grid.tiles_of(newest)],
        )
        await evaluate_samples(ingest.node, samples)
        health_reads = [s["health"] for s in samples if "health" in s]
        if health_reads:  # every ten seconds or so, not every sample (docs/health.md)
            await database_sync_to_async(ingest.take_health)(health_reads)
        state, reason = NodeIngest.wanted_state(newest)
        if ingest.needs_transition(state):
            await database_sync_to_async(self._settle)(state, reason)
        elif ingest.needs_persist():
            self.persist_in_background()

    def persist_in_background(self) -> None:
        """Write finished minutes without holding up the stream.

        Nothing in the next sample depends on these writes, and awaiting them made
        each agent's socket wait its turn on the one database thread behind every
        other node's writes (docs/benchmarks.md). One write in flight per node.
        """
        if self.persisting is not None and not self.persisting.done():
            return
        rollups = self.ingest.take_finished()
        self.persisting = asyncio.ensure_future(
            database_sync_to_async(self.ingest.write_rollups)(rollups)
        )
        self.persisting.add_done_callback(_log_failure)

    def _settle(self, state: str, reason: str) -> None:
        self.ingest.settle_state(state, reason)
        self.ingest.write_rollups(self.ingest.take_finished())

    async def take_worker_status(self, status: dict) -> None:
        worker = await database_sync_to_async(apply_worker_status)(self.ingest.node, status)
        if worker is not None:
            await self.channel_layer.group_send(
                self.cluster_group,
                {
                    "type": "worker.status",
                    "cluster": self.ingest.node.cluster_id,
                    "node": self.ingest.node.pk,
                    "worker": status,
                },
            )

    async def touch(self) -> None:
        await async_redis().hset(live.LAST_SEEN, self.ingest.node.pk, time.time())

    async def agent_revoked(self, event):
        await self.close(code=REFUSED)

    async def node_changed(self, event):
        """A person or the sweep changed the node (state, cluster): decide from the new."""
        await database_sync_to_async(self.ingest.reload_node)()
        self.cluster_group = live.cluster_group(self.ingest.node.cluster_id)


class TelemetryConsumer(DirectDispatch, AsyncJsonWebsocketConsumer):
    """Browsers: {"action": "subscribe", "cluster": id} or {"..., "node": id}.

    `"view": "full"` (the default) forwards every sample as the agent sent it (node
    pages chart every figure); `"view": "grid"` sends compact tile deltas at most
    every half second (the dashboard: apps/telemetry/grid.py). One view per socket.

    Authorisation happens when joining a group (a cluster), as the policy says,
    with the user and their rights read afresh from the database for each
    subscribe; messages within a joined group are then forwarded without
    per-message checks. The socket also joins the user's own group
    (apps/accounts/signals.py) and closes when their rights change, so a
    joined group never outlives the rights that let it be joined.
    """

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close()  # before accept: the handshake is refused (403)
            return
        self.user = user
        self.user_id = user.pk
        # Joined before the first subscribe's fresh read: a change after it closes us.
        await self.channel_layer.group_add(user_group(self.user_id), self.channel_name)
        self.filters: dict[int, set[int] | None] = {}
        self.view: str | None = None
        self.grid: grid.GridDeltas | None = None
        self.grid_task: asyncio.Task | None = None
        self.grid_next = 0.0
        await self.accept()

    async def disconnect(self, code):
        if getattr(self, "user_id", None) is not None:
            await self.channel_layer.group_discard(user_group(self.user_id), self.channel_name)
        if getattr(self, "grid_task", None) is not None:
            self.grid_task.cancel()
        for cluster_id in getattr(self, "filters", {}):
            await self.channel_layer.group_discard(
                live.cluster_group(cluster_id), self.channel_name
            )

    async def receive_json(self, content, **kwargs):
        if not isinstance(content, dict) or content.get("action") != "subscribe":
            await self.send_json({"type": "error", "detail": "send {action: subscribe, ...}"})
            return
        view = content.get("view", self.view or "full")  # a later subscribe may leave it out
        if view not in VIEWS:
            await self.send_json(
                {"type": "error", "detail": f"view must be one of {', '.join(VIEWS)}"}
            )
            return
        if self.view is not None and view != self.view:
            await self.send_json(
                {"type": "error", "detail": f"this socket already streams the {self.view} view"}
            )
            return
        try:
            clusters, nodes = await database_sync_to_async(self._resolve)(content)
        except UserGone:
            await self.close(code=RIGHTS_CHANGED)
            return
        except PermissionError as exc:
            await self.send_json({"type": "error", "detail": str(exc)})
            return
        self.view = view
        if view == "grid" and self.grid is None:
            self.grid = grid.GridDeltas()
        elif self.grid is not None and self.grid_task is not None:
            # A delta due (within GRID_INTERVAL) goes out before the snapshot that
            # reseeds what this browser was sent; after it, it would undo newer values.
            await self.grid_task
        for cluster_id in clusters:
            if cluster_id not in self.filters:
                await self.channel_layer.group_add(
                    live.cluster_group(cluster_id), self.channel_name
                )
            current = self.filters.get(cluster_id, set())
            wanted = nodes.get(cluster_id)
            self.filters[cluster_id] = (
                None if (current is None or wanted is None) else current | wanted
            )
        snapshot = await database_sync_to_async(self._snapshot)(clusters, nodes)
        # In pieces: 500 nodes of 8-GPU samples are ~1.5 MB, over the 1 MiB websocket
        # payload limit of Daphne (Autobahn), which would drop the browser's socket.
        pieces = [
            snapshot[i : i + SNAPSHOT_NODES] for i in range(0, len(snapshot), SNAPSHOT_NODES)
        ] or [[]]
        for number, piece in enumerate(pieces, start=1):
            await self.send_json(
                {"type": "snapshot", "nodes": piece, "last": number == len(pieces)}
            )

    def _resolve(self, content) -> tuple[list[int], dict[int, set[int] | None]]:
        # Fresh from the database: the object from the handshake carries the
        # active flag and cached rights of that moment (policy.rights_of).
        self.user = get_user_model().objects.filter(pk=self.user_id, is_active=True).first()
        if self.user is None:
            raise UserGone
        if "node" in content:
            node = Node.objects.filter(pk=_int(content["node"])).only("id", "cluster_id").first()
            if node is None or not can(self.user, "telemetry.view", node):
                raise PermissionError("no such node, or not yours to see")
            return [node.cluster_id], {node.cluster_id: {node.pk}}
        if "cluster" in content:
            cluster_id = _int(content["cluster"])
            if not can(self.user, "telemetry.view", cluster_id):
                raise PermissionError("no such cluster, or not yours to see")
            return [cluster_id], {cluster_id: None}
        visible = visible_cluster_ids(self.user, "telemetry.view")
        ids = (
            list(Cluster.objects.values_list("pk", flat=True))
            if visible is None
            else sorted(visible)
        )
        return ids, dict.fromkeys(ids)

    def _snapshot(self, clusters, nodes) -> list[dict]:
        rows = Node.objects.filter(cluster_id__in=clusters).values(
            "id", "cluster_id", "state", "state_reason", "simulated"
        )
        rows = [
            r
            for r in rows
            if nodes.get(r["cluster_id"]) is None or r["id"] in nodes[r["cluster_id"]]
        ]
        latest = live.latest_samples([r["id"] for r in rows])
        if self.grid is None:
            return [{**r, "sample": latest.get(r["id"])} for r in rows]
        snapshot = []
        for r in rows:
            sample = latest.get(r["id"])
            tiles = grid.tiles_of(sample) if sample else []
            self.grid.seed(r["id"], tiles)
            snapshot.append({**r, "seq": sample["seq"] if sample else None, "tiles": tiles})
        return snapshot

    async def telemetry_samples(self, event):
        """A flush's samples of one cluster (apps/telemetry/batcher.py), oldest first."""
        if event["cluster"] not in self.filters:
            return
        allowed = self.filters[event["cluster"]]
        if self.grid is not None:
            for item in event["items"]:
                if allowed is None or item["node"] in allowed:
                    self.grid.take(item["node"], *_grid_row(item))
            self._send_grid_soon()
            return
        for item in event["items"]:
            if allowed is None or item["node"] in allowed:
                await self.send(text_data=sample_text(item))

    def _send_grid_soon(self) -> None:
        if self.grid_task is None and self.grid.waiting:
            self.grid_task = asyncio.get_running_loop().create_task(self._send_grid())

    async def _send_grid(self) -> None:
        """After at most GRID_INTERVAL since the last one: one message of what changed."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, self.grid_next - loop.time()))
        self.grid_task = None
        self.grid_next = loop.time() + grid.GRID_INTERVAL
        rows = self.grid.take_delta()
        # In pieces, for the same 1 MiB payload limit as the snapshot.
        for start in range(0, len(rows), GRID_NODES):
            await self.send(
                text_data=json.dumps(
                    {"type": "grid", "nodes": rows[start : start + GRID_NODES]},
                    separators=(",", ":"),
                )
            )

    async def telemetry_sample(self, event):
        # One sample from a sender other than the batcher; browsers see the same text.
        if not self._wants(event):
            return
        if self.grid is not None:
            self.grid.take(event["node"], *_grid_row(event))
            self._send_grid_soon()
        else:
            await self.send(text_data=sample_text(event))

    async def node_state(self, event):
        await self._forward(
            event,
            {
                "type": "node_state",
                "node": event["node"],
                "state": event["state"],
                "reason": event["reason"],
            },
        )

    async def alert_update(self, event):
        await self._forward(event, {"type": "alert", "alert": event["alert"]})

    async def worker_status(self, event):
        await self._forward(
            event, {"type": "worker", "node": event["node"], "worker": event["worker"]}
        )

    async def user_rights_changed(self, event):
        await self.close(code=RIGHTS_CHANGED)

    async def traffic_update(self, event):
        """A deployment's request numbers from the gateways (apps/gateway/traffic.py), to
        sockets of the whole cluster in the full view (the deployment page)."""
        if self.grid is None and self.filters.get(event["cluster"], ()) is None:
            await self.send_json(
                {"type": "traffic", "deployment": event["deployment"], "traffic": event["traffic"]}
            )

    def _wants(self, event) -> bool:
        if event["cluster"] not in self.filters:
            return False
        allowed = self.filters[event["cluster"]]
        return allowed is None or event["node"] in allowed

    async def _forward(self, event, message):
        if self._wants(event):
            await self.send_json(message)


class UserGone(Exception):
    """The socket's user was deactivated or deleted since the handshake."""


def sample_text(item: dict) -> str:
    """The text send_json would make of {"type", "node", "sample", "sent"}, with the
    sample as the agent's consumer encoded it: decoding and re-encoding it for every
    subscriber was the largest per-browser cost of fan-out."""
    return (
        f'{{"type": "sample", "node": {json.dumps(item["node"])}, '
        f'"sample": {item["sample_json"]}, "sent": {json.dumps(item["sent"])}}}'
    )


def _grid_row(item: dict) -> tuple[int, list]:
    if item.get("grid") is not None:
        return item["grid"]
    sample = json.loads(item["sample_json"])  # from a sender that did not compact it
    return sample["seq"], grid.tiles_of(sample)


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise PermissionError("ids are whole numbers") from None
