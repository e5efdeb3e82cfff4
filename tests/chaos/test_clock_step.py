"""A node's clock stepped by minutes, forward and then back (a wrong RTC, then NTP)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from tests.chaos import stack
from tests.chaos.test_console_outages import warm_up

STEP_S = stack.env_seconds("HANGAR_CHAOS_CLOCK_STEP_S", 300, 300)
HOLD_S = stack.env_seconds("HANGAR_CHAOS_CLOCK_HOLD_S", 10, 30)
FOR_S = int(stack.env_seconds("HANGAR_CHAOS_ALERT_FOR_S", 30, 90))


def test_node_clock_stepped(chaos, agent_run, record):
    """Samples land in the minutes of the node's own timestamps, none lost or doubled;
    the node stays online (the console judges liveness by its own clock); an alert's
    duration is not cut short by the step."""
    from apps.alerts.models import Alert, AlertRule
    from apps.telemetry.models import NodeMetricMinute

    near = chaos.agents["a"]
    offset = chaos.root / "clock-offset-a"
    offset.write_text("0")
    near.env["HANGAR_AGENT_CLOCK_OFFSET_FILE"] = str(offset)
    rule = AlertRule.objects.create(
        name="chaos-clock",
        metric="host.cpu_percent",
        scope="node",
        node_id=near.node_id,
        comparison=">=",
        threshold=0,
        for_seconds=FOR_S,
    )
    try:
        with agent_run:
            warm_up(chaos)
            stack.wait_until(
                lambda: Alert.objects.filter(rule=rule, state="pending").exists(),
                30,
                "the rule's alert pending",
            )
            pending_since = time.time()
            started = time.time()
            offset.write_text(str(STEP_S))  # forward: minutes ahead
            stack.wait_until(lambda: chaos.latest_seq(near) > 0, 5, "sampling")
            time.sleep(HOLD_S)
            fired_early = Alert.objects.filter(rule=rule, state="firing").exists()
            online_ahead = chaos.node_state_of(near) == "online"
            ahead_minute = datetime.fromtimestamp((time.time() + STEP_S) // 60 * 60, tz=UTC)
            offset.write_text("0")  # and back, as NTP would
            stepped_back = time.time()
            time.sleep(HOLD_S)
            online_back = chaos.node_state_of(near) == "online"
            try:
                fired_at = stack.wait_until(
                    lambda: Alert.objects.filter(rule=rule, state="firing").exists(),
                    FOR_S + 30,
                    "the alert firing once its duration passed",
                )
            except AssertionError:
                fired_at = None
            counts = agent_run.finish()
        ahead_rows = NodeMetricMinute.objects.filter(
            node_id=near.node_id, minute__gte=ahead_minute.replace(second=0)
        ).count()
    finally:
        near.env.pop("HANGAR_AGENT_CLOCK_OFFSET_FILE", None)
        Alert.objects.filter(rule=rule).delete()
        rule.delete()
    fired_after = None if fired_at is None else round(fired_at - pending_since, 1)
    record(
        step_s=STEP_S,
        hold_s=HOLD_S,
        alert_for_s=FOR_S,
        alert_fired_after_s=fired_after,
        fired_before_duration=fired_early,
        rows_in_stepped_minutes=ahead_rows,
        samples=counts,
        samples_lost=sum(c["lost"] for c in counts.values()),
        duplicates=sum(c["duplicates"] for c in counts.values()),
        duration_s=round(stepped_back - started, 1),
    )
    checks = [
        record.check("samples stored under the node's own (stepped) minutes", ahead_rows > 0),
        record.check("no sample lost", counts["a"]["lost"] == 0),
        record.check("no sample stored twice", counts["a"]["duplicates"] == 0),
        record.check("the node stayed online", online_ahead and online_back),
        record.check("the alert did not fire before its duration", not fired_early),
        record.check("the alert fired once its duration passed", fired_at is not None),
    ]
    assert all(checks), record.entry
