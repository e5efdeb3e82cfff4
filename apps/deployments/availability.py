"""Worker availability: the percent of the last hour a worker was ready.

Every state a worker's agent reports is kept as a `WorkerStateChange` (a day of
them, plus each worker's latest). The beat task `deployments.judge_availability`
(every 30 s) works out, for each worker meant to run, the share of the window
it spent `ready`, stores it on the worker (API, deployment page) and feeds
`worker.<id>.availability` to the alert rules (shipped rule: below 99.9 %).

Decisions: the window starts at the worker's first `ready`, so loading a model
is not downtime (a new 70B worker would otherwise "fail" for an hour after
every deploy); a worker stopped on purpose is no longer judged and its open
availability alert is resolved. The figure counts what the agent reported: a
node that goes silent keeps its workers' last state, and the `Node offline`
rule covers that case.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.db.models import OuterRef, Subquery
from django.utils import timezone

from apps.alerts.models import Alert
from apps.alerts.services import evaluate_values_of_nodes, resolve_alerts
from apps.deployments.models import DesiredState, Worker, WorkerState, WorkerStateChange

WINDOW = timedelta(hours=1)
KEEP = timedelta(days=1)
SERIES = "worker.{}.availability"


def start_afresh(worker_ids) -> None:
    """A deliberate start or restart: judge again from the next first `ready`, so
    a stopped period and the model's loading are not counted as downtime."""
    Worker.objects.filter(pk__in=worker_ids).update(first_ready_at=None)


def record_state_change(worker: Worker, at: datetime) -> None:
    """Called when a report changes the worker's state (before the worker is saved)."""
    if worker.state == WorkerState.READY and worker.first_ready_at is None:
        worker.first_ready_at = at
    WorkerStateChange.objects.create(worker=worker, state=worker.state, at=at)


def ready_percent(
    state_at_start: str | None,
    changes: Iterable[tuple[datetime, str]],
    start: datetime,
    now: datetime,
) -> float:
    """Percent of [start, now] spent ready, given the state at `start` and the
    changes after it (oldest first; changes at or before `start` set the state)."""
    current, since, ready = state_at_start, start, timedelta(0)
    for at, state in changes:
        if at <= start:
            current = state
            continue
        if at > now:
            break
        if current == WorkerState.READY:
            ready += at - since
        current, since = state, at
    if current == WorkerState.READY:
        ready += now - since
    return 100.0 * ready / (now - start)


def judge_availability(now: datetime | None = None) -> dict[str, int]:
    """Compute, store and alert on every running worker's availability; prune."""
    now = now or timezone.now()
    window_start = now - WINDOW
    before_window = WorkerStateChange.objects.filter(
        worker=OuterRef("pk"), at__lte=window_start
    ).order_by("-at", "-pk")
    workers = list(
        Worker.objects.filter(desired_state=DesiredState.RUNNING, first_ready_at__isnull=False)
        .select_related("node", "deployment")
        .annotate(state_at_window=Subquery(before_window.values("state")[:1]))
    )
    changes: dict[int, list[tuple[datetime, str]]] = defaultdict(list)
    in_window = WorkerStateChange.objects.filter(
        worker__in=[w.pk for w in workers], at__gt=window_start
    ).order_by("at", "pk")
    for worker_id, at, state in in_window.values_list("worker_id", "at", "state"):
        changes[worker_id].append((at, state))

    per_node: dict[int, tuple] = {}
    for worker in workers:
        start = max(window_start, worker.first_ready_at)
        if start >= now:
            continue
        # Before the window: the last change there; none kept (older data) -> as now.
        state = worker.state_at_window or worker.state
        worker.availability = round(ready_percent(state, changes[worker.pk], start, now), 3)
        worker.availability_at = now
        _node, values, details = per_node.setdefault(worker.node_id, (worker.node, {}, {}))
        series = SERIES.format(worker.pk)
        values[series] = worker.availability
        minutes = (now - start).total_seconds() / 60
        details[series] = (
            f"{worker.deployment.name} replica {worker.slot}: ready {worker.availability:.2f}%"
            f" of the last {minutes:.0f} min"
        )
    Worker.objects.bulk_update(workers, ["availability", "availability_at"])
    evaluate_values_of_nodes(list(per_node.values()), ts=now.timestamp())
    released = _release_stopped(now)
    pruned = _prune(now)
    return {"judged": len(workers), "released": released, "pruned": pruned}


def _release_stopped(now: datetime) -> int:
    """Resolve the availability alerts of workers no longer meant to run (or gone).

    Directly, not by feeding a value: a removed worker is no longer covered by
    its deployment's rules, so no value would reach the alert."""
    open_alerts = Alert.objects.filter(series__endswith=".availability", state__in=Alert.OPEN)
    running = set(
        Worker.objects.filter(desired_state=DesiredState.RUNNING).values_list("pk", flat=True)
    )
    stale = [
        alert.pk
        for alert in open_alerts.only("pk", "series")
        if (worker_id := alert.series.split(".")[1]).isdigit() and int(worker_id) not in running
    ]
    if not stale:
        return 0
    return resolve_alerts(
        Alert.objects.filter(pk__in=stale), "worker stopped or removed: no longer judged"
    )


def _prune(now: datetime) -> int:
    """Drop changes older than KEEP, except each worker's latest before the window
    (the state its next window starts in)."""
    latest = WorkerStateChange.objects.filter(
        worker=OuterRef("worker"), at__lte=now - WINDOW
    ).order_by("-at", "-pk")
    deleted, _ = (
        WorkerStateChange.objects.filter(at__lt=now - KEEP)
        .exclude(pk=Subquery(latest.values("pk")[:1]))
        .delete()
    )
    return deleted
