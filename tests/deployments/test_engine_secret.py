"""Each worker's engine key: sent to its node only, shown nowhere, audited never."""

import json

from django.test import Client

from apps.audit import recorder
from apps.audit.chain import REDACTED
from apps.audit.models import AuditEvent
from apps.deployments.models import Worker
from tests.deployments.conftest import queued_commands
from tests.deployments.test_deployments_api import deploy, report


def test_a_new_workers_start_command_carries_its_own_secret(
    admin_api, cluster, version, gpu_node, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        assert deploy(admin_api, cluster, version, gpu_node, replicas=1).status_code == 201
    worker = Worker.objects.get()
    assert len(worker.engine_secret) == 43  # secrets.token_urlsafe(32)
    [(verb, kwargs)] = queued_commands(gpu_node)
    assert verb == "start_worker" and kwargs["spec"]["api_key"] == worker.engine_secret


def test_the_queued_messages_headers_do_not_repeat_the_secret(
    admin_api, cluster, version, gpu_node, django_capture_on_commit_callbacks, settings
):
    import redis

    from apps.inventory import broker

    with django_capture_on_commit_callbacks(execute=True):
        deploy(admin_api, cluster, version, gpu_node, replicas=1)
    secret = Worker.objects.get().engine_secret
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    [raw] = client.lrange(broker.key_prefix(gpu_node.pk) + broker.node_queue(gpu_node.pk), 0, -1)
    headers = json.loads(raw)["headers"]
    assert secret not in json.dumps(headers) and REDACTED in headers["kwargsrepr"]


def test_every_worker_gets_a_different_secret(
    admin_api, cluster, version, gpu_node, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        deployment_id = deploy(admin_api, cluster, version, gpu_node, replicas=2).json()["id"]
        scale = f"/api/v1/deployments/{deployment_id}/scale/"
        assert admin_api.post(scale, {"replicas": 3}, format="json").status_code == 200
    secrets = [w.engine_secret for w in Worker.objects.all()]
    assert len(secrets) == 3 and len(set(secrets)) == 3 and all(secrets)
    sent = [kwargs["spec"]["api_key"] for _, kwargs in queued_commands(gpu_node)]
    assert sorted(sent) == sorted(secrets)


def test_a_rolled_out_worker_gets_a_new_secret(
    admin_api, cluster, version, gpu_node, django_capture_on_commit_callbacks
):
    from tests.deployments.conftest import ready_version

    deployment_id = deploy(admin_api, cluster, version, gpu_node, replicas=1).json()["id"]
    old = Worker.objects.get()
    report(old, "ready")
    v2 = ready_version(label="v2")
    response = admin_api.post(
        f"/api/v1/deployments/{deployment_id}/rollout/", {"model_version": v2.pk}, format="json"
    )
    assert response.status_code == 200, response.json()
    new = Worker.objects.exclude(pk=old.pk).get()
    assert new.engine_secret and new.engine_secret != old.engine_secret


def test_the_api_and_the_pages_never_show_a_workers_secret(
    admin_api, admin_user, cluster, version, gpu_node
):
    deployment_id = deploy(admin_api, cluster, version, gpu_node, replicas=2).json()["id"]
    secrets = [w.engine_secret for w in Worker.objects.all()]
    worker_id = Worker.objects.first().pk
    page = Client()
    page.force_login(admin_user)
    answers = [
        admin_api.get("/api/v1/workers/"),
        admin_api.get(f"/api/v1/workers/{worker_id}/"),
        admin_api.get(f"/api/v1/deployments/{deployment_id}/"),
        admin_api.get("/api/v1/deployments/"),
        page.get(f"/deployments/{deployment_id}/"),
        page.get("/deployments/"),
    ]
    assert [a.status_code for a in answers] == [200] * len(answers)
    for answer in answers:
        body = answer.content.decode()
        assert not any(secret in body for secret in secrets)
    assert all("engine_secret" not in w for w in answers[0].json()["results"])


def test_a_workers_audit_snapshot_and_changes_never_hold_its_secret(
    admin_api, cluster, version, gpu_node, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        deploy(admin_api, cluster, version, gpu_node, replicas=1)
    worker = Worker.objects.get()
    report(worker, "failed", error="boom")
    with django_capture_on_commit_callbacks(execute=True):
        assert admin_api.post(f"/api/v1/workers/{worker.pk}/restart/").status_code == 200
    # A snapshot of the row, as the middleware takes of what a request loads.
    snapshot = recorder.snapshot(worker)
    assert snapshot["engine_secret"] == worker.engine_secret  # redacted when written:
    event = recorder.record("test.worker", target=worker, changes={"created": snapshot})
    assert AuditEvent.objects.get(pk=event.pk).changes["created"]["engine_secret"] == REDACTED
    stored = json.dumps([e.changes for e in AuditEvent.objects.all()])
    assert AuditEvent.objects.count() >= 3
    assert worker.engine_secret not in stored
