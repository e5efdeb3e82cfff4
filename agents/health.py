"""GPU health readings through NVML, in the same two layers as agents/nvml.py.

`NvmlHealthReader` calls NVML and returns, per GPU, each field's raw value or
the NVML error marker it raised, plus how long each call took: the format of
the capture tool (agents/tools/capture_health.py) and of the fixtures
(tests/agents/fixtures/nvml_health_*.json). `parse_gpu_health` turns one such
raw record into the protocol's `health` entry without touching NVML.

Health fields change slowly (an ECC count, a link's width) or are costly
(NVLink: one call per link and counter), so the collector reads them on their
own schedule (agents/collect.py HEALTH_INTERVAL_S), not with every 1 Hz sample. Xid events are
the exception: they are drained from an NVML event set on every sweep (see
NvmlReader), so none is lost between health reads.

A field that NVML answers NOT_SUPPORTED (or that the bindings lack) is learnt
once per GPU and never asked again; it is reported as unsupported, never as 0.
"""

from __future__ import annotations

import time
from typing import Any

from agents.nvml import FUNCTION_NOT_FOUND, NOT_SUPPORTED, decode_throttle_reasons, is_error

# nvml.h constants, copied so parsing needs no pynvml.
MEMORY_ERROR_CORRECTED = 0
MEMORY_ERROR_UNCORRECTED = 1
VOLATILE_ECC = 0
AGGREGATE_ECC = 1
PAGE_RETIREMENT_MULTIPLE_SBE = 0
PAGE_RETIREMENT_DBE = 1
NVLINK_MAX_LINKS = 18
# nvmlNvLinkErrorCounter_t
NVLINK_COUNTERS = (
    ("replay", 0),  # NVML_NVLINK_ERROR_DL_REPLAY
    ("recovery", 1),  # NVML_NVLINK_ERROR_DL_RECOVERY
    ("crc_flit", 2),  # NVML_NVLINK_ERROR_DL_CRC_FLIT
    ("crc_data", 3),  # NVML_NVLINK_ERROR_DL_CRC_DATA
)

# Scalar fields of a health record, in the order they are read and reported.
SCALAR_FIELDS = (
    "persistence_mode",
    "ecc_mode",
    "ecc_volatile_corrected",
    "ecc_volatile_uncorrected",
    "ecc_aggregate_corrected",
    "ecc_aggregate_uncorrected",
    "retired_pages_single_bit",
    "retired_pages_double_bit",
    "retired_pages_pending",
    "remapped_rows_correctable",
    "remapped_rows_uncorrectable",
    "remapped_rows_pending",
    "remapped_rows_failure",
    "throttle_reasons",
    "pcie_replay_counter",
    "pcie_link_gen",
    "pcie_link_gen_max",
    "pcie_link_width",
    "pcie_link_width_max",
)
BOOLEAN_FIELDS = frozenset(
    {
        "persistence_mode",
        "ecc_mode",
        "retired_pages_pending",
        "remapped_rows_pending",
        "remapped_rows_failure",
    }
)
_UNSUPPORTED_CODES = (NOT_SUPPORTED, FUNCTION_NOT_FOUND)
_MAX_MESSAGE = 200

Raw = dict[str, Any]


def _marker(exc: Exception) -> dict[str, Any]:
    return {"nvml_error": getattr(exc, "value", -1), "message": str(exc)}


def _unsupported(value: Any) -> bool:
    return is_error(value) and value["nvml_error"] in _UNSUPPORTED_CODES


# --- raw layer -----------------------------------------------------------------


