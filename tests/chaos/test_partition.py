"""A node cut off from the console (its link down in its own network namespace)."""

from __future__ import annotations

import os
import time

from tests.chaos import stack
from tests.chaos.conftest import GRACE_S
from tests.chaos.test_console_outages import warm_up

PARTITION_S = stack.env_seconds("HANGAR_CHAOS_PARTITION_S", 15, 30)
SWEEP_S = 5  # beat's inventory.mark_offline_nodes


def engine_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_partitioned_node(chaos, agent_run, record):
    """Offline within the grace period; after the heal its buffered samples arrive, and
    its worker is the same process: not restarted, not duplicated elsewhere."""
    far = chaos.agents["b"]
    with agent_run:
        warm_up(chaos)
        before = chaos.workers_of(chaos.far_deployment)
        assert len(before) == 1 and before[0][2] == "ready", before
        started = time.time()
        chaos.namespace.cut()
        try:
            offline_at = stack.wait_until(
                lambda: chaos.node_state_of(far) == "offline",
                GRACE_S + SWEEP_S + 3,
                "the partitioned node offline within its grace period and one sweep",
            )
            offline_in = round(offline_at - started, 1)
        except AssertionError:
            offline_in = None
        time.sleep(max(0.0, started + PARTITION_S - time.time()))  # the rest of the cut
        during = chaos.workers_of(chaos.far_deployment)
        chaos.namespace.heal()
        healed = time.time()
        online_at = chaos.wait_online(far, 90)
        delivered_at = stack.wait_until(
            lambda: chaos.telemetry_flowing(far, healed), 90, "the node's samples after the heal"
        )
        after = chaos.workers_of(chaos.far_deployment)
        same_process = engine_alive(before[0][1])
        counts = agent_run.finish()
    lost = counts["b"]["lost"]
    record(
        partition_s=round(healed - started, 1),
        grace_s=GRACE_S,
        offline_after_s=offline_in,
        recovery_s=round(max(online_at, delivered_at) - healed, 1),
        samples=counts,
        samples_lost=sum(c["lost"] for c in counts.values()),
        duplicates=sum(c["duplicates"] for c in counts.values()),
        workers_before=before,
        workers_during=during,
        workers_after=after,
        lost_counter_b=chaos.lost_counter(far),
    )
    checks = [
        record.check(
            f"offline within grace ({GRACE_S} s) + one sweep ({SWEEP_S} s)", offline_in is not None
        ),
        record.check("0 samples lost after the heal", lost == 0),
        record.check("no sample stored twice", counts["b"]["duplicates"] == 0),
        record.check(
            "its worker not restarted (same pid, same run)",
            [(w[0], w[1], w[3]) for w in after] == [(w[0], w[1], w[3]) for w in before]
            and same_process,
        ),
        record.check("no duplicate worker", len(after) == 1 and len(during) == 1),
    ]
    assert all(checks), record.entry
