"""Deployment operations through the API, with commands landing on real node queues."""

import pytest
from django.db import connection

from apps.audit.models import AuditEvent
from apps.deployments.models import Deployment, RolloutState, Worker, WorkerState
from apps.deployments.services import apply_worker_status, reconcile
from apps.inventory.models import Node
from apps.telemetry import live
from tests.deployments.conftest import make_node, queued_commands, ready_version


def deploy(api, cluster, version, node, replicas=2, **extra):
    body = {
        "name": "chat",
        "cluster": cluster.pk,
        "model_version": version.pk,
        "engine": "reference",
        "engine_args": [],
        "replicas": replicas,
        "port": 8100,
        "placement": {
            "mode": "pinned",
            "targets": [{"node": node.pk, "gpus": [i]} for i in range(node.gpus.count())],
        },
    }
    body.update(extra)
    return api.post("/api/v1/deployments/", body, format="json")


def report(worker, state, **fields):
    return apply_worker_status(worker.node, {"worker_id": worker.pk, "state": state, **fields})


def test_create_places_replicas_and_queues_a_start_per_worker(
    admin_api, cluster, version, gpu_node, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = deploy(admin_api, cluster, version, gpu_node)
    assert response.status_code == 201, response.json()
    workers = list(Worker.objects.order_by("slot"))
    assert [(w.slot, w.gpus, w.port, w.state) for w in workers] == [
        (0, [0], 8100, "pending"),
        (1, [1], 8101, "pending"),
    ]
    commands = queued_commands(gpu_node)
    assert [verb for verb, _ in commands] == ["start_worker", "start_worker"]
    spec = commands[0][1]["spec"]
    assert spec["worker_id"] == workers[0].pk and spec["gpus"] == [0]
    assert spec["model"]["path"] == version.path and spec["model"]["files"][0]["sha256"] == "a" * 64
    operation_ids = {c[1]["operation_id"] for c in commands}
    event = AuditEvent.objects.get(action="deployments.create")
    assert set(event.changes["operation_ids"]) == operation_ids


def test_bad_engine_args_and_taken_gpus_are_refused_with_a_reason(
    admin_api, cluster, version, gpu_node
):
    refused = deploy(
        admin_api, cluster, version, gpu_node, engine="vllm", engine_args=["--trust-remote-code"]
    )
    assert refused.status_code == 400
    assert "--trust-remote-code" in refused.json()["fields"]["engine_args"][0]
    shell = deploy(
        admin_api,
        cluster,
        version,
        gpu_node,
        engine="vllm",
        engine_args=["--max-model-len", "4096; rm -rf /"],
    )
    assert shell.status_code == 400
    assert deploy(admin_api, cluster, version, gpu_node).status_code == 201
    taken = deploy(admin_api, cluster, version, gpu_node, name="second")
    assert taken.status_code == 400 and "used by another deployment" in taken.json()["detail"]
    assert Deployment.objects.count() == 1


def test_auto_placement_uses_gpus_with_enough_free_memory(admin_api, cluster, version):
    import json

    node = make_node(cluster, "gpu-b", gpus=3)
    busy = {"index": 0, "memory_used": 75 * 1024**3, "memory_total": 80 * 1024**3}
    idle = {"memory_used": 1024**3, "memory_total": 80 * 1024**3}
    live.client().set(
        live.latest_key(node.pk),
        json.dumps({"gpus": [busy, {"index": 1, **idle}, {"index": 2, **idle}]}),
    )
    response = deploy(
        admin_api,
        cluster,
        version,
        node,
        replicas=2,
        placement={"mode": "auto", "gpus_per_replica": 1, "min_free_gib": 40},
    )
    assert response.status_code == 201, response.json()
    assert sorted(w.gpus[0] for w in Worker.objects.all()) == [1, 2]
    third = deploy(
        admin_api,
        cluster,
        version,
        node,
        replicas=1,
        name="more",
        placement={"mode": "auto", "gpus_per_replica": 1, "min_free_gib": 40},
    )
    assert third.status_code == 400 and "40 GiB free" in third.json()["detail"]


def test_rolling_update_replaces_one_worker_at_a_time_and_finishes(
    admin_api, cluster, version, gpu_node, django_capture_on_commit_callbacks
):
    deployment_id = deploy(admin_api, cluster, version, gpu_node).json()["id"]
    for worker in Worker.objects.all():
        report(worker, "ready", pid=100 + worker.slot)
    v2 = ready_version(label="v2")
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_api.post(
            f"/api/v1/deployments/{deployment_id}/rollout/", {"model_version": v2.pk}, format="json"
        )
    assert response.json()["rollout_state"] == "rolling"
    old0, old1 = Worker.objects.filter(model_version=version).order_by("slot")
    assert (old0.desired_state, old1.desired_state) == ("stopped", "running")
    new0 = Worker.objects.get(model_version=v2)
    assert new0.slot == 0 and new0.gpus == [0]
    report(new0, "starting")
    assert Worker.objects.filter(model_version=v2).count() == 1  # waits for ready
    report(new0, "ready", pid=200)
    new1 = Worker.objects.get(model_version=v2, slot=1)
    assert Worker.objects.get(pk=old1.pk).desired_state == "stopped"
    report(new1, "ready", pid=201)
    deployment = Deployment.objects.get(pk=deployment_id)
    assert deployment.rollout_state == RolloutState.IDLE
    assert deployment.previous_version == version
    assert AuditEvent.objects.filter(action="deployments.rollout-done").count() == 1
    with django_capture_on_commit_callbacks(execute=True):
        back = admin_api.post(f"/api/v1/deployments/{deployment_id}/rollback/")
    assert back.status_code == 200 and back.json()["model_version"] == version.pk


def test_a_failed_new_worker_stops_the_rollout_and_old_workers_keep_serving(
    admin_api, cluster, version, gpu_node
):
    deployment_id = deploy(admin_api, cluster, version, gpu_node).json()["id"]
    for worker in Worker.objects.all():
        report(worker, "ready")
    v2 = ready_version(label="v2-broken")
    admin_api.post(
        f"/api/v1/deployments/{deployment_id}/rollout/", {"model_version": v2.pk}, format="json"
    )
    new0 = Worker.objects.get(model_version=v2)
    report(new0, "failed", error="model.safetensors: SHA-256 mismatch")
    deployment = Deployment.objects.get(pk=deployment_id)
    assert deployment.rollout_state == RolloutState.FAILED
    assert "SHA-256 mismatch" in deployment.rollout_error
    running = Worker.objects.filter(desired_state="running").order_by("slot")
    assert [(w.slot, w.model_version_id) for w in running] == [(0, version.pk), (1, version.pk)]
    assert Worker.objects.get(model_version=version, slot=1).state == WorkerState.READY


def test_reconcile_resends_a_start_that_got_no_answer(admin_api, cluster, version, gpu_node):
    from datetime import timedelta

    from django.utils import timezone

    deploy(admin_api, cluster, version, gpu_node, replicas=1)
    worker = Worker.objects.get()
    first = worker.last_operation_id
    Worker.objects.update(dispatched_at=timezone.now() - timedelta(minutes=1))
    assert reconcile()["start"] == 1
    worker.refresh_from_db()
    assert worker.last_operation_id != first
    report(worker, "ready")
    Worker.objects.update(dispatched_at=timezone.now() - timedelta(minutes=1))
    assert reconcile()["start"] == 0


def test_reconcile_asks_again_for_a_start_the_node_could_not_keep(
    admin_api, admin_user, client, cluster, version, gpu_node
):
    """The agent answered a start with the reason on the worker (its state
    directory full): the page shows it, and the start is sent again, not left
    pending with an answer nobody read."""
    from datetime import timedelta

    from django.utils import timezone

    deploy(admin_api, cluster, version, gpu_node, replicas=1)
    worker = Worker.objects.get()
    error = "cannot start: the agent cannot write to its state directory (No space left on device)"
    report(worker, "pending", error=error)
    worker.refresh_from_db()
    assert (worker.state, worker.error) == (WorkerState.PENDING, error)
    assert reconcile()["start"] == 0  # not before REDISPATCH_AFTER
    Worker.objects.update(dispatched_at=timezone.now() - timedelta(minutes=1))
    first = worker.last_operation_id
    assert reconcile()["start"] == 1
    worker.refresh_from_db()
    assert worker.last_operation_id != first
    client.force_login(admin_user)
    page = client.get(f"/deployments/{worker.deployment_id}/")
    assert page.status_code == 200 and error in page.content.decode()

    report(worker, "pending", error=None)  # taken this time: verifying follows
    Worker.objects.update(dispatched_at=timezone.now() - timedelta(minutes=1))
    assert reconcile()["start"] == 0


def test_an_agent_cannot_report_for_another_nodes_worker(admin_api, cluster, version, gpu_node):
    deploy(admin_api, cluster, version, gpu_node, replicas=1)
    other = make_node(cluster, "intruder")
    worker = Worker.objects.get()
    assert apply_worker_status(other, {"worker_id": worker.pk, "state": "failed"}) is None
    assert Worker.objects.get().state == WorkerState.PENDING


@pytest.mark.parametrize("role, expected", [("viewer", 403), ("operator", 200), ("admin", 200)])
def test_operators_scale_and_stop_but_viewers_cannot(
    client_for, make_user, admin_api, cluster, version, gpu_node, role, expected
):
    deployment_id = deploy(admin_api, cluster, version, gpu_node, replicas=1).json()["id"]
    api = client_for(make_user(f"u-{role}", (role, cluster)))
    response = api.post(
        f"/api/v1/deployments/{deployment_id}/scale/", {"replicas": 2}, format="json"
    )
    assert response.status_code == expected
    assert Deployment.objects.get().replicas == (2 if expected == 200 else 1)
    assert api.post(f"/api/v1/deployments/{deployment_id}/stop/").status_code == expected


def test_a_worker_failed_for_an_unexpected_listener_is_audited_with_the_socket(
    admin_api, cluster, version, gpu_node
):
    assert deploy(admin_api, cluster, version, gpu_node, replicas=1).status_code == 201
    worker = Worker.objects.get()
    evidence = "listens beyond its declared port: 0.0.0.0:41234 (pid 4242 python3)"
    report(worker, "failed", cause="unexpected-listener", evidence=evidence)
    event = AuditEvent.objects.get(action="deployments.worker-failed", target_id=str(worker.pk))
    assert event.changes["cause"] == "unexpected-listener"
    assert "0.0.0.0:41234" in event.changes["evidence"]
    assert event.actor_type == "node"


@pytest.mark.parametrize("state", ["draining", "offline", "retired"])
def test_pinned_work_on_a_node_that_takes_none_is_refused_naming_node_and_state(
    admin_api, cluster, version, gpu_node, state
):
    Node.objects.filter(pk=gpu_node.pk).update(state=state)

    refused = deploy(admin_api, cluster, version, gpu_node)

    assert refused.status_code == 400
    assert refused.json()["detail"] == (
        f"gpu-a is {state} and takes no new work; pin another node."
    )
    assert not Deployment.objects.exists() and not Worker.objects.exists()


def test_starting_again_after_the_node_was_drained_is_refused_for_pinned_work(
    admin_api, cluster, version, gpu_node
):
    deployment = Deployment.objects.get(
        pk=deploy(admin_api, cluster, version, gpu_node).json()["id"]
    )
    admin_api.post(f"/api/v1/deployments/{deployment.pk}/stop/")
    admin_api.post(f"/api/v1/nodes/{gpu_node.pk}/drain/")

    refused = admin_api.post(f"/api/v1/deployments/{deployment.pk}/start/")

    assert refused.status_code == 400
    assert "gpu-a is draining and takes no new work" in refused.json()["detail"]
    assert not deployment.workers.filter(desired_state="running").exists()


def test_starting_again_does_not_reuse_gpus_another_deployment_took_meanwhile(
    admin_api, cluster, version
):
    node = make_node(cluster, "gpu-b", gpus=2)
    auto = {"mode": "auto", "gpus_per_replica": 1}
    first = deploy(admin_api, cluster, version, node, replicas=1, placement=auto).json()
    admin_api.post(f"/api/v1/deployments/{first['id']}/stop/")
    deploy(admin_api, cluster, version, node, replicas=1, placement=auto, name="second", port=8200)

    assert admin_api.post(f"/api/v1/deployments/{first['id']}/start/").status_code == 200

    running = Worker.objects.filter(desired_state="running").order_by("deployment__name")
    assert [(w.deployment.name, w.gpus) for w in running] == [("chat", [1]), ("second", [0])]


def test_reconcile_sends_no_start_for_a_worker_stopped_after_it_read_the_workers(
    admin_api, cluster, version, gpu_node, django_capture_on_commit_callbacks
):
    """Reconcile reads every worker, then acts on each; a stop made in between
    (here right after that read) is not answered with a start."""
    from apps.deployments.services import stop_deployment

    deployment_id = deploy(admin_api, cluster, version, gpu_node, replicas=1).json()["id"]
    report(Worker.objects.get(), "stopped")  # e.g. the engine exited: reconcile restarts it
    Worker.objects.update(dispatched_at=None)
    stopped = []

    def stop_after_reconcile_reads(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if not stopped and sql.startswith('SELECT "deployments_worker"."id"'):
            stopped.append(True)
            stop_deployment(Deployment.objects.get(pk=deployment_id))
        return result

    with (
        django_capture_on_commit_callbacks(execute=True),
        connection.execute_wrapper(stop_after_reconcile_reads),
    ):
        resent = reconcile()

    assert stopped and resent["start"] == 0
    assert [verb for verb, _ in queued_commands(gpu_node)] == ["stop_worker"]


def test_a_rollout_started_from_an_old_copy_keeps_a_scale_made_meanwhile(
    admin_api, cluster, version, gpu_node
):
    from apps.deployments.services import roll_out, scale_deployment

    deployment_id = deploy(admin_api, cluster, version, gpu_node, replicas=2).json()["id"]
    loaded_before = Deployment.objects.get(pk=deployment_id)
    scale_deployment(Deployment.objects.get(pk=deployment_id), 1)

    roll_out(loaded_before, ready_version(label="v2"))

    assert Deployment.objects.get(pk=deployment_id).replicas == 1
