from __future__ import annotations

import base64
import json

import pytest
import redis
from django.conf import settings

from apps.inventory.models import GPU, Node, NodeState
from apps.registry.models import Model, ModelVersion, VersionState


def queued_commands(node) -> list[tuple[str, dict]]:
    """(task name, kwargs) of every command waiting on the node's real Redis queue."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    out = []
    for raw in reversed(client.lrange(f"node.{node.pk}", 0, -1)):  # LPUSH: newest first
        message = json.loads(raw)
        _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        out.append((message["headers"]["task"].rsplit(".", 1)[-1], kwargs))
    return out


@pytest.fixture(autouse=True)
def _empty_node_queues(settings):
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    for key in client.scan_iter("node.*"):
        client.delete(key)


def make_node(cluster, hostname, gpus=2, memory_gib=80):
    node = Node.objects.create(cluster=cluster, hostname=hostname, state=NodeState.ONLINE)
    for index in range(gpus):
        GPU.objects.create(
            node=node,
            index=index,
            uuid=f"GPU-{hostname}-{index}",
            memory_total=memory_gib * 1024**3,
        )
    return node


def ready_version(model_name="qwen", label="v1", **extra):
    model, _ = Model.objects.get_or_create(name=model_name)
    return ModelVersion.objects.create(
        model=model,
        label=label,
        path=f"/srv/models/{model_name}/{label}",
        format="safetensors",
        state=VersionState.READY,
        files=[{"path": "w.bin", "sha256": "a" * 64, "size": 1}],
        **extra,
    )


@pytest.fixture
def gpu_node(cluster):
    return make_node(cluster, "gpu-a", gpus=4)


@pytest.fixture
def version(db):
    return ready_version()
