"""Fixtures for the agent's tests. They need no Django: run with `-p no:django`."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from agents.workers.supervisor import Supervisor
from tests.agents.agent_helpers import FIXTURES, FakeConsole
from tests.agents.worker_helpers import Recorder, fast_config, kill_group, make_model


@pytest.fixture
def fake_console():
    console = FakeConsole().start()
    yield console
    console.close()


@pytest.fixture(scope="session")
def nvml_h100() -> dict[str, Any]:
    """Raw NVML readings captured on an H100 under a bf16 matmul load."""
    return json.loads((FIXTURES / "nvml_h100.json").read_text())


@pytest.fixture(scope="session")
def nvml_h100_idle() -> dict[str, Any]:
    """Raw NVML readings captured on the same H100, idle."""
    return json.loads((FIXTURES / "nvml_h100_idle.json").read_text())


@pytest.fixture
def nvml_h200x2() -> dict[str, Any]:
    """Two H200s, captured with a bf16 matmul loop on GPU 0 and GPU 1 idle."""
    return json.loads((FIXTURES / "nvml_h200x2.json").read_text())


@pytest.fixture
def gpu_crash_h200x2() -> dict[str, Any]:
    """agents/tools/capture_gpu_crash.py on two H200s: a real CUDA OOM and a holder."""
    return json.loads((FIXTURES / "gpu_crash_h200x2.json").read_text())


@pytest.fixture
def raw_sample(nvml_h100) -> dict[str, Any]:
    return copy.deepcopy(nvml_h100["raw_samples"][-1])


@pytest.fixture
def worker_node(tmp_path):
    """Supervisors on a fresh state dir (`.supervisor(**config)`), a model under its root;
    every worker they started is gone afterwards."""
    state_dir = tmp_path / "state"
    root = tmp_path / "models"
    model = make_model(root)
    made: list[Supervisor] = []
    recorder = Recorder()

    def supervisor(**overrides) -> Supervisor:
        sup = Supervisor(state_dir, fast_config(root, **overrides), on_status=recorder).start()
        made.append(sup)
        return sup

    class Node:
        pass

    n = Node()
    n.state_dir, n.root, n.model, n.recorder, n.supervisor = (
        state_dir,
        root,
        model,
        recorder,
        supervisor,
    )
    yield n
    pids = []
    for sup in made:
        for runner in list(sup.runners.values()):
            pids.append(runner.pid)
            runner.desired = "stopped"
        sup.close()
    for pid in pids:
        kill_group(pid)
    assert recorder.errors == []  # every status the supervisor emitted follows the protocol
