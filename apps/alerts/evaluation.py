"""Rule evaluation on the live stream, in memory: no database on the hot path.

One `NodeEvaluator` per node keeps, for every (rule, series) whose condition
holds, when it began and whether it fires yet. `observe()` returns only the
transitions (pending, firing, resolved); the caller writes those to the
database (apps/alerts/services.py). A sample that changes nothing costs a few
dict lookups and comparisons per matching series.

Hysteresis: a condition becomes active when the value crosses the threshold
and stays active until it crosses back past the clear threshold, so a value
hovering between the two never flaps.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass

PENDING = "pending"
FIRING = "firing"
RESOLVED = "resolved"

_ENTER = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
# Leaving the condition: strictly past the clear threshold, the other way.
_LEAVE = {">": operator.lt, ">=": operator.lt, "<": operator.gt, "<=": operator.gt}


def compile_pattern(metric: str) -> re.Pattern:
    """gpu.*.temperature -> a regex where * is one dotted part (gpu.3.temperature)."""
    return re.compile(r"[^.]+".join(re.escape(part) for part in metric.split("*")))


@dataclass(frozen=True, slots=True)
class CompiledRule:
    id: int
    name: str
    metric: str
    pattern: re.Pattern
    comparison: str
    threshold: float
    clear_threshold: float
    for_seconds: float
    severity: str
    cluster_id: int | None = None
    node_id: int | None = None
    deployment_id: int | None = None
    # A deployment rule watches the series of these workers only (worker.<id>.*);
    # the set is part of the rule, so scaling reloads the rule set.
    worker_ids: frozenset[int] | None = None

    @classmethod
    def build(cls, *, metric: str, clear_threshold: float | None = None, **fields):
        clear = fields["threshold"] if clear_threshold is None else clear_threshold
        return cls(metric=metric, pattern=compile_pattern(metric), clear_threshold=clear, **fields)

    @property
    def condition(self) -> tuple:
        """What makes two versions of a rule the same condition on the same series."""
        return (self.metric, self.comparison, self.cluster_id, self.node_id, self.deployment_id)

    def applies_to(self, node_id: int | None, cluster_id: int) -> bool:
        if self.node_id is not None:
            return self.node_id == node_id
        return self.cluster_id is None or self.cluster_id == cluster_id

    def covers(self, series: str) -> bool:
        """For a deployment rule: is this series one of its workers', or its own
        (deployment.<id>.*, the gateway's request metrics)?"""
        if self.deployment_id is None:
            return True
        kind, _, rest = series.partition(".")
        owner = rest.partition(".")[0]
        if not owner.isdigit():
            return False
        if kind == "deployment":
            return int(owner) == self.deployment_id
        return kind == "worker" and int(owner) in (self.worker_ids or ())

    def breached(self, value: float) -> bool:
        return _ENTER[self.comparison](value, self.threshold)

    def cleared(self, value: float) -> bool:
        return _LEAVE[self.comparison](value, self.clear_threshold)


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The enabled rules at one moment; `version` changes whenever they are reloaded."""

    rules: tuple[CompiledRule, ...]
    version: int


@dataclass(slots=True)
class SeriesState:
    since: float
    state: str  # PENDING or FIRING (an acknowledged alert still fires)
    condition: tuple | None = None  # the rule's condition when this began
    since_mono: float | None = None  # the node's monotonic clock then, if it sent one

    def elapsed(self, ts: float, mono: float | None) -> float:
        """How long the condition has held. By the node's monotonic clock where both
        samples carry it: `ts` is wall-clock time, which NTP or a person can step by
        minutes, and a step must not make a pending alert fire early (or never).
        Without it (older agents, states restored from the database), or when it went
        backwards (the host rebooted), by the timestamps."""
        if mono is not None and self.since_mono is not None and mono >= self.since_mono:
            return mono - self.since_mono
        return ts - self.since


@dataclass(frozen=True, slots=True)
class Change:
    kind: str  # PENDING, FIRING or RESOLVED
    rule: CompiledRule
    series: str
    value: float
    ts: float
    since: float
    was: str | None = None  # for RESOLVED: PENDING or FIRING


class NodeEvaluator:
    """The condition state of every (rule, series) of one node (or, with node_id
    None, of one deployment's own series: node-scoped rules then never apply)."""

    __slots__ = ("_matches", "_version", "cluster_id", "node_id", "states")

    def __init__(
        self,
        node_id: int | None,
        cluster_id: int,
        states: dict[tuple[int, str], SeriesState] | None = None,
    ):
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.states: dict[tuple[int, str], SeriesState] = states or {}
        self._matches: dict[str, tuple[CompiledRule, ...]] = {}
        self._version: int | None = None

    def _rules_for(self, series: str, ruleset: RuleSet) -> tuple[CompiledRule, ...]:
        found = self._matches.get(series)
        if found is None:
            found = tuple(
                r
                for r in ruleset.rules
                if r.applies_to(self.node_id, self.cluster_id)
                and r.pattern.fullmatch(series)
                and r.covers(series)
            )
            self._matches[series] = found
        return found

    def _adopt(self, ruleset: RuleSet) -> None:
        """A new rule set: recompute matches; forget the state of rules that are gone or
        now watch another condition (the API resolves their alerts: services.CONDITION_FIELDS).
        A changed threshold or duration keeps the state: the next sample is judged by it."""
        self._matches = {}
        self._version = ruleset.version
        conditions = {r.id: r.condition for r in ruleset.rules}
        for key in [k for k, s in self.states.items() if conditions.get(k[0]) != s.condition]:
            del self.states[key]

    def observe(
        self, values: dict[str, float], ts: float, ruleset: RuleSet, mono: float | None = None
    ) -> list[Change]:
        """`ts` the sample's wall-clock time, `mono` the node's monotonic clock (SAMPLE.mono)."""
        if ruleset.version != self._version:
            self._adopt(ruleset)
        changes: list[Change] = []
        for series, value in values.items():
            rules = self._rules_for(series, ruleset)
            for rule in rules:
                changes.extend(self._step(rule, series, value, ts, mono))
        return changes

    def _step(
        self, rule: CompiledRule, series: str, value: float, ts: float, mono: float | None
    ) -> Iterable[Change]:
        key = (rule.id, series)
        current = self.states.get(key)
        if current is None:
            if not rule.breached(value):
                return ()
            state = FIRING if rule.for_seconds <= 0 else PENDING
            self.states[key] = SeriesState(ts, state, rule.condition, mono)
            return (Change(state, rule, series, value, ts, ts),)
        if rule.cleared(value):
            del self.states[key]
            return (Change(RESOLVED, rule, series, value, ts, current.since, current.state),)
        if current.state == PENDING and current.elapsed(ts, mono) >= rule.for_seconds:
            current.state = FIRING
            return (Change(FIRING, rule, series, value, ts, current.since),)
        return ()
