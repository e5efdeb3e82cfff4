"""Before a restart: are the worker's GPUs free of the previous run?

A crashed engine's child (or the engine itself, stuck in the driver) can keep
its GPU memory after the process group was signalled; restarting into that
GPU ends in out-of-memory again. `blockers` is the pure decision, fed by a
list of NVML compute processes; `wait_for_release` polls a source until the
GPUs are free or the bounded wait is over.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from agents.workers.procs import process_name

DEFAULT_WAIT_S = 30.0


@dataclass(frozen=True)
class GpuProcess:
    gpu: int
    pid: int
    used_memory: int | None  # bytes; None where NVML cannot tell (some vGPU setups)
    name: str | None = None


def blockers(
    processes: Iterable[GpuProcess],
    gpus: Collection[int],
    *,
    hangar_pids: Collection[int],
) -> list[GpuProcess]:
    """Compute processes on `gpus` that are not another live Hangar worker.

    The previous run's processes are blockers too: they should be gone.
    """
    return [p for p in processes if p.gpu in gpus and p.pid not in hangar_pids]


def describe(blocking: Iterable[GpuProcess], old_pids: Collection[int]) -> str:
    parts = []
    for p in blocking:
        who = f"pid {p.pid} ({p.name or 'unknown'})"
        origin = "left by the previous run" if p.pid in old_pids else "not a Hangar worker"
        memory = "" if p.used_memory is None else f", {p.used_memory / 2**20:.0f} MiB"
        parts.append(f"GPU {p.gpu} held by {who}{memory}, {origin}")
    return "; ".join(parts)


def gpu_process(gpu: int, pid: int, used_gpu_memory, name: str | None = None) -> GpuProcess:
    """One NVML compute-process record (tests feed it records captured on H200s)."""
    if not isinstance(used_gpu_memory, int) or used_gpu_memory >= 2**63:
        used_gpu_memory = None  # NVML_VALUE_NOT_AVAILABLE, or None from the bindings
    return GpuProcess(gpu, pid, used_gpu_memory, name or process_name(pid))


class NvmlProcesses:
    """Compute processes per GPU through NVML (pynvml from nvidia-ml-py)."""

    def __init__(self) -> None:
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()

    def __call__(self, gpus: Collection[int]) -> list[GpuProcess]:
        nvml = self._nvml
        found = []
        for index in gpus:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            for info in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                found.append(gpu_process(index, info.pid, info.usedGpuMemory))
        return found

    def close(self) -> None:
        with contextlib.suppress(Exception):  # shutting down anyway
            self._nvml.nvmlShutdown()


def simulated_processes(gpus: Collection[int]) -> list[GpuProcess]:
    """Simulated GPUs: nothing ever holds them."""
    return []


def wait_for_release(
    source: Callable[[Collection[int]], list[GpuProcess]],
    gpus: Collection[int],
    hangar_pids: Callable[[], Collection[int]],
    *,
    timeout_s: float = DEFAULT_WAIT_S,
    poll_s: float = 0.5,
    cancelled: Callable[[], bool] = lambda: False,
) -> list[GpuProcess]:
    """Poll until nothing blocks `gpus` (returns []) or the wait ends (returns the blockers)."""
    deadline = time.monotonic() + timeout_s
    while True:
        blocking = blockers(source(gpus), gpus, hangar_pids=hangar_pids())
        if not blocking or time.monotonic() >= deadline or cancelled():
            return blocking
        time.sleep(poll_s)
