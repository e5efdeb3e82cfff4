"""Accelerator vendors: how the agent reads them and pins a worker to its devices.

A GPU source (agents/collect.py `GpuSource`: facts, sample, optional health)
exists per vendor: NVIDIA through NVML (agents/nvml.py, agents/health.py) and
Huawei Ascend through `npu-smi info` (below). Each vendor also says which
environment variable pins a worker's devices and which engines run on it.

Only the NVIDIA path has run on real hardware. The Ascend parser is tested
against `npu-smi info` output from public issue reports
(tests/agents/fixtures/ascend/SOURCES.md), the AMD source against amdsmi
answers from public reports (tests/agents/fixtures/amd/amdsmi_answers.json);
neither has run on such a card. Hygon DCU (hy-smi) is not built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from agents.preflight import run_command


@dataclass(frozen=True)
class Vendor:
    name: str
    # The variable that limits a worker to its devices, as that vendor's runtime reads it.
    pin_variable: str
    # Engines (agents/workers/engines.py names) known to run on this vendor's devices.
    engines: frozenset[str]


VENDORS = {
    "nvidia": Vendor(
        "nvidia",
        "CUDA_VISIBLE_DEVICES",
        frozenset({"vllm", "sglang", "llama.cpp", "generic", "reference"}),
    ),
    # vLLM-Ascend is vLLM with the Ascend plugin: the agent starts it as `vllm`.
    "ascend": Vendor(
        "ascend", "ASCEND_RT_VISIBLE_DEVICES", frozenset({"vllm", "generic", "reference"})
    ),
    # vLLM's ROCm build. HIP_VISIBLE_DEVICES only: ROCR_VISIBLE_DEVICES is applied
    # first and HIP's indexes count within what it left, so setting both to the
    # same list would pin the wrong devices for any list but 0..n-1.
    "amd": Vendor("amd", "HIP_VISIBLE_DEVICES", frozenset({"vllm", "generic", "reference"})),
}


def pin_environment(vendor: str, devices: list[int]) -> dict[str, str]:
    """The environment that limits a worker to `devices` on `vendor`'s runtime."""
    return {VENDORS[vendor].pin_variable: ",".join(str(d) for d in devices)}


# --- Huawei Ascend: npu-smi info ---------------------------------------------------

NPU_SMI_INFO = ["npu-smi", "info"]
_FIRST_ROW = re.compile(
    r"^\|\s*(?P<npu>\d+)\s+(?P<name>\S+)\s*\|\s*(?P<health>[^|]+?)\s*\|"
    r"\s*(?P<power>[-\d.]+)\s+(?P<temp>[-\d.]+)\s+\d+\s*/\s*\d+\s*\|$"
)
_SECOND_ROW = re.compile(
    r"^\|\s*(?P<chip>\d+)(?:\s+(?P<phy>\d+))?\s*\|\s*(?P<bus>\S+)\s*\|"
    r"\s*(?P<aicore>[-\d.]+)\s+\d+\s*/\s*\d+\s+(?P<hbm_used>\d+)\s*/\s*(?P<hbm_total>\d+)\s*\|$"
)
MB = 2**20  # npu-smi's "(MB)" columns, read as MiB as its totals (65536) suggest


def _number(text: str) -> float | None:
    return None if text == "-" else float(text)


def parse_npu_smi_info(text: str) -> list[dict[str, Any]]:
    """One entry per chip of the device table of `npu-smi info`, in listing order.

    Only the columns of the sourced outputs are read: name, health, power (W, or
    "-"), temperature (°C), AI core use (%), HBM used and total. The process
    table below the device table, if present, is ignored.
    """
    chips: list[dict[str, Any]] = []
    pending: dict[str, Any] | None = None
    for line in text.splitlines():
        line = line.strip()
        first = _FIRST_ROW.match(line)
        if first:
            pending = first.groupdict()
            continue
        second = _SECOND_ROW.match(line)
        if second and pending is not None:
            row = {**pending, **second.groupdict()}
            chips.append(
                {
                    "index": len(chips),
                    "npu": int(row["npu"]),
                    "chip": int(row["chip"]),
                    "phy_id": None if row["phy"] is None else int(row["phy"]),
                    "name": row["name"],
                    "health": row["health"],
                    "bus_id": row["bus"],
                    "power_w": _number(row["power"]),
                    "temperature": _number(row["temp"]),
                    "aicore_percent": _number(row["aicore"]),
                    "hbm_used": int(row["hbm_used"]) * MB,
                    "hbm_total": int(row["hbm_total"]) * MB,
                }
            )
            pending = None
    return chips


def _uuid(chip: dict[str, Any]) -> str:
    # npu-smi info prints no serial: NPU and chip numbers name the slot, stable
    # across reboots of the same host.
    return f"ascend-npu{chip['npu']}-chip{chip['chip']}"


def ascend_facts(chips: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "driver_version": None,
        "cuda_version": None,
        "gpus": [
            {
                "index": c["index"],
                "uuid": _uuid(c),
                "name": c["name"],
                "memory_total": c["hbm_total"],
                "pci_bus_id": None if "x" in c["bus_id"] else c["bus_id"],
                "power_limit": None,
                "mig_mode": False,
            }
            for c in chips
        ],
    }


