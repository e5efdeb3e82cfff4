"""GPU readings through NVML, in two layers.

`NvmlReader` only talks to NVML and returns plain, JSON-ready dicts of raw
readings: each value is what NVML answered, or an error marker
`{"nvml_error": <code>, "message": "..."}` when the call failed. The parse
functions turn those dicts into protocol shapes without touching NVML, so
they are tested against readings captured on real hardware
(tests/agents/fixtures/nvml_h100.json) on machines that have no GPU.
"""

from __future__ import annotations

import time
from typing import Any

# NVML return codes the parser cares about (nvml.h); copied so parsing does not
# need pynvml installed.
NOT_SUPPORTED = 3
TIMEOUT = 10
FUNCTION_NOT_FOUND = 13
GPU_IS_LOST = 15

# Bits of nvmlDeviceGetCurrentClocksEventReasons (formerly "throttle reasons").
_THROTTLE_BITS = (
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
    (0x200, "board_limit"),
    (0x400, "reliability"),
)
_KNOWN_THROTTLE_MASK = 0x7FF

# Readings of a sample, in the order a fault message lists them.
SAMPLE_FIELDS = (
    "temperature",
    "utilization_gpu",
    "utilization_memory",
    "memory_used",
    "memory_total",
    "power_draw_mw",
    "power_limit_mw",
    "sm_clock",
    "fan",
    "throttle_reasons",
    "ecc_uncorrected",
    "xid_errors",
)

# A failed NVML init is retried at most this often; init can take a second
# and the driver is not coming back within one sweep.
_INIT_RETRY_S = 30.0
_MAX_FAULT_LEN = 500

Raw = dict[str, Any]


def is_error(value: Any) -> bool:
    return type(value) is dict and "nvml_error" in value


def _marker(exc: Exception) -> dict[str, Any]:
    return {"nvml_error": getattr(exc, "value", -1), "message": str(exc)}


# --- raw layer: the only code that calls NVML ---------------------------------


