"""Alert operations: evaluate the stream, write transitions, notify, acknowledge, silence.

The hot path (`evaluate_samples`, called once per agent message by
AgentConsumer.take_samples) works on in-memory state and cached rules; it
touches the database only when a series changes state. Each transition is one
transaction: the alert row, its audit event (actor system), the delivery rows
of its receivers; the Celery deliveries and the browser push follow on commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from apps.alerts.api.serializers import AlertSerializer
from apps.alerts.evaluation import (
    FIRING,
    PENDING,
    RESOLVED,
    Change,
    CompiledRule,
    NodeEvaluator,
    RuleSet,
    SeriesState,
)
from apps.alerts.models import Alert, AlertRule, Delivery, Receiver, Silence
from apps.alerts.series import NODE_OFFLINE, alert_series
from apps.audit import recorder
from apps.core import outbox
from apps.core.i18n import lazy_message
from apps.inventory.models import Node, NodeState
from apps.telemetry.live import cluster_group

log = logging.getLogger(__name__)
# Rules are cached per process; an edit reaches the stream within this many seconds.
RULE_CACHE_SECONDS = 5.0
# Names evaluated outside the sample stream (they hold state only in the database).
OFF_STREAM = (NODE_OFFLINE,)


# --- the rule cache --------------------------------------------------------------


class RuleCache:
    def __init__(self, ttl: float = RULE_CACHE_SECONDS):
        self.ttl = ttl
        self.ruleset: RuleSet | None = None
        self.expires = 0.0
        self.reloading = False
        self._version = 0

    def fresh(self, now: float) -> RuleSet | None:
        return self.ruleset if now < self.expires else None

    def reload(self) -> RuleSet:
        enabled = list(AlertRule.objects.filter(enabled=True))
        workers = workers_by_deployment({r.deployment_id for r in enabled if r.deployment_id})
        rules = tuple(compile_rule(r, workers) for r in enabled)
        current = self.ruleset
        if current is None or current.rules != rules:
            self._version += 1
            current = RuleSet(rules, self._version)
        self.ruleset, self.expires = current, time.monotonic() + self.ttl
        return current

    def get(self) -> RuleSet:
        return self.fresh(time.monotonic()) or self.reload()

    def clear(self) -> None:
        self.ruleset, self.expires = None, 0.0


def workers_by_deployment(deployment_ids: set[int]) -> dict[int, frozenset[int]]:
    """Worker ids of each deployment (for deployment-scoped rules): one query.

    Read across the rule's own foreign key: deployments sits above alerts in the
    import map (it feeds crash runs and availability to evaluate_values)."""
    found: dict[int, set[int]] = {d: set() for d in deployment_ids}
    if deployment_ids:
        rows = AlertRule.objects.filter(deployment_id__in=deployment_ids)
        pairs = rows.values_list("deployment_id", "deployment__workers").distinct()
        for deployment_id, worker_id in pairs:
            if worker_id is not None:
                found[deployment_id].add(worker_id)
    return {d: frozenset(ids) for d, ids in found.items()}


def compile_rule(rule: AlertRule, workers: dict[int, frozenset[int]] | None = None) -> CompiledRule:
    if rule.deployment_id is not None and workers is None:
        workers = workers_by_deployment({rule.deployment_id})
    return CompiledRule.build(
        id=rule.pk,
        name=rule.name,
        metric=rule.metric,
        comparison=rule.comparison,
        threshold=rule.threshold,
        clear_threshold=rule.clear_threshold,
        for_seconds=rule.for_seconds,
        severity=rule.severity,
        cluster_id=rule.cluster_id,
        node_id=rule.node_id,
        deployment_id=rule.deployment_id,
        worker_ids=None if rule.deployment_id is None else workers[rule.deployment_id],
    )


rules = RuleCache()
_reloads: set[asyncio.Task] = set()
# One evaluator per node streaming into this process (an agent has one socket).
_evaluators: dict[int, NodeEvaluator] = {}


# --- evaluation ------------------------------------------------------------------


def open_states(node, ruleset: RuleSet) -> dict[tuple[int, str], SeriesState]:
    """The node's open alerts as evaluator state: a restarted console carries on."""
    return open_states_of([node.pk], ruleset)[node.pk]


def open_states_of(
    node_ids: list[int], ruleset: RuleSet
) -> dict[int, dict[tuple[int, str], SeriesState]]:
    """open_states of several nodes in one query."""
    open_alerts = Alert.objects.filter(node_id__in=node_ids)
    return _states_by(open_alerts, "node_id", node_ids, ruleset)


