"""The in-memory evaluator: transitions only, durations on the node's clocks, hysteresis."""

from apps.alerts.evaluation import (
    FIRING,
    PENDING,
    RESOLVED,
    CompiledRule,
    NodeEvaluator,
    RuleSet,
    compile_pattern,
)
from apps.alerts.series import alert_series
from tests.telemetry.conftest import gpu_sample, sample


def rule(id=1, **fields) -> CompiledRule:
    defaults = {
        "name": "hot",
        "metric": "gpu.*.temperature",
        "comparison": ">",
        "threshold": 85.0,
        "for_seconds": 0,
        "severity": "critical",
    }
    return CompiledRule.build(id=id, **{**defaults, **fields})


def run(evaluator, ruleset, values, series="gpu.0.temperature", start=0.0, step=1.0):
    """Feed values one per `step` seconds; return [(kind, ts)] of the transitions."""
    seen = []
    for i, value in enumerate(values):
        ts = start + i * step
        seen += [(c.kind, ts) for c in evaluator.observe({series: value}, ts, ruleset)]
    return seen


def test_a_star_stands_for_exactly_one_part():
    pattern = compile_pattern("gpu.*.temperature")
    assert pattern.fullmatch("gpu.3.temperature")
    assert not pattern.fullmatch("gpu.3.4.temperature")
    assert not pattern.fullmatch("gpu.3.temperature_max")
    assert compile_pattern("host.cpu_percent").fullmatch("host.cpu_percent")
    assert not compile_pattern("host.cpu_percent").fullmatch("hostXcpu_percent")


def test_a_condition_is_pending_until_it_held_for_its_duration_then_fires_once():
    ruleset = RuleSet((rule(for_seconds=3),), 1)
    evaluator = NodeEvaluator(1, 1)
    assert run(evaluator, ruleset, [80, 90, 91, 92, 93, 94, 95]) == [(PENDING, 1.0), (FIRING, 4.0)]


def stepped(evaluator, ruleset, values, step_at, step_by, series="gpu.0.temperature"):
    """One sample a second, the node's wall clock stepped by `step_by` before sample
    `step_at`; its monotonic clock (SAMPLE.mono) runs on. [(kind, real second)]."""
    seen = []
    for i, value in enumerate(values):
        ts = 1_000.0 + i + (step_by if i >= step_at else 0.0)
        changes = evaluator.observe({series: value}, ts, ruleset, mono=50.0 + i)
        seen += [(c.kind, i) for c in changes]
    return seen


def test_a_clock_stepped_forward_does_not_make_a_pending_alert_fire_early():
    ruleset = RuleSet((rule(for_seconds=5),), 1)
    seen = stepped(NodeEvaluator(1, 1), ruleset, [90] * 8, step_at=2, step_by=300.0)
    assert seen == [(PENDING, 0), (FIRING, 5)]


def test_a_clock_stepped_back_does_not_hold_a_pending_alert_back():
    ruleset = RuleSet((rule(for_seconds=5),), 1)
    seen = stepped(NodeEvaluator(1, 1), ruleset, [90] * 8, step_at=2, step_by=-600.0)
    assert seen == [(PENDING, 0), (FIRING, 5)]


def test_without_a_monotonic_clock_durations_fall_back_to_the_timestamps():
    ruleset = RuleSet((rule(for_seconds=5),), 1)
    evaluator = NodeEvaluator(1, 1)
    # An older agent: no mono. Its stepped clock still decides, as before.
    assert evaluator.observe({"gpu.0.temperature": 90}, 1_000.0, ruleset)[0].kind == PENDING
    assert evaluator.observe({"gpu.0.temperature": 90}, 1_300.0, ruleset)[0].kind == FIRING
    # A reboot sets the monotonic clock back: the timestamps decide then too.
    rebooted = NodeEvaluator(1, 1)
    rebooted.observe({"gpu.0.temperature": 90}, 1_000.0, ruleset, mono=900.0)
    assert rebooted.observe({"gpu.0.temperature": 90}, 1_002.0, ruleset, mono=3.0) == []
    changes = rebooted.observe({"gpu.0.temperature": 90}, 1_006.0, ruleset, mono=7.0)
    assert [c.kind for c in changes] == [FIRING]


def test_a_condition_that_clears_while_pending_never_fires():
    ruleset = RuleSet((rule(for_seconds=5),), 1)
    evaluator = NodeEvaluator(1, 1)
    assert run(evaluator, ruleset, [90, 91, 70, 72]) == [(PENDING, 0.0), (RESOLVED, 2.0)]


def test_values_oscillating_inside_the_hysteresis_band_do_not_flap():
    ruleset = RuleSet((rule(clear_threshold=80.0),), 1)
    evaluator = NodeEvaluator(1, 1)
    hovering = [86, 84, 86, 83, 85.5, 80.5, 86, 81, 85]
    assert run(evaluator, ruleset, [*hovering, 79.9]) == [(FIRING, 0.0), (RESOLVED, 9.0)]