class NvmlReader:
    """Holds the NVML session and per-GPU handles, and reads raw values."""

    def __init__(self) -> None:
        import pynvml  # imported here so simulate mode and tests need no NVML

        self._nvml = pynvml
        # Renamed in NVML 12.2; older bindings only have the "throttle" name.
        self._clock_reasons = getattr(
            pynvml,
            "nvmlDeviceGetCurrentClocksEventReasons",
            getattr(pynvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None),
        )
        self._handles: list[Any] = []
        self._uuids: list[Any] = []
        # One event set per GPU, so an XID event needs no handle comparison to
        # be attributed; None where the driver refuses event registration
        # (common in containers and VMs).
        self._xid_sets: list[Any] = []
        self._xid_counts: list[int] = []
        # Xid codes drained since the last health read, per GPU (agents/health.py).
        self._xid_codes: list[list[int]] = []
        # Per GPU, the sample fields NVML answered NOT_SUPPORTED: asked once, not
        # every sweep (the fan of a fanless H200 cost 0.39 ms a sweep, issue 16).
        self._unsupported: list[dict[str, Any]] = []
        self._health: Any = None
        self.init_error: dict[str, Any] | None = None
        self._last_init_try = -_INIT_RETRY_S
        self._open()

    def _open(self) -> None:
        nv = self._nvml
        self._last_init_try = time.monotonic()
        try:
            nv.nvmlInit()
            count = nv.nvmlDeviceGetCount()
            self._handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except nv.NVMLError as exc:
            self.init_error = _marker(exc)
            self._handles = []
            return
        self.init_error = None
        self._uuids = [self._call(nv.nvmlDeviceGetUUID, h) for h in self._handles]
        self._xid_sets = [self._register_xid(h) for h in self._handles]
        self._xid_counts = [0] * len(self._handles)
        self._xid_codes = [[] for _ in self._handles]
        self._unsupported = [{} for _ in self._handles]
        from agents.health import NvmlHealthReader

        self._health = NvmlHealthReader(nv)

    def _register_xid(self, handle: Any) -> Any:
        nv = self._nvml
        try:
            event_set = nv.nvmlEventSetCreate()
            nv.nvmlDeviceRegisterEvents(handle, nv.nvmlEventTypeXidCriticalError, event_set)
            return event_set
        except nv.NVMLError as exc:
            return _marker(exc)

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            value = fn(*args)
        except self._nvml.NVMLError as exc:
            return _marker(exc)
        return value.decode() if isinstance(value, bytes) else value

    def _field(self, index: int, key: str, fn: Any, *args: Any) -> Any:
        """A sample reading, except that a field once NOT_SUPPORTED is not asked again."""
        known = self._unsupported[index]
        if key in known:
            return known[key]
        value = self._call(fn, *args)
        if is_error(value) and value["nvml_error"] in (NOT_SUPPORTED, FUNCTION_NOT_FOUND):
            known[key] = value
        return value

    def _ensure_open(self) -> bool:
        if self.init_error is not None and time.monotonic() - self._last_init_try > _INIT_RETRY_S:
            self._open()
        return self.init_error is None

    def read_facts(self) -> Raw:
        nv = self._nvml
        if not self._ensure_open():
            return {"init_error": self.init_error, "gpus": []}
        gpus = []
        for index, handle in enumerate(self._handles):
            memory = self._call(nv.nvmlDeviceGetMemoryInfo, handle)
            pci = self._call(nv.nvmlDeviceGetPciInfo, handle)
            mig = self._call(nv.nvmlDeviceGetMigMode, handle)
            gpus.append(
                {
                    "index": index,
                    "uuid": self._uuids[index],
                    "name": self._call(nv.nvmlDeviceGetName, handle),
                    "pci_bus_id": pci if is_error(pci) else _text(pci.busId),
                    "memory_total": memory if is_error(memory) else memory.total,
                    "power_limit_mw": self._call(nv.nvmlDeviceGetEnforcedPowerLimit, handle),
                    "mig_mode": mig if is_error(mig) else mig[0],
                }
            )
        return {
            "init_error": None,
            "driver_version": self._call(nv.nvmlSystemGetDriverVersion),
            "cuda_version": self._call(nv.nvmlSystemGetCudaDriverVersion),
            "gpus": gpus,
        }

    def read_sample(self) -> Raw:
        nv = self._nvml
        ts = time.time()
        if not self._ensure_open():
            return {"ts": ts, "init_error": self.init_error, "gpus": []}
        field = self._field
        gpus = []
        for index, handle in enumerate(self._handles):
            util = field(index, "utilization", nv.nvmlDeviceGetUtilizationRates, handle)
            memory = field(index, "memory", nv.nvmlDeviceGetMemoryInfo, handle)
            gpus.append(
                {
                    "index": index,
                    "uuid": self._uuids[index],
                    "temperature": field(
                        index, "temperature", nv.nvmlDeviceGetTemperature, handle, 0
                    ),
                    "utilization_gpu": util if is_error(util) else util.gpu,
                    "utilization_memory": util if is_error(util) else util.memory,
                    "memory_used": memory if is_error(memory) else memory.used,
                    "memory_total": memory if is_error(memory) else memory.total,
                    "power_draw_mw": field(
                        index, "power_draw_mw", nv.nvmlDeviceGetPowerUsage, handle
                    ),
                    "power_limit_mw": field(
                        index, "power_limit_mw", nv.nvmlDeviceGetEnforcedPowerLimit, handle
                    ),
                    "sm_clock": field(
                        index, "sm_clock", nv.nvmlDeviceGetClockInfo, handle, nv.NVML_CLOCK_SM
                    ),
                    "fan": field(index, "fan", nv.nvmlDeviceGetFanSpeed, handle),
                    "throttle_reasons": field(
                        index, "throttle_reasons", self._clock_reasons, handle
                    ),
                    "ecc_uncorrected": field(
                        index,
                        "ecc_uncorrected",
                        nv.nvmlDeviceGetTotalEccErrors,
                        handle,
                        nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                        nv.NVML_VOLATILE_ECC,
                    ),
                    "xid_errors": self._drain_xid(index),
                }
            )
        return {"ts": ts, "init_error": None, "gpus": gpus}

    def _drain_xid(self, index: int) -> Any:
        event_set = self._xid_sets[index]
        if is_error(event_set):
            return event_set
        nv = self._nvml
        # Bounded so a GPU spewing events cannot stall the sweep.
        for _ in range(64):
            try:
                event = nv.nvmlEventSetWait_v2(event_set, 0)
            except nv.NVMLError as exc:
                if getattr(exc, "value", None) == TIMEOUT:
                    break  # no more pending events
                return _marker(exc)
            self._xid_counts[index] += 1
            codes = self._xid_codes[index]
            if len(codes) < 64:  # kept until the next health read takes them
                codes.append(int(getattr(event, "eventData", 0)))
        return self._xid_counts[index]

    def xids_pending(self) -> bool:
        """Did a sweep drain an Xid the health read has not reported yet?"""
        return any(self._xid_codes)

    def read_health(self) -> list[Raw]:
        """Raw health records of every GPU (agents/health.py), with the Xids drained."""
        if not self._ensure_open():
            return []
        records = []
        for index, handle in enumerate(self._handles):
            codes, self._xid_codes[index] = self._xid_codes[index], []
            records.append(self._health.read_gpu(index, handle, self._uuids[index], codes))
        return records

    def close(self) -> None:
        if self.init_error is None:
            for event_set in self._xid_sets:
                if not is_error(event_set):
                    self._call(self._nvml.nvmlEventSetFree, event_set)
            self._call(self._nvml.nvmlShutdown)
        self._handles = []


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- pure layer: raw readings -> protocol shapes --------------------------------


