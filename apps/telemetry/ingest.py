"""Per-connection ingest state for one agent: validation, rollups, node state.

Kept free of the websocket so the benchmark and the tests can drive it too.
Its writes of what exists nowhere else (finished minutes, the node state and
GPU health judged from samples) go through `outbox.kept`: while the database
is away they wait in Redis and are written, in order, when it returns.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from django.db import transaction
from django.utils import timezone

from agents.protocol import validate_facts, validate_sample
from apps.core import outbox
from apps.inventory.health import apply_health
from apps.inventory.models import Node, NodeState
from apps.inventory.services import apply_facts, transition_node
from apps.telemetry.models import NodeMetricMinute
from apps.telemetry.series import MinuteRollup, flatten, merge_minutes

# What may change on a node while its agent is connected, other than its facts.
PEOPLE_FIELDS = ["name", "cluster", "labels", "state", "state_reason", "credential_revoked_at"]


class NodeIngest:
    def __init__(self, node: Node):
        self.node = node
        self.last_seq: int | None = None
        self.lost = 0
        self.rollup: MinuteRollup | None = None
        self.finished: list[MinuteRollup] = []

    # --- pure, on the hot path -------------------------------------------------
    def accept_sample(self, raw: dict) -> dict:
        sample = validate_sample(raw)
        seq = sample["seq"]
        # Sweeps the agent merged while offline are not lost: `coalesced` counts them.
        if self.last_seq is not None and seq > self.last_seq + 1:
            self.lost += max(0, seq - self.last_seq - 1 - sample.get("coalesced", 0))
        if self.last_seq is None or seq > self.last_seq:
            self.last_seq = seq
        minute = int(sample["ts"] // 60)
        if self.rollup is None or minute != self.rollup.minute:
            if self.rollup is not None and self.rollup.count:
                self.finished.append(self.rollup)
            self.rollup = MinuteRollup(minute)
        self.rollup.add(flatten(sample), 1 + sample.get("coalesced", 0))
        return sample

    @staticmethod
    def wanted_state(sample: dict) -> tuple[str, str]:
        # The agent repeats every GPU fault in the node-level list ("gpu N: ...").
        faults = sample.get("faults") or ()
        if faults:
            return NodeState.DEGRADED, "; ".join(faults)[:255]
        return NodeState.ONLINE, ""

    # --- database work, called through database_sync_to_async ------------------
    def hello(self, facts_raw: dict, agent_version: str) -> None:
        facts = validate_facts(facts_raw)
        # Redis has the live last_seen; the beat sweep copies it to the database
        # (inventory.mark_offline_nodes). Now is never older than the sweep's copy.
        apply_facts(self.node, facts, agent_version, seen_at=timezone.now())
        self.settle_state(NodeState.ONLINE, "agent connected")

    def take_health(self, reads: list[list[dict]]) -> None:
        """Judge the health reads of a message's samples, oldest first."""
        judge_health(node_id=self.node.pk, reads=reads)

    def reload_node(self) -> None:
        """Re-read what people and the sweep change: this copy lives as long as the socket."""
        self.node.refresh_from_db(fields=PEOPLE_FIELDS)

    def needs_transition(self, state: str) -> bool:
        """Agent reports may move a node between pending/online/degraded/offline only.

        On the hot path this reads the socket's copy (kept current by
        `node.changed` pushes, apps/telemetry/live.py); settle_state decides again
        from the database before it writes.
        """
        return self.node.state != state and self.node.state not in (
            NodeState.DRAINING,
            NodeState.RETIRED,
        )

    def settle_state(self, state: str, reason: str) -> None:
        judge_node_state(node_id=self.node.pk, state=state, reason=reason, judged_at=time.time())
        # The socket's copy follows the judgement, written or kept: a kept one must
        # not be judged again on every sample. What the database decided comes
        # back as node.changed (reload_node).
        self.node.state, self.node.state_reason = state, reason[:255]

    def needs_persist(self) -> bool:
        return bool(self.finished)

    def take_finished(self) -> list[MinuteRollup]:
        done, self.finished = self.finished, []
        return done

    def flush_rollups(self, include_current: bool = False) -> int:
        done = self.take_finished()
        if include_current and self.rollup is not None and self.rollup.count:
            done.append(self.rollup)
            self.rollup = None
        return self.write_rollups(done)

    def write_rollups(self, done: list[MinuteRollup]) -> int:
        """Merge finished minutes into their rows (now, or kept until the database
        returns); returns the number of minutes."""
        if not done:
            return 0
        parts: dict[int, tuple[int, dict]] = {}
        for rollup in done:  # a replayed buffer can revisit a minute: merged here too
            part = (rollup.count, rollup.summary())
            minute = rollup.minute
            parts[minute] = merge_minutes(*parts[minute], *part) if minute in parts else part
        store_rollups(
            node_id=self.node.pk,
            minutes=[[minute, count, series] for minute, (count, series) in sorted(parts.items())],
        )
        return len(parts)


@outbox.kept("telemetry.rollups")
def store_rollups(node_id: int, minutes: list[list]) -> None:
    """Merge [[minute number, samples, series], ...] into the node's minute rows.

    Merged, not replaced: the partial minute a socket flushes when it closes is
    completed by the next socket's rollup of the same minute, and two sockets
    of one node may flush the same minute at once. The rows are created first
    (a conflicting insert waits for the other writer's commit) and then locked
    in minute order, so neither writer's part is lost.
    """
    parts = {
        datetime.fromtimestamp(minute * 60, tz=UTC): (count, series)
        for minute, count, series in minutes
    }
    if not Node.objects.filter(pk=node_id).exists():
        return  # deleted while its minutes waited
    with transaction.atomic():
        NodeMetricMinute.objects.bulk_create(
            [NodeMetricMinute(node_id=node_id, minute=m, samples=0, series={}) for m in parts],
            ignore_conflicts=True,
        )
        rows = list(
            NodeMetricMinute.objects.select_for_update()
            .filter(node_id=node_id, minute__in=list(parts))
            .order_by("minute")
        )
        for row in rows:
            row.samples, row.series = merge_minutes(row.samples, row.series, *parts[row.minute])
        NodeMetricMinute.objects.bulk_update(rows, ["samples", "series"])


@outbox.kept("telemetry.node-state")
def judge_node_state(node_id: int, state: str, reason: str, judged_at: float) -> None:
    """The state the node's samples call for (online, degraded), decided afresh
    from the database's row: people's states (draining, retired) stand."""
    node = Node.objects.filter(pk=node_id).first()
    if node is None or node.state in (state, NodeState.DRAINING, NodeState.RETIRED):
        return
    transition_node(node, state, reason, judged_at=judged_at)


@outbox.kept("telemetry.health")
def judge_health(node_id: int, reads: list[list[dict]]) -> None:
    """Judge a node's health reads (validated upstream), oldest first."""
    node = Node.objects.filter(pk=node_id).first()
    if node is None:
        return
    for read in reads:
        apply_health(node, read)
