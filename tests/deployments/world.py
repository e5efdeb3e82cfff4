"""Registry and deployment objects for the role matrix's World (tests/endpoints.py):
global {model} {version} {version2} {draft}, and {deployment} {worker} inside and
outside the scoped role's clusters, on an online {work_node} of each."""

from __future__ import annotations

import tempfile

from django.conf import settings

from apps.deployments.models import Deployment, Worker, WorkerState
from apps.inventory.models import GPU, Node, NodeState
from apps.registry.models import Model, ModelVersion, VersionState

FILES = [{"path": "weights.safetensors", "sha256": "b" * 64, "size": 10}]


def _version(model, label, state=VersionState.READY) -> ModelVersion:
    return ModelVersion.objects.create(
        model=model,
        label=label,
        path=f"/srv/models/m/{label}",
        format="safetensors",
        state=state,
        files=FILES,
    )


def deployments_world(world) -> dict[str, dict[str, int]]:
    model = Model.objects.create(name="matrix-model", task="chat")
    v1, v2 = _version(model, "v1"), _version(model, "v2")
    spare = _version(model, "spare")  # ready and unused: retirable
    draft = _version(model, "draft", VersionState.DRAFT)
    placed: dict[str, dict[str, int]] = {"deployment": {}, "worker": {}}
    for place, cluster in world.clusters.items():
        # Online: the inventory rows' node is draining, and draining takes no work.
        node = Node.objects.create(
            cluster=cluster, hostname=f"work-{place}", state=NodeState.ONLINE
        )
        GPU.objects.create(node=node, index=0, name="H100")
        GPU.objects.create(node=node, index=1, name="H100")  # free for a new deployment
        placed.setdefault("work_node", {})[place] = node.pk
        deployment = Deployment.objects.create(
            name=f"matrix-{place}",
            cluster=cluster,
            model_version=v1,
            previous_version=v2,
            engine="reference",
            replicas=1,
            port=9100,
            placement={"mode": "pinned", "targets": [{"node": node.pk, "gpus": [0]}]},
        )
        worker = Worker.objects.create(
            deployment=deployment,
            node=node,
            model_version=v1,
            slot=0,
            gpus=[0],
            port=9100,
            state=WorkerState.READY,
        )
        placed["deployment"][place], placed["worker"][place] = deployment.pk, worker.pk
    for name, obj in (
        ("model", model),
        ("version", v1),
        ("version2", v2),
        ("spare_version", spare),
        ("draft", draft),
    ):
        placed[name] = dict.fromkeys(world.clusters, obj.pk)
    return placed


def model_directory(monkeypatch, _settings=None) -> None:
    """A real directory under the model roots for version registration rows."""
    root = tempfile.mkdtemp(prefix="hangar-matrix-models-")
    monkeypatch.setattr(settings, "MODEL_ROOTS", [root])
    MODEL_DIR["path"] = root


MODEL_DIR: dict[str, str] = {}