def _value(raw: Raw, key: str, failed: list[tuple[str, str]]) -> Any:
    """The reading, or None; a failure other than "not supported" is recorded."""
    value = raw.get(key)
    if not is_error(value):
        return value
    if value["nvml_error"] not in (NOT_SUPPORTED, FUNCTION_NOT_FOUND):
        failed.append((key, value["message"]))
    return None


def decode_throttle_reasons(mask: int | None) -> list[str]:
    if mask is None:
        return []
    names = [name for bit, name in _THROTTLE_BITS if mask & bit]
    if mask & ~_KNOWN_THROTTLE_MASK:
        names.append("other")  # a bit newer than this agent
    return names


def _watts(milliwatts: Any) -> float | None:
    return None if milliwatts is None else round(milliwatts / 1000.0, 3)


def parse_gpu_sample(raw: Raw) -> dict[str, Any]:
    failed: list[tuple[str, str]] = []
    values = {key: _value(raw, key, failed) for key in SAMPLE_FIELDS}
    uuid = raw.get("uuid")
    if is_error(uuid):
        failed.insert(0, ("uuid", uuid["message"]))
        uuid = None
    fault = None
    if failed:
        first_message = failed[0][1]
        fields = ", ".join(key for key, _ in failed)
        fault = f"{first_message} ({fields})"[:_MAX_FAULT_LEN]
    return {
        "index": raw["index"],
        "uuid": uuid,
        "temperature": values["temperature"],
        "utilization_gpu": values["utilization_gpu"],
        "utilization_memory": values["utilization_memory"],
        "memory_used": values["memory_used"],
        "memory_total": values["memory_total"],
        "power_draw": _watts(values["power_draw_mw"]),
        "power_limit": _watts(values["power_limit_mw"]),
        "sm_clock": values["sm_clock"],
        "fan": values["fan"],
        "throttle_reasons": decode_throttle_reasons(values["throttle_reasons"]),
        "ecc_errors": values["ecc_uncorrected"],
        "xid_errors": values["xid_errors"],
        "fault": fault,
    }


def parse_sample(raw: Raw) -> tuple[list[dict[str, Any]], list[str]]:
    """GPU entries of a SAMPLE and the node-level faults they imply."""
    if raw.get("init_error"):
        return [], [f"nvml: {raw['init_error']['message']}"]
    gpus = [parse_gpu_sample(g) for g in raw["gpus"]]
    faults = [f"gpu {g['index']}: {g['fault']}" for g in gpus if g["fault"]]
    return gpus, faults


def format_cuda_version(version: Any) -> str | None:
    """NVML reports CUDA 12.4 as 12040."""
    if type(version) is not int or version <= 0:
        return None
    return f"{version // 1000}.{version % 1000 // 10}"


def parse_facts(raw: Raw) -> dict[str, Any]:
    """The GPU part of FACTS: driver_version, cuda_version and gpus."""
    if raw.get("init_error"):
        return {"driver_version": None, "cuda_version": None, "gpus": []}
    ignored: list[tuple[str, str]] = []
    gpus = []
    for g in raw["gpus"]:
        uuid = _value(g, "uuid", ignored)
        if uuid is None:
            continue  # a card that cannot name itself is reported through samples' faults
        mig_mode = _value(g, "mig_mode", ignored)
        gpus.append(
            {
                "index": g["index"],
                "uuid": uuid,
                "name": _value(g, "name", ignored),
                "memory_total": _value(g, "memory_total", ignored),
                "pci_bus_id": _value(g, "pci_bus_id", ignored),
                "power_limit": _watts(_value(g, "power_limit_mw", ignored)),
                "mig_mode": None if mig_mode is None else bool(mig_mode),
            }
        )
    driver = raw.get("driver_version")
    return {
        "driver_version": None if is_error(driver) else driver,
        "cuda_version": format_cuda_version(raw.get("cuda_version")),
        "gpus": gpus,
    }


class NvmlSource:
    """GPU source for the collector, backed by real NVML."""

    simulated = False

    def __init__(self) -> None:
        self.reader = NvmlReader()

    def facts(self) -> dict[str, Any]:
        return parse_facts(self.reader.read_facts())

    def sample(self) -> tuple[list[dict[str, Any]], list[str]]:
        return parse_sample(self.reader.read_sample())

    def health_due(self) -> bool:
        """An Xid waits for no schedule: the next sweep carries a health read."""
        return self.reader.xids_pending()

    def health(self) -> list[dict[str, Any]]:
        from agents.health import parse_health

        return parse_health(self.reader.read_health())

    def close(self) -> None:
        self.reader.close()
