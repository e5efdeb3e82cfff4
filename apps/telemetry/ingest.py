"""Per-connection ingest state for one agent: validation, rollups, node state.

Kept free of the websocket so the benchmark and the tests can drive it too.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django.db import transaction
from django.utils import timezone

from agents.protocol import validate_facts, validate_sample
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
        self.rollup.add(flatten(sample))
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
        for read in reads:
            apply_health(self.node, read)

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
        self.node.refresh_from_db(fields=["state", "state_reason"])
        if self.needs_transition(state):
            transition_node(self.node, state, reason)

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
        """Merge finished minutes into their rows; returns the number of rows written.

        Merged, not replaced: the partial minute a socket flushes when it closes is
        completed by the next socket's rollup of the same minute, and two sockets
        of one node may flush the same minute at once. The rows are created first
        (a conflicting insert waits for the other writer's commit) and then locked
        in minute order, so neither writer's part is lost.
        """
        if not done:
            return 0
        parts: dict[datetime, tuple[int, dict]] = {}
        for rollup in done:  # a replayed buffer can revisit a minute: merged here too
            minute = datetime.fromtimestamp(rollup.minute * 60, tz=UTC)
            part = (rollup.count, rollup.summary())
            parts[minute] = merge_minutes(*parts[minute], *part) if minute in parts else part
        minutes = sorted(parts)
        with transaction.atomic():
            NodeMetricMinute.objects.bulk_create(
                [
                    NodeMetricMinute(node_id=self.node.pk, minute=m, samples=0, series={})
                    for m in minutes
                ],
                ignore_conflicts=True,
            )
            rows = list(
                NodeMetricMinute.objects.select_for_update()
                .filter(node_id=self.node.pk, minute__in=minutes)
                .order_by("minute")
            )
            for row in rows:
                row.samples, row.series = merge_minutes(row.samples, row.series, *parts[row.minute])
            NodeMetricMinute.objects.bulk_update(rows, ["samples", "series"])
        return len(rows)
