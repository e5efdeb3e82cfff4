"""Fixtures for the agent's tests. They need no Django: run with `-p no:django`."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from tests.agents.agent_helpers import FIXTURES, FakeConsole


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
