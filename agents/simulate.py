"""Simulated GPUs for demos and tests on machines without NVIDIA hardware.

Values move like a busy inference box: utilization wanders as a bounded random
walk, temperature and power lag behind it, memory fills and drains slowly.
Everything is marked `simulated: true` so the console never mistakes it for
real telemetry.
"""

from __future__ import annotations

import random
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any

_MEMORY_TOTAL = 85_520_809_984  # an H100 80GB HBM3, as NVML reports it
_POWER_LIMIT_W = 700.0
_IDLE_W = 70.0
_AMBIENT_C = 30.0
_MAX_SM_CLOCK = 1980


def _clamp(value: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, value))


@dataclass
class _SimulatedGpu:
    index: int
    uuid: str
    rng: random.Random
    utilization: float = 0.0
    temperature: float = _AMBIENT_C + 5
    memory_fraction: float = 0.05
    power: float = _IDLE_W

    def step(self) -> dict[str, Any]:
        self.utilization = _clamp(self.utilization + self.rng.gauss(0, 12), 0, 100)
        load = self.utilization / 100
        # First-order lag: temperature and power approach their targets over
        # a few sweeps instead of jumping with utilization.
        self.temperature += 0.2 * (_AMBIENT_C + 50 * load - self.temperature)
        target_power = _IDLE_W + (_POWER_LIMIT_W - _IDLE_W) * load
        self.power += 0.5 * (target_power - self.power) + self.rng.gauss(0, 5)
        self.power = _clamp(self.power, 0.0, _POWER_LIMIT_W)
        self.memory_fraction = _clamp(self.memory_fraction + self.rng.gauss(0, 0.02), 0.01, 0.98)
        throttled = ["sw_power_cap"] if self.power > 0.95 * _POWER_LIMIT_W else []
        if self.utilization < 1:
            throttled.append("gpu_idle")
        return {
            "index": self.index,
            "uuid": self.uuid,
            "temperature": round(self.temperature),
            "utilization_gpu": round(self.utilization),
            "utilization_memory": round(self.utilization * 0.6),
            "memory_used": int(_MEMORY_TOTAL * self.memory_fraction),
            "memory_total": _MEMORY_TOTAL,
            "power_draw": round(self.power, 3),
            "power_limit": _POWER_LIMIT_W,
            "sm_clock": round(345 + (_MAX_SM_CLOCK - 345) * min(1.0, load * 3)),
            "fan": None,  # like the datacenter cards it imitates
            "throttle_reasons": throttled,
            "ecc_errors": 0,
            "xid_errors": 0,
            "fault": None,
        }


@dataclass
class SimulatedSource:
    """GPU source for the collector that invents `count` GPUs."""

    count: int
    seed: int | None = None
    simulated: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        # Stable per seed so a restarted demo agent keeps its GPU identities.
        self._gpus = [
            _SimulatedGpu(i, f"GPU-{uuidlib.UUID(int=rng.getrandbits(128), version=4)}", rng)
            for i in range(self.count)
        ]

    def facts(self) -> dict[str, Any]:
        return {
            "driver_version": "simulated",
            "cuda_version": None,
            "gpus": [
                {
                    "index": g.index,
                    "uuid": g.uuid,
                    "name": "Simulated H100 80GB HBM3",
                    "memory_total": _MEMORY_TOTAL,
                    "pci_bus_id": f"00000000:{0x19 + g.index:02X}:00.0",
                    "power_limit": _POWER_LIMIT_W,
                    "mig_mode": False,
                }
                for g in self._gpus
            ],
        }

    def sample(self) -> tuple[list[dict[str, Any]], list[str]]:
        return [g.step() for g in self._gpus], []

    def close(self) -> None:
        pass