def _states_by(alerts, owner: str, owner_ids: list[int], ruleset: RuleSet) -> dict:
    """The open ones of `alerts` as evaluator state, per `owner` (node_id or deployment_id)."""
    conditions = {r.id: r.condition for r in ruleset.rules}
    found: dict[int, dict[tuple[int, str], SeriesState]] = {n: {} for n in owner_ids}
    rows = alerts.filter(state__in=Alert.OPEN, rule__isnull=False).values_list(
        owner, "rule_id", "series", "state", "started_at"
    )
    for owner_id, rule_id, series, state, started in rows:
        if rule_id in conditions:
            found[owner_id][(rule_id, series)] = SeriesState(
                started.timestamp(), PENDING if state == PENDING else FIRING, conditions[rule_id]
            )
    return found


def forget_evaluator(node_id: int) -> None:
    """The node's agent disconnected: its next socket may be in another process,
    which then owns the alerts; state kept here would be stale on its return."""
    _evaluators.pop(node_id, None)


def _evaluator_for(node, ruleset: RuleSet) -> NodeEvaluator:
    evaluator = _evaluators.get(node.pk)
    if evaluator is None or evaluator.cluster_id != node.cluster_id:
        evaluator = NodeEvaluator(node.pk, node.cluster_id, open_states(node, ruleset))
        _evaluators[node.pk] = evaluator
    return evaluator


async def current_rules() -> RuleSet:
    """The cached rules; when they are stale, reload in the background and use them
    meanwhile, so no sample waits on the database (and 1,000 sockets do not all
    reload at once)."""
    ruleset = rules.ruleset
    if ruleset is None:
        return await database_sync_to_async(rules.reload)()
    if rules.fresh(time.monotonic()) is None and not rules.reloading:
        rules.reloading = True
        task = asyncio.get_running_loop().create_task(_reload_rules())
        _reloads.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(_reloads.discard)
    return ruleset


async def _reload_rules() -> None:
    try:
        await database_sync_to_async(rules.reload)()
    except Exception as exc:
        # The database away, most likely: judge with the rules in hand meanwhile,
        # and try again after the usual wait rather than on every sample.
        rules.expires = time.monotonic() + rules.ttl
        log.warning(
            "alert rules not reloaded (%s); evaluating with the cached ones",
            outbox.first_line(exc),
        )
    finally:
        rules.reloading = False


async def evaluate_samples(node, samples: list[dict]) -> None:
    """Evaluate validated samples (oldest first) of `node`; write only transitions.

    A failure here is logged, never raised: alerting must not stop ingest."""
    try:
        await _evaluate_samples(node, samples)
    except Exception:
        log.exception("alert evaluation failed for node %s", node.pk)


async def _evaluate_samples(node, samples: list[dict]) -> None:
    ruleset = await current_rules()
    if not ruleset.rules:
        return
    evaluator = _evaluators.get(node.pk)
    if evaluator is None or evaluator.cluster_id != node.cluster_id:
        evaluator = await database_sync_to_async(_evaluator_for)(node, ruleset)
    changes: list[Change] = []
    for sample in samples:
        changes += evaluator.observe(
            alert_series(sample), sample["ts"], ruleset, mono=sample.get("mono")
        )
    if changes:
        # The evaluator has moved on: these transitions exist only here, so while
        # the database is away they are kept for it (apps/core/outbox.py).
        records = [change_record(c) for c in changes]
        await database_sync_to_async(write_stream_changes)(node_id=node.pk, changes=records)


def change_record(change: Change) -> dict:
    """A transition as JSON, its rule by id (the rule's row names it when written)."""
    return {
        "kind": change.kind,
        "rule": change.rule.id,
        "series": change.series,
        "value": change.value,
        "ts": change.ts,
        "since": change.since,
        "was": change.was,
    }


@outbox.kept("alerts.transitions")
def write_stream_changes(node_id: int, changes: list[dict]) -> None:
    """Write a node's transitions judged on the stream (change_record's), in order."""
    node = Node.objects.filter(pk=node_id).first()
    if node is None:
        return
    rows = {r.pk: r for r in AlertRule.objects.filter(pk__in={c["rule"] for c in changes})}
    compiled = {pk: compile_rule(rule) for pk, rule in rows.items()}
    apply_changes(
        node,
        [
            Change(**{**c, "rule": compiled[c["rule"]]})
            for c in changes
            if c["rule"] in compiled  # a rule deleted meanwhile resolved its alerts then
        ],
    )


