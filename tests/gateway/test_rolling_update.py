"""A rolling update under steady load through the gateway drops nothing.

Real parts: Daphne, the console's Celery worker, a real agent with simulated GPUs
supervising reference engines, a real gateway process.
"""

from __future__ import annotations

import threading

import pytest

from apps.deployments.models import Deployment
from apps.gateway.models import Route, RouteTarget
from apps.registry.models import Model
from tests.deployments.conftest import agent, model_root  # noqa: F401 (fixtures used below)
from tests.deployments.test_end_to_end import register, workers_in
from tests.gateway.conftest import http, published
from tests.support import processes


@pytest.fixture
def short_drain(monkeypatch):
    """Daphne (which dispatches the stops) reads it from its environment."""
    monkeypatch.setenv("HANGAR_WORKER_DRAIN_SECONDS", "2")


def test_a_rolling_update_under_steady_load_fails_no_request(
    short_drain,
    model_root,  # noqa: F811
    console_worker,
    agent,  # noqa: F811
    admin_api,
    cluster,
    gateway,
    consumer_key,
):
    model = Model.objects.create(name="all-MiniLM-L6-v2", task="embedding")
    v1 = register(admin_api, model, "v1", model_root)
    created = admin_api.post(
        "/api/v1/deployments/",
        {
            "name": "embed",
            "cluster": cluster.pk,
            "model_version": v1.pk,
            "engine": "reference",
            "engine_args": [],
            "replicas": 2,
            "port": processes.free_port(),
            "placement": {"mode": "auto", "gpus_per_replica": 1, "min_free_gib": 0},
        },
        format="json",
    )
    assert created.status_code == 201, created.json()
    deployment = Deployment.objects.get(pk=created.json()["id"])
    processes.wait_for(
        lambda: workers_in(deployment.pk, "ready"), timeout=90, what="both workers ready"
    )
    route = Route.objects.create(name="embed")
    RouteTarget.objects.create(route=route, deployment=deployment, weight=100)
    key = consumer_key()
    published(gateway)
    body = {"model": "embed", "input": "steady load"}
    assert http("POST", f"{gateway.url}/v1/embeddings", body, key)[0] == 200

    results: list[int] = []
    codes: list = []
    stop = threading.Event()

    def load():
        while not stop.is_set():
            status, answer, _ = http("POST", f"{gateway.url}/v1/embeddings", body, key)
            results.append(status)
            if status != 200:
                codes.append(
                    (
                        status,
                        answer.get("error", {}).get("code")
                        if isinstance(answer, dict)
                        else answer[:100],
                    )
                )

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        v2 = register(admin_api, model, "v2", model_root)
        rolled = admin_api.post(
            f"/api/v1/deployments/{deployment.pk}/rollout/",
            {"model_version": v2.pk},
            format="json",
        )
        assert rolled.status_code == 200, rolled.json()
        processes.wait_for(
            lambda: (
                Deployment.objects.get(pk=deployment.pk).rollout_state == "idle"
                and {w.model_version_id for w in workers_in(deployment.pk, "ready") or []}
                == {v2.pk}
            ),
            timeout=180,
            what="the rollout to v2 done",
        )
        during = len(results)
        # Keep the load on a little past the last stop (the drain), then end it.
        processes.wait_for(lambda: len(results) > during + 50, what="more requests after it")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    failed = [status for status in results if status != 200]
    assert len(results) > 100
    assert failed == [], f"{len(failed)} of {len(results)} requests failed: {set(codes)}"