class NvmlHealthReader:
    """Reads the health fields of GPUs whose handles an NvmlReader opened.

    `unsupported` remembers, per GPU index, each field NVML refused with
    NOT_SUPPORTED: the next read returns the same marker without a call (a
    fanless SXM part answers NOT_SUPPORTED to the same question forever).
    """

    def __init__(self, nvml: Any) -> None:
        self._nv = nvml
        self.unsupported: dict[int, dict[str, Any]] = {}

    def _calls(self, handle: Any) -> list[tuple[str, Any, tuple]]:
        nv = self._nv
        clock_reasons = getattr(
            nv,
            "nvmlDeviceGetCurrentClocksEventReasons",
            getattr(nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None),
        )

        def fn(name: str) -> Any:
            return getattr(nv, name, None)

        ecc = fn("nvmlDeviceGetTotalEccErrors")
        pages = fn("nvmlDeviceGetRetiredPages")
        return [
            ("persistence_mode", fn("nvmlDeviceGetPersistenceMode"), (handle,)),
            ("ecc_mode", fn("nvmlDeviceGetEccMode"), (handle,)),
            ("ecc_volatile_corrected", ecc, (handle, MEMORY_ERROR_CORRECTED, VOLATILE_ECC)),
            ("ecc_volatile_uncorrected", ecc, (handle, MEMORY_ERROR_UNCORRECTED, VOLATILE_ECC)),
            ("ecc_aggregate_corrected", ecc, (handle, MEMORY_ERROR_CORRECTED, AGGREGATE_ECC)),
            (
                "ecc_aggregate_uncorrected",
                ecc,
                (handle, MEMORY_ERROR_UNCORRECTED, AGGREGATE_ECC),
            ),
            ("retired_pages_single_bit", pages, (handle, PAGE_RETIREMENT_MULTIPLE_SBE)),
            ("retired_pages_double_bit", pages, (handle, PAGE_RETIREMENT_DBE)),
            ("retired_pages_pending", fn("nvmlDeviceGetRetiredPagesPendingStatus"), (handle,)),
            ("remapped_rows", fn("nvmlDeviceGetRemappedRows"), (handle,)),
            ("throttle_reasons", clock_reasons, (handle,)),
            ("pcie_replay_counter", fn("nvmlDeviceGetPcieReplayCounter"), (handle,)),
            ("pcie_link_gen", fn("nvmlDeviceGetCurrPcieLinkGeneration"), (handle,)),
            ("pcie_link_gen_max", fn("nvmlDeviceGetMaxPcieLinkGeneration"), (handle,)),
            ("pcie_link_width", fn("nvmlDeviceGetCurrPcieLinkWidth"), (handle,)),
            ("pcie_link_width_max", fn("nvmlDeviceGetMaxPcieLinkWidth"), (handle,)),
        ]

    def _call(self, index: int, key: str, fn: Any, args: tuple, timings: dict) -> Any:
        known = self.unsupported.setdefault(index, {})
        if key in known:
            return known[key]
        if fn is None:  # bindings older than the field
            value: Any = {"nvml_error": FUNCTION_NOT_FOUND, "message": "Function Not Found"}
        else:
            t0 = time.perf_counter()
            try:
                value = fn(*args)
            except self._nv.NVMLError as exc:
                value = _marker(exc)
            timings[key] = round((time.perf_counter() - t0) * 1e6, 1)
        if _unsupported(value):
            known[key] = value
        return _plain(value)

    def read_gpu(self, index: int, handle: Any, uuid: Any, xids: list[int]) -> Raw:
        """One GPU's raw health record; `xids` are the Xid codes drained since the last."""
        timings: dict[str, float] = {}
        raw: Raw = {"index": index, "uuid": uuid, "xids": list(xids)}
        for key, fn, args in self._calls(handle):
            raw[key] = self._call(index, key, fn, args, timings)
        links = []
        state_fn = getattr(self._nv, "nvmlDeviceGetNvLinkState", None)
        counter_fn = getattr(self._nv, "nvmlDeviceGetNvLinkErrorCounter", None)
        for link in range(NVLINK_MAX_LINKS):
            state = self._call(index, f"nvlink.{link}.state", state_fn, (handle, link), timings)
            if is_error(state):
                # Links are numbered from 0; the first unsupported one ends the list
                # (a PCIe card answers NOT_SUPPORTED for link 0 already).
                if _unsupported(state):
                    if link == 0:
                        links.append({"link": 0, "state": state})
                    break
                links.append({"link": link, "state": state})
                continue
            entry: dict[str, Any] = {"link": link, "state": state}
            for name, code in NVLINK_COUNTERS:
                entry[name] = self._call(
                    index, f"nvlink.{link}.{name}", counter_fn, (handle, link, code), timings
                )
            links.append(entry)
        raw["nvlink"] = links
        raw["timing_us"] = timings
        return raw