def evaluate_values(
    node, values: dict[str, float], ts: float | None = None, details: dict[str, str] | None = None
) -> list[Change]:
    """Evaluate names from outside the sample stream (node.offline, worker.<id>.crashloop).

    Their state lives in the database only: each call starts from the node's open
    alerts, so any process (beat, Celery, Daphne) may call it.
    """
    return evaluate_values_of_nodes([(node, values, details or {})], ts)[node.pk]


def evaluate_values_of_nodes(items, ts: float | None = None) -> dict[int, list[Change]]:
    """evaluate_values for many nodes, [(node, values, details)], reading their open
    alerts in one query (beat judges every worker's availability at once)."""
    ruleset = rules.get()
    states = open_states_of([node.pk for node, _, _ in items], ruleset)
    when = ts or time.time()
    done = {}
    for node, values, details in items:
        evaluator = NodeEvaluator(node.pk, node.cluster_id, states[node.pk])
        done[node.pk] = evaluator.observe(values, when, ruleset)
        apply_changes(node, done[node.pk], details)
    return done


def evaluate_deployment_values(items, ts: float | None = None) -> dict[int, list[Change]]:
    """A deployment's own series (deployment.<id>.http_5xx_rate, ...: the gateway's
    request metrics, apps/gateway/traffic.py), [(deployment, values, details)].

    Like evaluate_values, the state lives in the database: each call starts from
    the deployments' open alerts, which have a deployment and no node."""
    ruleset = rules.get()
    if not ruleset.rules:
        return {deployment.pk: [] for deployment, _, _ in items}
    ids = [deployment.pk for deployment, _, _ in items]
    own = Alert.objects.filter(deployment_id__in=ids, node__isnull=True)
    states = _states_by(own, "deployment_id", ids, ruleset)
    when = ts or time.time()
    done = {}
    for deployment, values, details in items:
        evaluator = NodeEvaluator(None, deployment.cluster_id, states[deployment.pk])
        done[deployment.pk] = evaluator.observe(values, when, ruleset)
        apply_changes(None, done[deployment.pk], details, deployment=deployment)
    return done


def node_state_changed(node, old_state: str) -> None:
    """inventory.transition_node's hook (apps.alerts.receivers): evaluate node.offline
    rules on entering or leaving it."""
    if NodeState.OFFLINE not in (old_state, node.state):
        return
    if not any(r.metric == NODE_OFFLINE for r in rules.get().rules):
        return
    evaluate_values(node, {NODE_OFFLINE: 1.0 if node.state == NodeState.OFFLINE else 0.0})


# --- transitions -----------------------------------------------------------------