def ascend_sample(chips: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    gpus = []
    for c in chips:
        fault = None if c["health"] == "OK" else f"npu-smi health: {c['health']}"[:500]
        gpus.append(
            {
                "index": c["index"],
                "uuid": _uuid(c),
                "temperature": c["temperature"],
                "utilization_gpu": c["aicore_percent"],
                "utilization_memory": None,
                "memory_used": min(c["hbm_used"], c["hbm_total"]),
                "memory_total": c["hbm_total"],
                "power_draw": c["power_w"],
                "power_limit": None,
                "sm_clock": None,
                "fan": None,
                "throttle_reasons": [],
                "ecc_errors": None,
                "xid_errors": None,
                "fault": fault,
            }
        )
    return gpus, [f"gpu {g['index']}: {g['fault']}" for g in gpus if g["fault"]]


class AscendSource:
    """GPU source for Ascend NPUs: one `npu-smi info` per sweep (a fixed argv, 5 s timeout).

    Never run on an Ascend card: a process per sweep is what the NVIDIA path
    avoids (docs/benchmarks.md); the DCMI library would be the cheap road.
    """

    simulated = False
    vendor = "ascend"

    def __init__(self, run=run_command) -> None:
        self._run = run

    def _chips(self) -> tuple[list[dict[str, Any]], str | None]:
        status, out = self._run(NPU_SMI_INFO, 5.0)
        if status != 0:
            return [], f"npu-smi: exit status {status}"
        return parse_npu_smi_info(out), None

    def facts(self) -> dict[str, Any]:
        return ascend_facts(self._chips()[0])

    def sample(self) -> tuple[list[dict[str, Any]], list[str]]:
        chips, error = self._chips()
        if error:
            return [], [error]
        return ascend_sample(chips)

    def close(self) -> None:
        pass


# --- AMD: the amdsmi Python library ---------------------------------------------------


def _percent(value: Any) -> float | None:
    """amdsmi answers "N/A" where a GPU has no such counter (e.g. in a VM guest)."""
    return float(value) if isinstance(value, (int, float)) else None


class AmdSource:
    """GPU source for AMD GPUs through amdsmi. Reads only the fields whose shape
    is sourced: name and bus id (facts), GFX and memory-controller activity
    (sample). Memory, power and temperature stay null until a capture on real
    hardware shows their units (amdsmi's power units differ between MI200 and
    MI300, and its own docs were corrected on them)."""

    simulated = False
    vendor = "amd"

    def __init__(self, amdsmi: Any = None) -> None:
        if amdsmi is None:
            import amdsmi  # only on AMD hosts; imported here so others need no ROCm
        self._smi = amdsmi
        self._smi.amdsmi_init()
        self._handles = list(self._smi.amdsmi_get_processor_handles())

    def _call(self, fn: str, handle: Any) -> Any:
        try:
            return getattr(self._smi, fn)(handle)
        except Exception as exc:  # AmdSmiLibraryException and friends
            return {"amdsmi_error": str(exc)[:200]}

    def facts(self) -> dict[str, Any]:
        gpus = []
        for index, handle in enumerate(self._handles):
            asic = self._call("amdsmi_get_gpu_asic_info", handle)
            bdf = self._call("amdsmi_get_gpu_device_bdf", handle)
            bdf = bdf if isinstance(bdf, str) else None
            gpus.append(
                {
                    "index": index,
                    # The bus id names the slot; amdsmi's UUID format was not sourced.
                    "uuid": f"amd-{bdf}" if bdf else f"amd-{index}",
                    "name": asic.get("market_name") if "amdsmi_error" not in asic else None,
                    "memory_total": None,
                    "pci_bus_id": bdf,
                    "power_limit": None,
                    "mig_mode": False,
                }
            )
        return {"driver_version": None, "cuda_version": None, "gpus": gpus}

    def sample(self) -> tuple[list[dict[str, Any]], list[str]]:
        gpus, faults = [], []
        for gpu in self.facts()["gpus"]:
            activity = self._call("amdsmi_get_gpu_activity", self._handles[gpu["index"]])
            fault = activity.get("amdsmi_error")
            gpus.append(
                {
                    "index": gpu["index"],
                    "uuid": gpu["uuid"],
                    "temperature": None,
                    "utilization_gpu": _percent(activity.get("gfx_activity")),
                    "utilization_memory": _percent(activity.get("umc_activity")),
                    "memory_used": None,
                    "memory_total": None,
                    "power_draw": None,
                    "power_limit": None,
                    "sm_clock": None,
                    "fan": None,
                    "throttle_reasons": [],
                    "ecc_errors": None,
                    "xid_errors": None,
                    "fault": fault,
                }
            )
            if fault:
                faults.append(f"gpu {gpu['index']}: {fault}")
        return gpus, faults

    def close(self) -> None:
        self._smi.amdsmi_shut_down()
