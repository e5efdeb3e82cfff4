"""One sweep: GPU source + host readings -> a protocol SAMPLE; also FACTS."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

from agents import host, protocol

HEALTH_INTERVAL_S = 10.0
# A file holding seconds to add to this agent's sample timestamps, read at every
# sweep: the chaos suite steps a running agent's clock with it, as an NTP step
# or a wrong RTC would (docs/reliability.md). Unset in production.
CLOCK_OFFSET_FILE = "HANGAR_AGENT_CLOCK_OFFSET_FILE"

log = logging.getLogger("hangar.agent")


class GpuSource(Protocol):
    simulated: bool

    def facts(self) -> dict[str, Any]: ...

    def sample(self) -> tuple[list[dict[str, Any]], list[str]]: ...

    def close(self) -> None: ...


def open_source(
    simulate: int = 0, seed: int | None = None, accelerator: str = "nvidia"
) -> GpuSource:
    """The simulated source when `simulate` > 0, else the vendor's real one
    (agents/accelerators.py): NVML for "nvidia", `npu-smi` for "ascend", amdsmi for "amd"."""
    if simulate:
        from agents.simulate import SimulatedSource

        return SimulatedSource(simulate, seed=seed)
    if accelerator == "ascend":
        from agents.accelerators import AscendSource

        return AscendSource()
    if accelerator == "amd":
        from agents.accelerators import AmdSource

        return AmdSource()
    from agents.nvml import NvmlSource

    return NvmlSource()


def wall_clock() -> float:
    """This host's time for sample timestamps (time.time(), or stepped: CLOCK_OFFSET_FILE)."""
    path = os.environ.get(CLOCK_OFFSET_FILE)
    if not path:
        return time.time()
    try:
        with open(path) as f:
            return time.time() + float(f.read().strip() or 0)
    except (OSError, ValueError):
        return time.time()


class Collector:
    def __init__(
        self,
        source: GpuSource,
        workers_metrics: Callable[[], list[dict[str, Any]]] | None = None,
        worker_host: str | None = None,
        health_interval_s: float = HEALTH_INTERVAL_S,
    ) -> None:
        self.source = source
        self.worker_host = worker_host
        # The supervisor's latency per ready worker (WORKER_METRICS), if any.
        self.workers_metrics = workers_metrics
        self.host = host.HostSampler()
        self.seq = 0
        # Health fields (agents/health.py) are read on their own, slower schedule;
        # a source without them (the simulator) is asked nothing.
        self.health_interval_s = health_interval_s
        self._health_at = -health_interval_s

    def facts(self) -> dict[str, Any]:
        gpu_facts = self.source.facts()
        facts = {**host.facts(), **gpu_facts, "simulated": self.source.simulated}
        facts["accelerator"] = getattr(self.source, "vendor", "nvidia")
        if self.worker_host:
            facts["worker_host"] = self.worker_host
        return facts

    def sweep(self) -> dict[str, Any]:
        self.seq += 1
        ts = wall_clock()
        gpus, faults = self.source.sample()
        try:
            host_sample = self.host.sample()
        except OSError as exc:
            host_sample = dict.fromkeys(protocol.HOST_FIELDS)
            faults = [*faults, f"host: cannot read load: {exc}"]
        sample = {
            "seq": self.seq,
            "ts": ts,
            # A clock that NTP or a person cannot step: the console measures alert
            # durations with it (apps/alerts/evaluation.py), `ts` places the sample.
            "mono": round(time.monotonic(), 3),
            "simulated": self.source.simulated,
            "gpus": gpus,
            "host": host_sample,
            "faults": faults,
        }
        if self.workers_metrics is not None:
            sample["workers"] = self._workers()
        health = self._health()
        if health is not None:
            sample["health"] = health
        # Checking our own output costs ~tens of microseconds and means a
        # driver returning nonsense shows up as a fault on this node rather
        # than as the console refusing every message from it.
        try:
            protocol.validate_sample(sample)
        except protocol.ProtocolError as exc:
            sample["gpus"] = []
            sample["faults"] = [f"agent: discarded an invalid reading: {exc}"[:500]]
        return sample

    def _health(self) -> list[dict[str, Any]] | None:
        read = getattr(self.source, "health", None)
        if read is None:
            return None
        now = time.monotonic()
        due = getattr(self.source, "health_due", lambda: False)
        if now - self._health_at < self.health_interval_s and not due():
            return None
        self._health_at = now
        return read()

    def _workers(self) -> list[dict[str, Any]]:
        try:
            workers = self.workers_metrics()
            for i, metrics in enumerate(workers):
                protocol.validate_worker_metrics(metrics, f"sample.workers[{i}]")
            return workers
        except Exception:  # latency is worth less than the GPU readings beside it
            log.exception("worker metrics discarded")
            return []

    def close(self) -> None:
        self.source.close()