def _when(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def apply_changes(
    node, changes: Iterable[Change], details: dict[str, str] | None = None, deployment=None
) -> list[Alert]:
    """Write each transition: alert row, audit event, deliveries; push after commit.

    The series are the node's, or with node None the deployment's own."""
    written = []
    for change in changes:
        try:
            with transaction.atomic():
                detail = (details or {}).get(change.series, "")
                alert = _apply(node, change, detail, deployment)
        except IntegrityError:
            continue  # another process opened the same alert first; theirs stands
        if alert is not None:
            written.append(alert)
    return written


def _apply(node, change: Change, detail: str = "", deployment=None) -> Alert | None:
    rule = change.rule
    alert = (
        Alert.objects.select_for_update()
        .filter(rule_id=rule.id, node=node, series=change.series, state__in=Alert.OPEN)
        .first()
    )
    if change.kind == RESOLVED:
        if alert is None:
            return None
        before = alert.state
        alert.state, alert.value = Alert.State.RESOLVED, change.value
        alert.resolved_at = _when(change.ts)
        alert.resolved_reason = "condition cleared"
        alert.save()
        _transitioned(alert, before, notify=alert.notified_at is not None)
        return alert
    if alert is None:
        if not AlertRule.objects.filter(pk=rule.id).exists():
            return None  # deleted since the cache was loaded
        alert = Alert(
            rule_id=rule.id,
            rule_name=rule.name,
            series=change.series,
            node=node,
            deployment=deployment,
            cluster_id=(node or deployment).cluster_id,
            severity=rule.severity,
            comparison=rule.comparison,
            threshold=rule.threshold,
            started_at=_when(change.since),
            state=Alert.State.PENDING,
            value=change.value,
        )
        before = None
    elif change.kind == FIRING and alert.state == Alert.State.PENDING:
        before = alert.state
    else:
        return None  # already in that state (e.g. two processes saw the same crossing)
    alert.value = change.value
    if detail:
        alert.detail = detail[:500]
    if change.kind == FIRING:
        alert.state, alert.fired_at = Alert.State.FIRING, _when(change.ts)
    alert.save()
    _transitioned(alert, before, notify=change.kind == FIRING)
    return alert


def _transitioned(alert: Alert, before: str | None, notify: bool, person=None) -> None:
    changes = {
        "state": [before, alert.state],
        "series": alert.series,
        "value": alert.value,
        "rule": alert.rule_name,
    }
    if person is None:
        recorder.record(f"alerts.{alert.state}", target=alert, changes=changes)
    else:
        recorder.describe(target=alert, changes={**changes, "note": alert.note})
    if notify:
        notify_receivers(alert, alert.state)
    transaction.on_commit(lambda: publish(alert))


def acknowledge(alert: Alert, user, note: str) -> Alert:
    """An operator takes the alert on: who, when, and their note (audited on the request)."""
    with transaction.atomic():
        alert = Alert.objects.select_for_update().get(pk=alert.pk)
        if alert.state != Alert.State.FIRING:
            raise ValueError(
                lazy_message(
                    _("Only a firing alert can be acknowledged; this one is %(state)s."),
                    state=alert.state,
                )
            )
        alert.state = Alert.State.ACKNOWLEDGED
        alert.acknowledged_at, alert.acknowledged_by, alert.note = timezone.now(), user, note
        alert.save()
        _transitioned(alert, Alert.State.FIRING, notify=alert.notified_at is not None, person=user)
    return alert


def resolve_rule_alerts(rule: AlertRule, reason: str) -> int:
    """Close the open alerts of a rule that was disabled, changed or deleted."""
    return resolve_alerts(Alert.objects.filter(rule=rule), reason)


def resolve_alerts(alerts, reason: str) -> int:
    """Close the open ones of `alerts` for a reason other than their condition clearing."""
    count = 0
    for pk in list(alerts.filter(state__in=Alert.OPEN).values_list("pk", flat=True)):
        with transaction.atomic():
            # Re-read under its lock: an acknowledgement or a notification since
            # the list was read must not be written back as it was then.
            alert = Alert.objects.select_for_update().filter(pk=pk, state__in=Alert.OPEN).first()
            if alert is None:
                continue  # resolved meanwhile
            before = alert.state
            alert.state, alert.resolved_at = Alert.State.RESOLVED, timezone.now()
            alert.resolved_reason = reason[:200]
            alert.save()
            _transitioned(alert, before, notify=alert.notified_at is not None)
        count += 1
    return count


# Changing any of these makes it another condition: its open alerts are resolved.
CONDITION_FIELDS = ("metric", "comparison", "scope", "cluster", "node", "deployment")


def update_rule(serializer) -> AlertRule:
    """Save a validated AlertRuleSerializer for an existing rule (the API and the page).

    A rule that is disabled or becomes another condition resolves its open alerts;
    the stream picks the edit up when the rule cache expires (RULE_CACHE_SECONDS)."""
    rule = serializer.instance
    before = {f: getattr(rule, f) for f in (*CONDITION_FIELDS, "enabled")}
    with transaction.atomic():
        rule = serializer.save()
        if not rule.enabled and before["enabled"]:
            resolve_rule_alerts(rule, "rule disabled")
        elif any(before[f] != getattr(rule, f) for f in CONDITION_FIELDS):
            resolve_rule_alerts(rule, "rule changed")
    return rule


def delete_rule(rule: AlertRule) -> None:
    """Resolve the rule's open alerts, then delete it."""
    with transaction.atomic():
        resolve_rule_alerts(rule, "rule deleted")
        rule.delete()


# --- silences and notifications -----------------------------------------------------


def active_silences(now: datetime | None = None):
    now = now or timezone.now()
    return Silence.objects.filter(starts_at__lte=now, ends_at__gt=now)


def silenced_by(alert: Alert, now: datetime | None = None) -> Silence | None:
    return next((s for s in active_silences(now) if s.matches(alert)), None)


def create_silence(serializer, user) -> Silence:
    """Save a validated SilenceSerializer (the caller has checked the cluster)."""
    recorder.describe(action="alerts.silence")
    return serializer.save(created_by=user)


def expire_silence(silence: Silence) -> Silence:
    """End the silence now (it stays listed); held-back firing alerts are then sent."""
    now = timezone.now()
    if silence.ends_at > now:
        recorder.describe(
            action="alerts.silence.expire",
            target=silence,
            changes={"ends_at": [silence.ends_at.isoformat(), now.isoformat()]},
        )
        silence.ends_at = max(now, silence.starts_at)
        silence.save(update_fields=["ends_at"])
    return silence


def notify_receivers(alert: Alert, event: str) -> list[Delivery]:
    """One delivery per enabled receiver of the rule, unless a silence holds a new firing back.

    Called inside the transition's transaction; the Celery tasks start on commit.
    """
    if event == Alert.State.FIRING:
        if silenced_by(alert) is not None:
            return []
        alert.notified_at = timezone.now()
        alert.save(update_fields=["notified_at"])
    receivers = Receiver.objects.filter(rules=alert.rule_id, enabled=True) if alert.rule_id else []
    from apps.alerts.notify import payload

    deliveries = [
        Delivery.objects.create(alert=alert, receiver=r, event=event, payload=payload(alert, event))
        for r in receivers
    ]
    if deliveries:
        from apps.alerts.tasks import deliver

        ids = [d.pk for d in deliveries]
        transaction.on_commit(lambda: [deliver.delay(i) for i in ids])
    return deliveries


@outbox.kept("alerts.delivery-outcome")
def record_outcome(
    delivery_id: int,
    attempts: int,
    state: str,
    last_error: str | None = None,
    sent_at: float | None = None,
) -> None:
    """Store how an attempt went. Never lowers the attempts: a kept outcome may be
    written after a later attempt's."""
    delivery = Delivery.objects.select_for_update().filter(pk=delivery_id).first()
    if delivery is None or delivery.state == Delivery.State.SENT:
        return
    fields = ["attempts", "state"]
    delivery.attempts = max(delivery.attempts, attempts)
    delivery.state = state
    if last_error is not None:
        delivery.last_error = last_error
        fields.append("last_error")
    if sent_at is not None:
        delivery.sent_at = datetime.fromtimestamp(sent_at, tz=UTC)
        fields.append("sent_at")
    delivery.save(update_fields=fields)


def publish(alert: Alert) -> None:
    """The console's own receiver: the live alert list in every subscribed browser."""
    async_to_sync(get_channel_layer().group_send)(
        cluster_group(alert.cluster_id),
        {
            "type": "alert.update",
            "cluster": alert.cluster_id,
            "node": alert.node_id,
            "alert": AlertSerializer(alert).data,
        },
    )


def sweep(now: datetime | None = None) -> dict[str, int]:
    """Beat, every few seconds: notify firing alerts whose silence ended, and promote
    pending node.offline alerts whose duration passed (no sample will arrive for them)."""
    now = now or timezone.now()
    released = 0
    held = Alert.objects.filter(state=Alert.State.FIRING, notified_at__isnull=True)
    for alert in held.select_related("cluster", "node"):
        if silenced_by(alert, now) is None:
            with transaction.atomic():
                locked = Alert.objects.select_for_update().get(pk=alert.pk)
                if locked.state == Alert.State.FIRING and locked.notified_at is None:
                    notify_receivers(locked, Alert.State.FIRING)
                    released += 1
    promoted = 0
    waiting = Alert.objects.filter(state=Alert.State.PENDING, series__in=OFF_STREAM)
    for node in Node.objects.filter(pk__in=waiting.values("node_id")):
        offline = 1.0 if node.state == NodeState.OFFLINE else 0.0
        promoted += len(evaluate_values(node, {NODE_OFFLINE: offline}, now.timestamp()))
    return {"released": released, "promoted": promoted}


def firing_counts(alerts) -> list[tuple[str, str, int]]:
    """(severity, rule name, count) of the firing and acknowledged among `alerts`, for /metrics."""
    from django.db.models import Count

    rows = (
        alerts.filter(state__in=(Alert.State.FIRING, Alert.State.ACKNOWLEDGED))
        .values_list("severity", "rule_name")
        .annotate(n=Count("id"))
        .order_by("severity", "rule_name")
    )
    return list(rows)
