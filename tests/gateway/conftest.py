"""Real gateway processes, real reference engines as workers, real Redis and PostgreSQL."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from apps.deployments.models import Deployment, Worker, WorkerState
from apps.gateway import snapshot
from apps.gateway.keys import create_consumer_key
from apps.gateway.models import Route, RouteTarget
from apps.inventory.models import Node, NodeState
from tests.deployments.conftest import ready_version
from tests.support import processes


def http(method: str, url: str, body=None, key: str | None = None, headers=None, timeout=30):
    """(status, parsed JSON or text, headers) of one request, without raising on 4xx/5xx."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw, status, got = response.read(), response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        raw, status, got = exc.read(), exc.code, dict(exc.headers)
    try:
        return status, json.loads(raw), got
    except ValueError:
        return status, raw.decode(errors="replace"), got


class Gateway:
    def __init__(self, proc, port: int, admin_port: int) -> None:
        self.proc, self.port, self.admin_port = proc, port, admin_port
        self.url = f"http://127.0.0.1:{port}"
        self.admin = f"http://127.0.0.1:{admin_port}"

    def health(self) -> dict:
        return http("GET", f"{self.admin}/healthz")[1]

    def generation(self) -> int:
        return self.health().get("snapshot_generation") or 0

    def wait_for_generation(self, generation: int) -> None:
        processes.wait_for(
            lambda: self.generation() >= generation,
            what=f"gateway at snapshot {generation}",
            process=self.proc,
        )


@pytest.fixture
def start_gateway(transactional_db, tmp_path):
    """start_gateway(**env) -> a running `hangar-gateway`; stopped after the test."""
    started = []

    def start(**env) -> Gateway:
        port, admin_port = processes.free_port(), processes.free_port()
        proc = processes.start(
            [str(processes.BIN / "hangar-gateway")],
            processes.console_env(
                HANGAR_GATEWAY_BIND=f"127.0.0.1:{port}",
                HANGAR_GATEWAY_ADMIN_BIND=f"127.0.0.1:{admin_port}",
                **env,
            ),
            tmp_path / f"gateway-{len(started)}.log",
        )
        gateway = Gateway(proc, port, admin_port)
        started.append(gateway)
        processes.wait_for(
            lambda: "status" in gateway.health(), what="the gateway to answer", process=proc
        )
        return gateway

    yield start
    for gateway in started:
        processes.stop(gateway.proc)


@pytest.fixture
def gateway(start_gateway):
    return start_gateway()


@pytest.fixture
def model_dir(tmp_path) -> Path:
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "README.md").write_text("a model version directory\n")
    return directory


@pytest.fixture
def engines(tmp_path, model_dir):
    """engines(secret="", *flags) -> (port, process) of a real reference engine."""
    started = []

    def start(secret: str = "", *flags: str):
        port = processes.free_port()
        argv = [sys.executable, "-m", "agents.reference_engine", "--model", str(model_dir)]
        argv += ["--port", str(port), *flags]
        env = processes.console_env()
        env.pop("HANGAR_ENGINE_API_KEY", None)
        if secret:
            env["HANGAR_ENGINE_API_KEY"] = secret
        proc = processes.start(argv, env, tmp_path / f"engine-{port}.log")
        started.append(proc)
        processes.wait_for(
            lambda: http("GET", f"http://127.0.0.1:{port}/health")[1].get("status") == "ok",
            what="the reference engine ready",
            process=proc,
        )
        return port, proc

    yield start
    for proc in started:
        processes.stop(proc)


@pytest.fixture
def serving(transactional_db, cluster, engines):
    """serving(route, workers=1, **deployment fields) -> a deployment of real engines
    behind a route, recorded as ready workers of an online node."""
    node = Node.objects.create(
        cluster=cluster, hostname="gpu-gw", state=NodeState.ONLINE, worker_host="127.0.0.1"
    )
    version = ready_version()
    made = {}

    def serve(route_name: str, workers: int = 1, deployment_name: str | None = None, weight=100,
              fallback: Route | None = None, flags=()):  # fmt: skip
        name = deployment_name or f"{route_name}-deployment"
        deployment = Deployment.objects.create(
            name=name, cluster=cluster, model_version=version, engine="reference", port=9000
        )
        for slot in range(workers):
            secret = f"secret-{name}-{slot}-" + "x" * 16
            port, _proc = engines(secret, *flags)
            worker = Worker(
                deployment=deployment, node=node, model_version=version, slot=slot, port=port,
                state=WorkerState.READY, engine_secret=secret,
            )  # fmt: skip
            worker.save()
        route, _ = Route.objects.get_or_create(name=route_name, defaults={"fallback": fallback})
        RouteTarget.objects.create(route=route, deployment=deployment, weight=weight)
        made[name] = deployment
        return deployment

    return serve


@pytest.fixture
def consumer_key(make_user):
    """consumer_key(**options) -> the raw key of a new key owned by a user."""
    owner = make_user("student")

    def make(**options) -> str:
        options.setdefault("all_routes", True)
        options.setdefault("days", 30)
        _key, raw = create_consumer_key(name=options.pop("name", "test"), user=owner, **options)
        return raw

    return make


def published(gateway: Gateway) -> None:
    """Publish now and wait until this gateway serves that snapshot."""
    gateway.wait_for_generation(snapshot.publish())
