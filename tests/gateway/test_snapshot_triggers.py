"""What republishes the gateways' snapshot: state changes, not every worker report."""

from __future__ import annotations

import redis
from django.conf import settings

from apps.deployments.models import Deployment, Worker, WorkerState
from apps.deployments.services import apply_worker_status
from apps.gateway import snapshot
from apps.gateway.models import Route, RouteTarget
from apps.inventory.models import Node, NodeState
from tests.deployments.conftest import ready_version


def generation() -> int:
    raw = redis.Redis.from_url(settings.REDIS_URL).get(snapshot.GENERATION_KEY)
    return int(raw or 0)


def test_only_a_worker_state_change_republishes(transactional_db, cluster):
    node = Node.objects.create(cluster=cluster, hostname="gpu", state=NodeState.ONLINE)
    version = ready_version()
    deployment = Deployment.objects.create(
        name="chat", cluster=cluster, model_version=version, engine="reference", port=9000
    )
    worker = Worker.objects.create(
        deployment=deployment, node=node, model_version=version, slot=0, port=9000,
        state=WorkerState.STARTING,
    )  # fmt: skip
    RouteTarget.objects.create(route=Route.objects.create(name="chat"), deployment=deployment)
    before = generation()
    apply_worker_status(node, {"worker_id": worker.pk, "state": "starting", "last_log": ["x"]})
    assert generation() == before  # a report that changes no state builds nothing
    apply_worker_status(node, {"worker_id": worker.pk, "state": "ready"})
    assert generation() > before
    stored = redis.Redis.from_url(settings.REDIS_URL).get(snapshot.SNAPSHOT_KEY)
    assert b'"workers":[{"id":%d' % worker.pk in stored
