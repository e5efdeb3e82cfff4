"""Helpers for the worker supervisor's tests: a model on disk, specs, waiting."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents import protocol
from agents.workers import procs
from agents.workers.supervisor import Supervisor, SupervisorConfig
from tests.agents.agent_helpers import WAIT_S

FAKE_ENGINE = str(Path(__file__).resolve().parent / "fake_engine.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(root: Path, name: str = "tiny", size: int = 3 * 2**20) -> dict[str, Any]:
    """A model directory under `root` with two files; returns WORKER_SPEC.model."""
    directory = root / name / "v1"
    directory.mkdir(parents=True)
    files = []
    for filename, data in (
        ("weights.bin", os.urandom(size)),
        ("config.json", b'{"hidden_size": 8}'),
    ):
        (directory / filename).write_bytes(data)
        files.append(
            {"path": filename, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        )
    return {"version_id": 1, "path": str(directory), "files": files}


def fake_spec(model: dict[str, Any], *engine_flags: str, worker_id: int = 1, **extra: Any):
    """A generic-engine spec running fake_engine.py with `engine_flags`."""
    spec = {
        "worker_id": worker_id,
        "deployment_id": 7,
        "engine": "generic",
        "engine_args": [],
        "model": model,
        "gpus": [0, 1],
        "port": free_port(),
        "health_path": "/health",
        "command": [sys.executable, FAKE_ENGINE, "--port", "{port}", *engine_flags],
    }
    spec.update(extra)
    return spec


def fast_config(model_root: Path, **overrides: Any) -> SupervisorConfig:
    """Short intervals so the tests are quick; nothing here is asserted on time."""
    values = {
        "model_roots": [str(model_root)],
        "simulate": True,
        "health_interval_s": 0.1,
        "health_timeout_s": 1.0,
        "unhealthy_after": 2,
        "metrics_interval_s": 0.2,
        "tick_s": 0.05,
        "backoff_base_s": 0.1,
        "backoff_cap_s": 0.4,
        "stop_grace_s": 1.0,
        "gpu_release_wait_s": 0.5,
    }
    values.update(overrides)
    return SupervisorConfig(**values)


class Recorder:
    """Collects every status the supervisor emits; checks each against the protocol."""

    def __init__(self) -> None:
        self.statuses: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, status: dict[str, Any]) -> None:
        try:
            protocol.validate_worker_status(status)
        except protocol.ProtocolError as exc:
            self.errors.append(str(exc))
        with self._lock:
            self.statuses.append(status)

    def states(self, worker_id: int = 1) -> list[str]:
        with self._lock:
            return [s["state"] for s in self.statuses if s["worker_id"] == worker_id]


def wait_until(predicate: Callable[[], Any], timeout: float = WAIT_S, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def wait_state(sup: Supervisor, state: str, worker_id: int = 1, **match: Any) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        runner = sup.runners.get(worker_id)
        if runner is None:
            return None
        status = runner.snapshot()
        if status["state"] == state and all(status[k] == v for k, v in match.items()):
            return status
        return None

    return wait_until(check, what=f"worker {worker_id} {state} {match}")


def op() -> str:
    return str(uuid.uuid4())


def start(sup: Supervisor, spec: dict[str, Any], operation_id: str | None = None) -> dict:
    return sup.handle({"verb": "start_worker", "operation_id": operation_id or op(), "spec": spec})


def stop(sup: Supervisor, worker_id: int = 1, operation_id: str | None = None) -> dict:
    return sup.handle(
        {"verb": "stop_worker", "operation_id": operation_id or op(), "worker_id": worker_id}
    )


def kill_group(pid: int | None) -> None:
    """Teardown: end a worker that a test left running on purpose."""
    if pid is None:
        return
    for member in procs.group_members(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)
