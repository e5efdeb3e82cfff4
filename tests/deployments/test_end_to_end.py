"""The whole loop with real parts: console (Daphne + Celery worker), a real agent with
simulated GPUs, and the reference engine serving HTTP."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request

from apps.deployments.models import Deployment, Worker
from apps.registry.models import Model, ModelVersion
from tests.support import processes


def register(api, model, label, root) -> ModelVersion:
    response = api.post(
        "/api/v1/model-versions/",
        {
            "model": model.pk,
            "label": label,
            "path": str(root / "minilm" / label),
            "format": "safetensors",
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    version_id = response.json()["id"]
    processes.wait_for(
        lambda: ModelVersion.objects.get(pk=version_id).state == "ready",
        what=f"version {label} checksummed by the console worker",
    )
    return ModelVersion.objects.get(pk=version_id)


def workers_in(deployment_id, state):
    rows = list(Worker.objects.filter(deployment_id=deployment_id, desired_state="running"))
    return rows if rows and all(w.state == state for w in rows) else None


def embed(port: int, key: str | None):
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/embeddings",
        data=json.dumps({"input": "hello"}).encode(),
        headers=headers,
    )
    return urllib.request.urlopen(request, timeout=5)


def serves(worker: Worker) -> bool:
    """The worker answers with its own engine key (as the gateway sends it), and only so."""
    try:
        embed(worker.port, None)
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
    else:
        raise AssertionError(f"worker {worker.pk} answered a request without its key")
    return answers(worker)


def answers(worker: Worker) -> bool:
    """One embedding from the worker, sent with its key as the gateway does."""
    with embed(worker.port, worker.engine_secret) as response:
        return len(json.loads(response.read())["data"][0]["embedding"]) == 384


def test_deploy_supervise_adopt_roll_out_and_back(
    model_root, console_worker, agent, admin_api, cluster, tmp_path
):
    model = Model.objects.create(name="all-MiniLM-L6-v2", task="embedding")
    v1 = register(admin_api, model, "v1", model_root)
    port = processes.free_port()
    created = admin_api.post(
        "/api/v1/deployments/",
        {
            "name": "embed",
            "cluster": cluster.pk,
            "model_version": v1.pk,
            "engine": "reference",
            "engine_args": [],
            "replicas": 2,
            "port": port,
            "placement": {"mode": "auto", "gpus_per_replica": 1, "min_free_gib": 0},
        },
        format="json",
    )
    assert created.status_code == 201, created.json()
    deployment_id = created.json()["id"]
    processes.wait_for(
        lambda: workers_in(deployment_id, "ready"),
        timeout=90,
        what="both workers ready",
        process=agent["proc"],
    )
    first = {w.slot: w for w in workers_in(deployment_id, "ready")}
    assert sorted(w.gpus[0] for w in first.values()) == [0, 1]
    assert all(serves(w) for w in first.values())

    # A killed worker is restarted by the agent, with a new pid and its cause on record.
    os.kill(first[0].pid, signal.SIGKILL)

    def restarted():
        worker = Worker.objects.get(pk=first[0].pk)
        return worker.state == "ready" and worker.pid != first[0].pid and worker.restarts >= 1

    processes.wait_for(restarted, timeout=60, what="the killed worker restarted")
    assert Worker.objects.get(pk=first[0].pk).cause == "signal"
    pids = {w.pk: w.pid for w in workers_in(deployment_id, "ready")}

    # A restarted agent adopts the running workers instead of starting new ones.
    processes.stop(agent["proc"])
    assert all(serves(w) for w in first.values())
    agent["proc"] = agent["start"]()
    time.sleep(3)  # let the agent report after its hello
    processes.wait_for(lambda: workers_in(deployment_id, "ready"), what="workers re-reported")
    assert {w.pk: w.pid for w in workers_in(deployment_id, "ready")} == pids

    # Roll out v2, one worker at a time, then back to v1.
    v2 = register(admin_api, model, "v2", model_root)
    assert (
        admin_api.post(
            f"/api/v1/deployments/{deployment_id}/rollout/", {"model_version": v2.pk}, format="json"
        ).status_code
        == 200
    )
    processes.wait_for(
        lambda: (
            Deployment.objects.get(pk=deployment_id).rollout_state == "idle"
            and {w.model_version_id for w in workers_in(deployment_id, "ready") or []} == {v2.pk}
        ),
        timeout=120,
        what="the rollout to v2 done",
    )
    assert admin_api.post(f"/api/v1/deployments/{deployment_id}/rollback/").status_code == 200
    processes.wait_for(
        lambda: (
            Deployment.objects.get(pk=deployment_id).rollout_state == "idle"
            and {w.model_version_id for w in workers_in(deployment_id, "ready") or []} == {v1.pk}
        ),
        timeout=120,
        what="the rollback to v1 done",
    )
    assert all(serves(w) for w in workers_in(deployment_id, "ready"))

    # A corrupted file stops the new worker at verifying; the rollout stops, v1 keeps serving.
    v3 = register(admin_api, model, "v3", model_root)
    blob = model_root / "minilm" / "v3" / "model.safetensors"
    data = bytearray(blob.read_bytes())
    data[1000] ^= 0xFF
    blob.write_bytes(bytes(data))
    admin_api.post(
        f"/api/v1/deployments/{deployment_id}/rollout/", {"model_version": v3.pk}, format="json"
    )
    processes.wait_for(
        lambda: Deployment.objects.get(pk=deployment_id).rollout_state == "failed",
        timeout=60,
        what="the corrupted rollout to fail",
    )
    broken = Worker.objects.filter(deployment_id=deployment_id, model_version=v3).first()
    assert broken.state == "failed" and "model.safetensors" in broken.error
    assert broken.pid is None  # never started
    processes.wait_for(
        lambda: workers_in(deployment_id, "ready"),
        timeout=90,
        what="v1 serving on every slot again",
    )
    assert {w.model_version_id for w in workers_in(deployment_id, "ready")} == {v1.pk}
