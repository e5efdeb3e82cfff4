"""Worker availability over the last hour: computed from reported states, stored, alerted."""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.alerts.models import Alert
from apps.deployments.availability import judge_availability, ready_percent
from apps.deployments.models import DesiredState, Worker, WorkerState, WorkerStateChange
from tests.deployments.test_deployments_api import deploy, report

T0 = timezone.now().replace(microsecond=0)
READY, FAILED, STARTING = WorkerState.READY, WorkerState.FAILED, WorkerState.STARTING


def minutes(n: float):
    return T0 + timedelta(minutes=n)


def test_ready_percent_counts_only_the_time_spent_ready():
    hour = (minutes(0), minutes(60))
    assert ready_percent(READY, [], *hour) == 100.0
    assert ready_percent(FAILED, [], *hour) == 0.0
    # Down for 36 s in the hour: 99 %.
    down = [(minutes(30), FAILED), (minutes(30.6), READY)]
    assert ready_percent(READY, down, *hour) == pytest.approx(99.0)
    # A change before the window only sets the state the window starts in.
    assert ready_percent(None, [(minutes(-5), READY)], *hour) == 100.0
    # Changes after `now` are not counted.
    assert ready_percent(READY, [(minutes(70), FAILED)], *hour) == 100.0


def _state_history(worker, *changes):
    WorkerStateChange.objects.filter(worker=worker).delete()
    for at, state in changes:
        WorkerStateChange.objects.create(worker=worker, state=state, at=at)


def test_a_report_records_the_change_and_the_first_ready(admin_api, cluster, version, gpu_node):
    deploy(admin_api, cluster, version, gpu_node, replicas=1)
    worker = Worker.objects.get()
    report(worker, "starting")
    report(worker, "starting", pid=42)  # same state: no new change
    report(worker, "ready", pid=42)
    worker.refresh_from_db()
    states = list(WorkerStateChange.objects.filter(worker=worker).values_list("state", flat=True))
    assert states == ["starting", "ready"]
    assert worker.first_ready_at == WorkerStateChange.objects.get(state="ready").at
    report(worker, "unhealthy")
    report(worker, "ready")
    worker.refresh_from_db()
    assert worker.first_ready_at == WorkerStateChange.objects.filter(state="ready").first().at


def test_ten_minutes_down_fires_the_shipped_rule_and_stopping_the_worker_resolves_it(
    admin_api, cluster, version, gpu_node
):
    deploy(admin_api, cluster, version, gpu_node, replicas=2)
    flaky, steady = Worker.objects.order_by("slot")
    now = minutes(120)
    for worker in (flaky, steady):
        Worker.objects.filter(pk=worker.pk).update(state=READY, first_ready_at=minutes(0))
    _state_history(flaky, (minutes(0), READY), (minutes(90), FAILED), (minutes(100), READY))
    _state_history(steady, (minutes(0), READY))

    assert judge_availability(now)["judged"] == 2
    flaky.refresh_from_db()
    steady.refresh_from_db()
    assert flaky.availability == pytest.approx(100 * 50 / 60, abs=0.001)
    assert steady.availability == 100.0 and steady.availability_at == now
    alert = Alert.objects.get(series=f"worker.{flaky.pk}.availability")
    assert (
        alert.state == Alert.State.FIRING and alert.rule.name == "Worker availability below 99.9%"
    )
    assert "chat replica 0: ready 83.33% of the last 60 min" in alert.detail
    assert not Alert.objects.filter(series=f"worker.{steady.pk}.availability").exists()
    body = admin_api.get(f"/api/v1/workers/{flaky.pk}/").json()
    assert body["availability"] == pytest.approx(83.333, abs=0.001)

    Worker.objects.filter(pk=flaky.pk).update(desired_state=DesiredState.STOPPED)
    result = judge_availability(now + timedelta(seconds=30))
    assert result == {"judged": 1, "released": 1, "pruned": 0}
    alert.refresh_from_db()
    assert alert.state == Alert.State.RESOLVED
    assert alert.resolved_reason == "worker stopped or removed: no longer judged"
    assert judge_availability(now + timedelta(seconds=60))["released"] == 0


def test_the_alert_of_a_removed_worker_resolves_even_under_a_deployment_rule(
    admin_api, cluster, version, gpu_node
):
    from apps.alerts import services
    from apps.alerts.models import AlertRule

    deploy(admin_api, cluster, version, gpu_node, replicas=1)
    worker = Worker.objects.get()
    AlertRule.objects.create(
        name="chat availability",
        metric="worker.*.availability",
        scope="deployment",
        deployment=worker.deployment,
        cluster=cluster,
        comparison="<",
        threshold=99.0,
    )
    services.rules.clear()
    Worker.objects.filter(pk=worker.pk).update(state=READY, first_ready_at=minutes(0))
    _state_history(worker, (minutes(0), READY), (minutes(70), FAILED))
    judge_availability(minutes(80))
    series = f"worker.{worker.pk}.availability"
    assert Alert.objects.filter(series=series, state=Alert.State.FIRING).count() == 2
    worker.delete()  # reconcile removes a stopped worker; the rule no longer covers it
    services.rules.clear()
    assert judge_availability(minutes(81))["released"] == 2
    assert not Alert.objects.filter(series=series, state__in=Alert.OPEN).exists()