def test_without_a_clear_threshold_the_value_at_the_threshold_keeps_the_state():
    ruleset = RuleSet((rule(),), 1)
    evaluator = NodeEvaluator(1, 1)
    assert run(evaluator, ruleset, [85, 86, 85, 85, 84.9]) == [(FIRING, 1.0), (RESOLVED, 4.0)]


def test_below_comparisons_clear_upwards():
    ruleset = RuleSet(
        (
            rule(
                metric="worker.*.availability",
                comparison="<",
                threshold=99.9,
                clear_threshold=99.95,
            ),
        ),
        1,
    )
    evaluator = NodeEvaluator(1, 1)
    seen = run(evaluator, ruleset, [100, 99.5, 99.92, 99.96], series="worker.4.availability")
    assert seen == [(FIRING, 1.0), (RESOLVED, 3.0)]


def test_rules_apply_only_within_their_scope():
    here, elsewhere = rule(id=1, cluster_id=7), rule(id=2, name="other", cluster_id=8)
    only_node = rule(id=3, name="node", node_id=5)
    ruleset = RuleSet((here, elsewhere, only_node), 1)
    evaluator = NodeEvaluator(5, 7)
    changes = evaluator.observe({"gpu.0.temperature": 99.0}, 0.0, ruleset)
    assert sorted(c.rule.id for c in changes) == [1, 3]
    other_node = NodeEvaluator(6, 7)
    assert [c.rule.id for c in other_node.observe({"gpu.0.temperature": 99.0}, 0.0, ruleset)] == [1]


def test_a_deployment_rule_judges_only_its_own_workers_series():
    slow = rule(
        id=4,
        name="slow chat",
        metric="worker.*.p99_ms",
        threshold=200.0,
        deployment_id=9,
        worker_ids=frozenset({11, 12}),
    )
    anywhere = rule(id=5, name="slow anything", metric="worker.*.p99_ms", threshold=500.0)
    ruleset = RuleSet((slow, anywhere), 1)
    evaluator = NodeEvaluator(5, 7)
    values = {"worker.11.p99_ms": 300.0, "worker.13.p99_ms": 300.0, "worker.12.p99_ms": 900.0}
    changes = evaluator.observe(values, 0.0, ruleset)
    assert sorted((c.rule.id, c.series) for c in changes) == [
        (4, "worker.11.p99_ms"),
        (4, "worker.12.p99_ms"),
        (5, "worker.12.p99_ms"),
    ]
    assert not slow.covers("gpu.11.temperature") and not slow.covers("worker.x.p99_ms")
    # Scaling the deployment changes the rule (a reload), not its condition.
    scaled = rule(
        id=4,
        name="slow chat",
        metric="worker.*.p99_ms",
        threshold=200.0,
        deployment_id=9,
        worker_ids=frozenset({11, 12, 13}),
    )
    assert scaled != slow and scaled.condition == slow.condition
    changes = evaluator.observe(values, 1.0, RuleSet((scaled, anywhere), 2))
    assert [(c.rule.id, c.series) for c in changes] == [(4, "worker.13.p99_ms")]


def test_each_gpu_is_its_own_series():
    ruleset = RuleSet((rule(),), 1)
    evaluator = NodeEvaluator(1, 1)
    values = alert_series(sample(1, [gpu_sample(0, temperature=90), gpu_sample(1, temperature=95)]))
    changes = evaluator.observe(values, 0.0, ruleset)
    assert sorted(c.series for c in changes) == ["gpu.0.temperature", "gpu.1.temperature"]
    assert evaluator.observe(values, 1.0, ruleset) == []


def test_a_changed_condition_starts_over_but_a_changed_threshold_carries_on():
    evaluator = NodeEvaluator(1, 1)
    assert run(evaluator, RuleSet((rule(),), 1), [90]) == [(FIRING, 0.0)]
    assert run(evaluator, RuleSet((rule(threshold=88.0),), 2), [90], start=1) == []
    # Another metric pattern is another condition (the API resolved the old alert):
    # the state starts over, so a value still above raises a new alert.
    changed = RuleSet((rule(metric="gpu.*.temp*"),), 3)
    assert [c.kind for c in evaluator.observe({"gpu.0.temperature": 90.0}, 2.0, changed)] == [
        FIRING
    ]


def test_derived_series_include_memory_percent_errors_and_worker_metrics():
    raw = sample(1, [gpu_sample(0, memory_used=72_000_000_000, xid_errors=2)])
    raw["workers"] = [{"worker_id": 41, "p99_ms": 250.0, "error_rate": 0.01}]
    values = alert_series(raw)
    assert values["gpu.0.memory_used_percent"] == 90.0
    assert values["gpu.0.xid_errors"] == 2.0
    assert values["gpu.0.ecc_errors"] == 0.0
    assert values["host.memory_used_percent"] == 12.5
    assert values["worker.41.p99_ms"] == 250.0
    assert values["worker.41.error_rate"] == 0.01
    assert values["gpu.0.temperature"] == 40.0
