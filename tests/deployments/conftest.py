from __future__ import annotations

import base64
import contextlib
import json
import os
import signal

import pytest
import redis
from django.conf import settings

from apps.deployments.models import Worker
from apps.inventory import broker
from apps.inventory.models import GPU, Node, NodeState
from apps.registry.models import Model, ModelVersion, VersionState
from tests.inventory.test_enrollment import agent_enroll
from tests.support import processes


def queued_commands(node) -> list[tuple[str, dict]]:
    """(task name, kwargs) of every command waiting on the node's real Redis queue."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    out = []
    queue = broker.key_prefix(node.pk) + broker.node_queue(node.pk)  # as the agent sees it
    for raw in reversed(client.lrange(queue, 0, -1)):  # LPUSH: newest first
        message = json.loads(raw)
        _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        out.append((message["headers"]["task"].rsplit(".", 1)[-1], kwargs))
    return out


@pytest.fixture(autouse=True)
def _empty_node_queues(settings):
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    for key in client.scan_iter(f"hangar-node:{broker.namespace()}:*"):
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


@pytest.fixture
def model_root(tmp_path, settings, monkeypatch):
    root = tmp_path / "models"
    for label in ("v1", "v2", "v3"):
        directory = root / "minilm" / label
        directory.mkdir(parents=True)
        (directory / "model.safetensors").write_bytes(os.urandom(2 * 1024 * 1024))
        (directory / "config.json").write_text(json.dumps({"label": label}))
    settings.MODEL_ROOTS = [str(root)]
    monkeypatch.setenv("HANGAR_MODEL_ROOTS", str(root))
    return root


@pytest.fixture
def agent(model_root, daphne, admin_api, cluster, tmp_path):
    secret = admin_api.post(
        "/api/v1/enrollment-tokens/", {"cluster": cluster.pk}, format="json"
    ).json()["secret"]
    assert agent_enroll(daphne.url, secret, tmp_path / "agent").returncode == 0
    node_id = json.loads((tmp_path / "agent" / "credential.json").read_text())["node_id"]
    argv = [
        str(processes.BIN / "hangar-agent"),
        "run",
        "--state-dir",
        str(tmp_path / "agent"),
        "--simulate",
        "2",
        "--model-root",
        str(model_root),
    ]

    def start():
        proc = processes.start(argv, processes.console_env(), tmp_path / "agent.log")
        processes.wait_for(
            lambda: Node.objects.get(pk=node_id).state == NodeState.ONLINE,
            what="the agent online",
            process=proc,
        )
        return proc

    handle = {"proc": start(), "node_id": node_id, "start": start}
    yield handle
    processes.stop(handle["proc"])
    for worker in Worker.objects.exclude(pid=None):  # workers outlive the agent by design
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(worker.pid, signal.SIGKILL)