def _plain(value: Any) -> Any:
    """JSON-ready: NVML structs and ctypes lists become numbers and lists."""
    if is_error(value) or value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return int(value)


# --- pure layer ------------------------------------------------------------------


def _read(raw: Raw, key: str, unsupported: list[str], failed: list[str]) -> Any:
    value = raw.get(key)
    if is_error(value):
        if value["nvml_error"] in _UNSUPPORTED_CODES:
            unsupported.append(key)
        else:
            failed.append(f"{key}: {value['message']}"[:_MAX_MESSAGE])
        return None
    return value


def _split_remapped_rows(raw: Raw) -> Raw:
    """nvmlDeviceGetRemappedRows answers (correctable, uncorrectable, pending, failure)."""
    raw = dict(raw)
    value = raw.pop("remapped_rows", None)
    names = (
        "remapped_rows_correctable",
        "remapped_rows_uncorrectable",
        "remapped_rows_pending",
        "remapped_rows_failure",
    )
    if is_error(value) or value is None:
        for name in names:
            raw[name] = value
    else:
        for name, part in zip(names, value, strict=True):
            raw[name] = part
    return raw


def parse_gpu_health(raw: Raw) -> dict[str, Any]:
    """The protocol's health entry for one GPU (docs/protocol.md, docs/health.md)."""
    raw = _split_remapped_rows(raw)
    unsupported: list[str] = []
    failed: list[str] = []
    health: dict[str, Any] = {"index": raw["index"], "uuid": raw.get("uuid")}
    if is_error(health["uuid"]):
        health["uuid"] = None
    for key in SCALAR_FIELDS:
        value = _read(raw, key, unsupported, failed)
        if key == "ecc_mode" and value is not None:
            value = value[0]  # (current, pending): the mode in force now
        if key in ("retired_pages_single_bit", "retired_pages_double_bit") and value is not None:
            value = len(value)  # NVML lists the retired pages' addresses
        if key == "throttle_reasons" and value is not None:
            value = decode_throttle_reasons(value)
        if key in BOOLEAN_FIELDS and value is not None:
            value = bool(value)
        health[key] = value
    links = []
    for entry in raw.get("nvlink") or ():
        state = entry["state"]
        if _unsupported(state):
            unsupported.append("nvlink")
            break
        prefix = f"nvlink.{entry['link']}"
        link: dict[str, Any] = {"link": entry["link"]}
        link["active"] = None if is_error(state) else bool(state)
        if is_error(state):
            failed.append(f"{prefix}.state: {state['message']}"[:_MAX_MESSAGE])
        for name, _code in NVLINK_COUNTERS:
            value = entry.get(name)
            if is_error(value):
                if value["nvml_error"] in _UNSUPPORTED_CODES:
                    if f"nvlink.{name}" not in unsupported:
                        unsupported.append(f"nvlink.{name}")
                else:
                    failed.append(f"{prefix}.{name}: {value['message']}"[:_MAX_MESSAGE])
                value = None
            link[name] = value
        links.append(link)
    health["nvlink"] = links
    health["xids"] = [int(x) for x in raw.get("xids") or ()][:64]
    health["unsupported"] = unsupported
    health["failed"] = failed[:16]
    return health


def parse_health(raw_gpus: list[Raw]) -> list[dict[str, Any]]:
    return [parse_gpu_health(g) for g in raw_gpus]