def test_starting_a_deployment_again_is_judged_from_its_next_ready(
    admin_api, cluster, version, gpu_node
):
    from apps.deployments.services import start_deployment, stop_deployment

    deploy(admin_api, cluster, version, gpu_node, replicas=1)
    worker = Worker.objects.get()
    report(worker, "ready")
    stop_deployment(worker.deployment)
    report(worker, "stopped")
    start_deployment(worker.deployment)
    worker.refresh_from_db()
    assert worker.first_ready_at is None  # the stopped time and the loading are not downtime
    assert judge_availability()["judged"] == 0
    report(worker, "starting")
    report(worker, "ready")
    assert judge_availability(timezone.now() + timedelta(minutes=5))["judged"] == 1
    worker.refresh_from_db()
    assert worker.availability == 100.0


def test_loading_a_model_is_not_downtime_and_a_never_ready_worker_is_not_judged(
    admin_api, cluster, version, gpu_node
):
    deploy(admin_api, cluster, version, gpu_node, replicas=2)
    slow, loading = Worker.objects.order_by("slot")
    # 40 minutes to load the weights, then ready: judged from its first ready only.
    Worker.objects.filter(pk=slow.pk).update(state=READY, first_ready_at=minutes(40))
    _state_history(slow, (minutes(0), STARTING), (minutes(40), READY))
    Worker.objects.filter(pk=loading.pk).update(state=STARTING)
    _state_history(loading, (minutes(0), STARTING))

    assert judge_availability(minutes(60))["judged"] == 1
    slow.refresh_from_db()
    loading.refresh_from_db()
    assert slow.availability == 100.0
    assert loading.availability is None
    assert not Alert.objects.filter(series__endswith=".availability").exists()


def test_old_changes_are_pruned_but_each_workers_latest_is_kept(
    admin_api, cluster, version, gpu_node
):
    deploy(admin_api, cluster, version, gpu_node, replicas=1)
    worker = Worker.objects.get()
    Worker.objects.filter(pk=worker.pk).update(state=READY, first_ready_at=minutes(-3000))
    _state_history(
        worker,
        (minutes(-3000), READY),
        (minutes(-2990), FAILED),
        (minutes(-2980), READY),
        (minutes(-1), WorkerState.UNHEALTHY),
    )
    # Ready for two days, unhealthy for the last minute: the pruning keeps the
    # state the window starts in, not only the newest change.
    assert judge_availability(minutes(0))["pruned"] == 2
    assert list(WorkerStateChange.objects.values_list("state", flat=True)) == [
        READY,
        WorkerState.UNHEALTHY,
    ]
    worker.refresh_from_db()
    assert worker.availability == pytest.approx(100 * 59 / 60, abs=0.001)
    judge_availability(minutes(1))  # pruning again keeps the same two
    assert WorkerStateChange.objects.count() == 2


def test_judging_costs_the_same_queries_for_few_or_many_nodes(cluster, version, monkeypatch):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from apps.alerts import services

    # The rule cache reloads on a timer; keep it loaded so only judging is counted.
    monkeypatch.setattr(services.rules, "ttl", 3600.0)
    services.rules.clear()

    from apps.deployments.models import Deployment
    from tests.deployments.conftest import make_node

    deployment = Deployment.objects.create(
        name="wide", cluster=cluster, model_version=version, engine="reference", port=9000
    )

    def add_ready_workers(count: int) -> None:
        for _ in range(count):
            slot = Worker.objects.count()
            worker = Worker.objects.create(
                deployment=deployment,
                node=make_node(cluster, f"gpu-{slot}", gpus=1),
                model_version=version,
                slot=slot,
                gpus=[0],
                port=9000 + slot,
                state=READY,
                first_ready_at=minutes(0),
            )
            # Down for 10 minutes: every worker's alert fires (writes are per transition).
            _state_history(worker, (minutes(0), READY), (minutes(70), FAILED), (minutes(80), READY))

    def queries(at) -> int:
        with CaptureQueriesContext(connection) as captured:
            judge_availability(at)
        return len(captured)

    add_ready_workers(2)
    queries(minutes(120))  # the first judgement fires each alert
    few = queries(minutes(121))
    add_ready_workers(8)
    queries(minutes(120.5))
    assert Alert.objects.filter(state=Alert.State.FIRING).count() == 10
    assert queries(minutes(122)) == few
