"""The agent <-> console wire protocol: message types, builders and validators.

docs/protocol.md is the prose version of this module; change both together.

The console imports the validators to check what agents send, on the ingest hot
path (1000 nodes x 8 GPUs at 1 Hz), so they are hand-written checks on exact
types rather than a schema library: no reflection, one pass, one new dict.
They are strict on purpose: an unknown key, a wrong type or an impossible
value is refused with a message that names the field, so a buggy or hostile
agent is noticed instead of polluting the console's time series. Additive
changes to the message shapes therefore bump PROTOCOL_VERSION.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

PROTOCOL_VERSION = 1

# Message types.
WELCOME = "welcome"  # console -> agent, once after accept
ERROR = "error"  # console -> agent, a message was refused; the connection stays
HELLO = "hello"  # agent -> console, after connecting and when facts change
TELEMETRY = "telemetry"  # agent -> console, one sample per sweep
BATCH = "batch"  # agent -> console, samples buffered during an outage
WORKER = "worker"  # agent -> console, a worker's status changed (or after hello)

# Websocket close code the console uses for an unknown or revoked credential.
CLOSE_CREDENTIAL_REFUSED = 4401
# ... and when it cannot take the stream now (its database is away): reconnect later.
CLOSE_TRY_AGAIN_LATER = 4503

# Bounds. A host with more GPUs than this is not a host we know how to build.
MAX_GPUS = 64
# Keeps one batch message well under the 1 MiB frame limit that websocket
# servers default to (8 GPUs x 120 samples is about 500 KB of JSON).
MAX_BATCH_SAMPLES = 120
MAX_FAULTS = 64
MAX_TEXT = 512

THROTTLE_REASONS = frozenset(
    {
        "gpu_idle",
        "applications_clocks_setting",
        "sw_power_cap",
        "hw_slowdown",
        "sync_boost",
        "sw_thermal_slowdown",
        "hw_thermal_slowdown",
        "hw_power_brake_slowdown",
        "display_clock_setting",
        "board_limit",
        "reliability",
        "other",
    }
)

# Sample timestamps outside this window are clock bugs, not data: 2001 .. 2096.
_TS_MIN = 1.0e9
_TS_MAX = 4.0e9
_BYTES_MAX = 2**50  # 1 PiB: far above any GPU or host memory, disk included
_WATTS_MAX = 10_000.0
_MHZ_MAX = 10_000
_COUNTER_MAX = 2**63 - 1


class ProtocolError(ValueError):
    """A message does not follow the protocol; str() is a message for a person."""


# --- builders ----------------------------------------------------------------


def hello(facts: dict[str, Any], agent_version: str) -> dict[str, Any]:
    return {
        "type": HELLO,
        "protocol": PROTOCOL_VERSION,
        "agent_version": agent_version,
        "facts": facts,
    }


def telemetry(sample: dict[str, Any]) -> dict[str, Any]:
    return {"type": TELEMETRY, "sample": sample}


def batch(samples: list[dict[str, Any]]) -> dict[str, Any]:
    if len(samples) > MAX_BATCH_SAMPLES:
        raise ProtocolError(f"a batch holds at most {MAX_BATCH_SAMPLES} samples")
    return {"type": BATCH, "samples": samples}


def worker(status: dict[str, Any]) -> dict[str, Any]:
    return {"type": WORKER, "worker": status}


def welcome(node_id: int) -> dict[str, Any]:
    return {"type": WELCOME, "protocol": PROTOCOL_VERSION, "node_id": node_id}


# --- field checks ------------------------------------------------------------
# `where` is the path shown to the reader, e.g. "sample.gpus[3].temperature".


def _require_dict(value: Any, where: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise ProtocolError(f"{where} must be an object, got {type(value).__name__}")
    return value


def _check_keys(d: dict[str, Any], required: frozenset[str], allowed: frozenset[str], where: str):
    keys = d.keys()
    if required <= keys and keys <= allowed:
        return
    missing = sorted(required - keys)
    if missing:
        raise ProtocolError(f"{where} is missing {', '.join(missing)}")
    unknown = sorted(str(k) for k in keys - allowed)
    raise ProtocolError(f"{where} has unknown field(s) {', '.join(unknown)}")


def _number(value: Any, where: str, lo: float, hi: float, nullable: bool = True) -> Any:
    kind = type(value)
    if kind is int or kind is float:
        # NaN fails both comparisons, so it lands here too.
        if not (lo <= value <= hi):
            raise ProtocolError(f"{where} = {value!r} is outside {lo:g}..{hi:g}")
        return value
    if value is None and nullable:
        return None
    expected = "a number or null" if nullable else "a number"
    raise ProtocolError(f"{where} must be {expected}, got {kind.__name__}")


def _integer(value: Any, where: str, lo: int, hi: int, nullable: bool = True) -> int | None:
    if type(value) is int:
        if not (lo <= value <= hi):
            raise ProtocolError(f"{where} = {value!r} is outside {lo}..{hi}")
        return value
    if value is None and nullable:
        return None
    expected = "an integer or null" if nullable else "an integer"
    raise ProtocolError(f"{where} must be {expected}, got {type(value).__name__}")


def _text(value: Any, where: str, nullable: bool = False, max_len: int = MAX_TEXT) -> str | None:
    if type(value) is str:
        if not value or len(value) > max_len:
            raise ProtocolError(f"{where} must be 1..{max_len} characters")
        return value
    if value is None and nullable:
        return None
    expected = "a string or null" if nullable else "a string"
    raise ProtocolError(f"{where} must be {expected}, got {type(value).__name__}")


def _boolean(value: Any, where: str, nullable: bool = False) -> bool | None:
    if type(value) is bool or (value is None and nullable):
        return value
    raise ProtocolError(f"{where} must be true or false, got {type(value).__name__}")


def _list(value: Any, where: str, max_len: int) -> list[Any]:
    if type(value) is not list:
        raise ProtocolError(f"{where} must be a list, got {type(value).__name__}")
    if len(value) > max_len:
        raise ProtocolError(f"{where} has {len(value)} entries; at most {max_len} are allowed")
    return value


def _used_within_total(used: Any, total: Any, where: str) -> None:
    if used is not None and total is not None and used > total:
        raise ProtocolError(f"{where}: used ({used}) exceeds total ({total})")


def _unique_indexes(gpus: list[dict[str, Any]], where: str) -> None:
    seen = {g["index"] for g in gpus}
    if len(seen) != len(gpus):
        raise ProtocolError(f"{where} lists the same GPU index more than once")


# --- facts -------------------------------------------------------------------

_FACTS_KEYS = frozenset(
    {
        "hostname",
        "os",
        "kernel",
        "driver_version",
        "cuda_version",
        "cpu_count",
        "memory_total",
        "addresses",
        "simulated",
        "gpus",
    }
)
# Optional: where this agent's workers listen (`--worker-host`), so the gateway knows
# how to reach them. Agents before the gateway don't send it.
_FACTS_OPTIONAL = frozenset({"worker_host", "accelerator"})
# Whose devices the agent reads (agents/accelerators.py); absent means NVIDIA.
ACCELERATORS = frozenset({"nvidia", "ascend", "amd"})
_GPU_FACT_REQUIRED = frozenset({"index", "uuid"})
_GPU_FACT_KEYS = frozenset(
    {"index", "uuid", "name", "memory_total", "pci_bus_id", "power_limit", "mig_mode"}
)


def validate_facts(d: Any) -> dict[str, Any]:
    """Return a cleaned copy of a FACTS object or raise ProtocolError."""
    d = _require_dict(d, "facts")
    _check_keys(d, _FACTS_KEYS, _FACTS_KEYS | _FACTS_OPTIONAL, "facts")
    addresses = []
    for i, raw in enumerate(_list(d["addresses"], "facts.addresses", 256)):
        text = _text(raw, f"facts.addresses[{i}]", max_len=64)
        try:
            addresses.append(str(ipaddress.ip_address(text)))
        except ValueError:
            raise ProtocolError(f"facts.addresses[{i}] = {text!r} is not an IP address") from None
    gpus = [_gpu_facts(g, i) for i, g in enumerate(_list(d["gpus"], "facts.gpus", MAX_GPUS))]
    _unique_indexes(gpus, "facts.gpus")
    optional = {}
    if "worker_host" in d:
        host = _text(d["worker_host"], "facts.worker_host", max_len=253)
        if not re.fullmatch(r"[A-Za-z0-9.:_-]+", host):
            raise ProtocolError(f"facts.worker_host = {host!r} is not an address or host name")
        optional["worker_host"] = host
    if "accelerator" in d:
        if d["accelerator"] not in ACCELERATORS:
            raise ProtocolError(f"facts.accelerator must be one of {sorted(ACCELERATORS)}")
        optional["accelerator"] = d["accelerator"]
    return {
        **optional,
        "hostname": _text(d["hostname"], "facts.hostname", max_len=253),
        "os": _text(d["os"], "facts.os", nullable=True),
        "kernel": _text(d["kernel"], "facts.kernel", nullable=True),
        "driver_version": _text(d["driver_version"], "facts.driver_version", nullable=True),
        "cuda_version": _text(d["cuda_version"], "facts.cuda_version", nullable=True),
        "cpu_count": _integer(d["cpu_count"], "facts.cpu_count", 1, 65_536, nullable=True),
        "memory_total": _integer(d["memory_total"], "facts.memory_total", 1, _BYTES_MAX),
        "addresses": addresses,
        "simulated": _boolean(d["simulated"], "facts.simulated"),
        "gpus": gpus,
    }


def _gpu_facts(g: Any, i: int) -> dict[str, Any]:
    where = f"facts.gpus[{i}]"
    g = _require_dict(g, where)
    _check_keys(g, _GPU_FACT_REQUIRED, _GPU_FACT_KEYS, where)
    get = g.get
    return {
        "index": _integer(g["index"], f"{where}.index", 0, MAX_GPUS - 1, nullable=False),
        "uuid": _text(g["uuid"], f"{where}.uuid", max_len=96),
        "name": _text(get("name"), f"{where}.name", nullable=True, max_len=96),
        "memory_total": _integer(get("memory_total"), f"{where}.memory_total", 1, _BYTES_MAX),
        "pci_bus_id": _text(get("pci_bus_id"), f"{where}.pci_bus_id", nullable=True, max_len=32),
        "power_limit": _number(get("power_limit"), f"{where}.power_limit", 0, _WATTS_MAX),
        "mig_mode": _boolean(get("mig_mode"), f"{where}.mig_mode", nullable=True),
    }


# --- samples -----------------------------------------------------------------

_SAMPLE_REQUIRED = frozenset({"seq", "ts", "simulated", "gpus", "host", "faults"})
_SAMPLE_KEYS = _SAMPLE_REQUIRED | {"mono", "coalesced", "workers", "health"}
_GPU_SAMPLE_KEYS = frozenset(
    {
        "index",
        "uuid",
        "temperature",
        "utilization_gpu",
        "utilization_memory",
        "memory_used",
        "memory_total",
        "power_draw",
        "power_limit",
        "sm_clock",
        "fan",
        "throttle_reasons",
        "ecc_errors",
        "xid_errors",
        "fault",
    }
)
HOST_FIELDS = ("cpu_percent", "memory_used", "memory_total", "disk_used", "disk_total")
_HOST_KEYS = frozenset(HOST_FIELDS)


def validate_sample(d: Any) -> dict[str, Any]:
    """Return a cleaned copy of a SAMPLE object or raise ProtocolError."""
    d = _require_dict(d, "sample")
    _check_keys(d, _SAMPLE_REQUIRED, _SAMPLE_KEYS, "sample")
    ts = _number(d["ts"], "sample.ts", _TS_MIN, _TS_MAX, nullable=False)
    gpus = [_gpu_sample(g, i) for i, g in enumerate(_list(d["gpus"], "sample.gpus", MAX_GPUS))]
    _unique_indexes(gpus, "sample.gpus")
    faults = _list(d["faults"], "sample.faults", MAX_FAULTS)
    for i, fault in enumerate(faults):
        _text(fault, f"sample.faults[{i}]")
    workers = _list(d.get("workers", []), "sample.workers", MAX_WORKERS)
    mono = _number(d.get("mono"), "sample.mono", 0, _TS_MAX)
    return {
        "seq": _integer(d["seq"], "sample.seq", 0, _COUNTER_MAX, nullable=False),
        "ts": float(ts),
        **({"mono": float(mono)} if mono is not None else {}),
        "simulated": _boolean(d["simulated"], "sample.simulated"),
        "gpus": gpus,
        "host": _host(d["host"]),
        "faults": list(faults),
        "coalesced": _integer(d.get("coalesced", 0), "sample.coalesced", 0, _COUNTER_MAX),
        "workers": [
            validate_worker_metrics(w, f"sample.workers[{i}]") for i, w in enumerate(workers)
        ],
        **({"health": validate_health(d["health"])} if "health" in d else {}),
    }


def _gpu_sample(g: Any, i: int) -> dict[str, Any]:
    where = f"sample.gpus[{i}]"
    g = _require_dict(g, where)
    _check_keys(g, _GPU_SAMPLE_KEYS, _GPU_SAMPLE_KEYS, where)
    fault = _text(g["fault"], f"{where}.fault", nullable=True)
    # Without a uuid the console cannot tell which card this is; that is only
    # acceptable when the agent says why (the card stopped answering).
    uuid = _text(g["uuid"], f"{where}.uuid", nullable=fault is not None, max_len=96)
    memory_used = _integer(g["memory_used"], f"{where}.memory_used", 0, _BYTES_MAX)
    memory_total = _integer(g["memory_total"], f"{where}.memory_total", 1, _BYTES_MAX)
    _used_within_total(memory_used, memory_total, f"{where} memory")
    reasons = _list(g["throttle_reasons"], f"{where}.throttle_reasons", len(THROTTLE_REASONS))
    for reason in reasons:
        if reason not in THROTTLE_REASONS:
            raise ProtocolError(f"{where}.throttle_reasons has unknown reason {reason!r}")
    return {
        "index": _integer(g["index"], f"{where}.index", 0, MAX_GPUS - 1, nullable=False),
        "uuid": uuid,
        "temperature": _number(g["temperature"], f"{where}.temperature", -40, 150),
        "utilization_gpu": _number(g["utilization_gpu"], f"{where}.utilization_gpu", 0, 100),
        "utilization_memory": _number(
            g["utilization_memory"], f"{where}.utilization_memory", 0, 100
        ),
        "memory_used": memory_used,
        "memory_total": memory_total,
        "power_draw": _number(g["power_draw"], f"{where}.power_draw", 0, _WATTS_MAX),
        "power_limit": _number(g["power_limit"], f"{where}.power_limit", 0, _WATTS_MAX),
        "sm_clock": _integer(g["sm_clock"], f"{where}.sm_clock", 0, _MHZ_MAX),
        "fan": _number(g["fan"], f"{where}.fan", 0, 100),
        "throttle_reasons": list(reasons),
        "ecc_errors": _integer(g["ecc_errors"], f"{where}.ecc_errors", 0, _COUNTER_MAX),
        "xid_errors": _integer(g["xid_errors"], f"{where}.xid_errors", 0, _COUNTER_MAX),
        "fault": fault,
    }


# --- GPU health (docs/health.md): present in a sample only when it was read ---

HEALTH_COUNTERS = (
    "ecc_volatile_corrected",
    "ecc_volatile_uncorrected",
    "ecc_aggregate_corrected",
    "ecc_aggregate_uncorrected",
    "retired_pages_single_bit",
    "retired_pages_double_bit",
    "remapped_rows_correctable",
    "remapped_rows_uncorrectable",
    "pcie_replay_counter",
)
HEALTH_FLAGS = (
    "persistence_mode",
    "ecc_mode",
    "retired_pages_pending",
    "remapped_rows_pending",
    "remapped_rows_failure",
)
HEALTH_LINK_FIELDS = (
    "pcie_link_gen",
    "pcie_link_gen_max",
    "pcie_link_width",
    "pcie_link_width_max",
)
NVLINK_COUNTER_NAMES = ("replay", "recovery", "crc_flit", "crc_data")
MAX_NVLINKS = 18
MAX_XIDS = 64
_HEALTH_KEYS = frozenset(
    {
        "index",
        "uuid",
        *HEALTH_COUNTERS,
        *HEALTH_FLAGS,
        *HEALTH_LINK_FIELDS,
        "throttle_reasons",
        "nvlink",
        "xids",
        "unsupported",
        "failed",
    }
)
_NVLINK_KEYS = frozenset({"link", "active", *NVLINK_COUNTER_NAMES})


def validate_health(value: Any) -> list[dict[str, Any]]:
    entries = [_gpu_health(h, i) for i, h in enumerate(_list(value, "sample.health", MAX_GPUS))]
    _unique_indexes(entries, "sample.health")
    return entries


def _gpu_health(h: Any, i: int) -> dict[str, Any]:
    where = f"sample.health[{i}]"
    h = _require_dict(h, where)
    _check_keys(h, _HEALTH_KEYS, _HEALTH_KEYS, where)
    out: dict[str, Any] = {
        "index": _integer(h["index"], f"{where}.index", 0, MAX_GPUS - 1, nullable=False),
        "uuid": _text(h["uuid"], f"{where}.uuid", nullable=True, max_len=96),
    }
    for key in HEALTH_COUNTERS:
        out[key] = _integer(h[key], f"{where}.{key}", 0, _COUNTER_MAX)
    for key in HEALTH_FLAGS:
        out[key] = _boolean(h[key], f"{where}.{key}", nullable=True)
    for key in HEALTH_LINK_FIELDS:
        out[key] = _integer(h[key], f"{where}.{key}", 0, 64)
    reasons = h["throttle_reasons"]
    if reasons is not None:
        reasons = _list(reasons, f"{where}.throttle_reasons", len(THROTTLE_REASONS))
        for reason in reasons:
            if reason not in THROTTLE_REASONS:
                raise ProtocolError(f"{where}.throttle_reasons has unknown reason {reason!r}")
        reasons = list(reasons)
    out["throttle_reasons"] = reasons
    links = []
    for j, link in enumerate(_list(h["nvlink"], f"{where}.nvlink", MAX_NVLINKS)):
        lw = f"{where}.nvlink[{j}]"
        link = _require_dict(link, lw)
        _check_keys(link, _NVLINK_KEYS, _NVLINK_KEYS, lw)
        entry = {
            "link": _integer(link["link"], f"{lw}.link", 0, MAX_NVLINKS - 1, nullable=False),
            "active": _boolean(link["active"], f"{lw}.active", nullable=True),
        }
        for name in NVLINK_COUNTER_NAMES:
            entry[name] = _integer(link[name], f"{lw}.{name}", 0, _COUNTER_MAX)
        links.append(entry)
    out["nvlink"] = links
    xids = _list(h["xids"], f"{where}.xids", MAX_XIDS)
    out["xids"] = [
        _integer(x, f"{where}.xids[{k}]", 0, 2**31, nullable=False) for k, x in enumerate(xids)
    ]
    for key in ("unsupported", "failed"):
        items = _list(h[key], f"{where}.{key}", 128)
        out[key] = [_text(item, f"{where}.{key}[{k}]", max_len=200) for k, item in enumerate(items)]
    return out


def _host(h: Any) -> dict[str, Any]:
    h = _require_dict(h, "sample.host")
    _check_keys(h, _HOST_KEYS, _HOST_KEYS, "sample.host")
    memory_used = _integer(h["memory_used"], "sample.host.memory_used", 0, _BYTES_MAX)
    memory_total = _integer(h["memory_total"], "sample.host.memory_total", 1, _BYTES_MAX)
    disk_used = _integer(h["disk_used"], "sample.host.disk_used", 0, _BYTES_MAX)
    disk_total = _integer(h["disk_total"], "sample.host.disk_total", 1, _BYTES_MAX)
    _used_within_total(memory_used, memory_total, "sample.host memory")
    _used_within_total(disk_used, disk_total, "sample.host disk")
    return {
        "cpu_percent": _number(h["cpu_percent"], "sample.host.cpu_percent", 0, 100),
        "memory_used": memory_used,
        "memory_total": memory_total,
        "disk_used": disk_used,
        "disk_total": disk_total,
    }


# --- workers (section 4 of docs/protocol.md) ---------------------------------

MAX_WORKERS = 256  # per node
MAX_LOG_LINES = 20  # WORKER_STATUS.last_log
MAX_LOG_LINE = 1000
MAX_ENGINE_ARGS = 64
MAX_MODEL_FILES = 10_000
_PORT_MIN, _PORT_MAX = 1024, 65535
_ID_MAX = 2**53  # what a JavaScript number holds exactly
_MS_MAX = 3_600_000.0

WORKER_STATES = frozenset(
    {
        "pending",
        "fetching",
        "verifying",
        "starting",
        "ready",
        "unhealthy",
        "crashloop",
        "stopping",
        "stopped",
        "failed",
    }
)
# Why a run ended (WORKER_STATUS.cause); `gpu-held` is a start refused because a
# process outside Hangar still holds the worker's GPUs.
EXIT_CAUSES = frozenset(
    {
        "gpu-oom",
        "host-oom",
        "cuda-error",
        "xid",
        "signal",
        "startup-error",
        "exited",
        "unknown",
        "gpu-held",
        "unexpected-listener",
    }
)
ENGINES = frozenset({"vllm", "sglang", "llama.cpp", "generic", "reference"})
METRICS_SOURCES = frozenset({"prometheus", "probe"})

_WORKER_STATUS_KEYS = frozenset(
    {
        "worker_id",
        "deployment_id",
        "state",
        "pid",
        "port",
        "gpus",
        "restarts",
        "run",
        "exit_code",
        "exit_signal",
        "cause",
        "evidence",
        "error",
        "progress",
        "last_log",
        "operation_id",
        "ts",
    }
)
_PROGRESS_KEYS = frozenset({"done_bytes", "total_bytes", "file"})
_WORKER_METRICS_KEYS = frozenset(
    {"worker_id", "p50_ms", "p95_ms", "p99_ms", "rps", "error_rate", "source"}
)
_SPEC_REQUIRED = frozenset(
    {"worker_id", "deployment_id", "engine", "engine_args", "model", "gpus", "port"}
)
_SPEC_KEYS = _SPEC_REQUIRED | {"health_path", "command", "api_key"}
# A worker's secret (the console's `secrets.token_urlsafe(32)` is 43 characters).
_API_KEY = re.compile(r"^[A-Za-z0-9_-]{16,256}$")
_MODEL_KEYS = frozenset({"version_id", "path", "files"})
_MODEL_FILE_KEYS = frozenset({"path", "sha256", "size"})


def _gpu_list(value: Any, where: str) -> list[int]:
    gpus = [
        _integer(g, f"{where}[{i}]", 0, MAX_GPUS - 1, nullable=False)
        for i, g in enumerate(_list(value, where, MAX_GPUS))
    ]
    if len(set(gpus)) != len(gpus):
        raise ProtocolError(f"{where} lists the same GPU more than once")
    return gpus


def _choice(value: Any, where: str, allowed: frozenset[str], nullable: bool = False) -> Any:
    if value is None and nullable:
        return None
    if type(value) is not str or value not in allowed:
        raise ProtocolError(f"{where} = {value!r} is not one of {', '.join(sorted(allowed))}")
    return value


def _log_line(value: Any, where: str) -> str:
    # Unlike _text, an empty line is a line: logs have them.
    if type(value) is not str or len(value) > MAX_LOG_LINE:
        raise ProtocolError(f"{where} must be a string of at most {MAX_LOG_LINE} characters")
    return value


def validate_worker_status(d: Any, where: str = "worker") -> dict[str, Any]:
    """Return a cleaned copy of a WORKER_STATUS object or raise ProtocolError."""
    d = _require_dict(d, where)
    _check_keys(d, _WORKER_STATUS_KEYS, _WORKER_STATUS_KEYS, where)
    progress = d["progress"]
    if progress is not None:
        progress = _require_dict(progress, f"{where}.progress")
        _check_keys(progress, _PROGRESS_KEYS, _PROGRESS_KEYS, f"{where}.progress")
        done = _integer(progress["done_bytes"], f"{where}.progress.done_bytes", 0, _BYTES_MAX)
        total = _integer(progress["total_bytes"], f"{where}.progress.total_bytes", 0, _BYTES_MAX)
        _used_within_total(done, total, f"{where}.progress")
        progress = {
            "done_bytes": done,
            "total_bytes": total,
            "file": _text(progress["file"], f"{where}.progress.file", nullable=True, max_len=1024),
        }
    last_log = _list(d["last_log"], f"{where}.last_log", MAX_LOG_LINES)
    return {
        "worker_id": _integer(d["worker_id"], f"{where}.worker_id", 1, _ID_MAX, nullable=False),
        "deployment_id": _integer(d["deployment_id"], f"{where}.deployment_id", 1, _ID_MAX),
        "state": _choice(d["state"], f"{where}.state", WORKER_STATES),
        "pid": _integer(d["pid"], f"{where}.pid", 1, 2**31 - 1),
        "port": _integer(d["port"], f"{where}.port", _PORT_MIN, _PORT_MAX),
        "gpus": _gpu_list(d["gpus"], f"{where}.gpus"),
        "restarts": _integer(d["restarts"], f"{where}.restarts", 0, _COUNTER_MAX, nullable=False),
        "run": _integer(d["run"], f"{where}.run", 0, _COUNTER_MAX, nullable=False),
        "exit_code": _integer(d["exit_code"], f"{where}.exit_code", 0, 255),
        "exit_signal": _integer(d["exit_signal"], f"{where}.exit_signal", 1, 64),
        "cause": _choice(d["cause"], f"{where}.cause", EXIT_CAUSES, nullable=True),
        "evidence": _text(d["evidence"], f"{where}.evidence", nullable=True, max_len=MAX_LOG_LINE),
        "error": _text(d["error"], f"{where}.error", nullable=True, max_len=2048),
        "progress": progress,
        "last_log": [_log_line(line, f"{where}.last_log[{i}]") for i, line in enumerate(last_log)],
        "operation_id": _text(
            d["operation_id"], f"{where}.operation_id", nullable=True, max_len=64
        ),
        "ts": float(_number(d["ts"], f"{where}.ts", _TS_MIN, _TS_MAX, nullable=False)),
    }


def validate_worker_metrics(d: Any, where: str = "worker_metrics") -> dict[str, Any]:
    """Return a cleaned copy of a WORKER_METRICS object or raise ProtocolError."""
    d = _require_dict(d, where)
    _check_keys(d, _WORKER_METRICS_KEYS, _WORKER_METRICS_KEYS, where)
    return {
        "worker_id": _integer(d["worker_id"], f"{where}.worker_id", 1, _ID_MAX, nullable=False),
        "p50_ms": _number(d["p50_ms"], f"{where}.p50_ms", 0, _MS_MAX),
        "p95_ms": _number(d["p95_ms"], f"{where}.p95_ms", 0, _MS_MAX),
        "p99_ms": _number(d["p99_ms"], f"{where}.p99_ms", 0, _MS_MAX),
        "rps": _number(d["rps"], f"{where}.rps", 0, 1e9),
        "error_rate": _number(d["error_rate"], f"{where}.error_rate", 0, 1),
        "source": _choice(d["source"], f"{where}.source", METRICS_SOURCES),
    }


def validate_worker_spec(d: Any) -> dict[str, Any]:
    """Return a cleaned copy of a WORKER_SPEC or raise ProtocolError.

    Shapes only: the engine arguments are checked against the engine's allowed
    flags by `agents.workers.engines.validate_engine_args`, and the model path
    against the node's model roots by the agent.
    """
    d = _require_dict(d, "spec")
    _check_keys(d, _SPEC_REQUIRED, _SPEC_KEYS, "spec")
    engine = _choice(d["engine"], "spec.engine", ENGINES)
    engine_args = _list(d["engine_args"], "spec.engine_args", MAX_ENGINE_ARGS)
    for i, arg in enumerate(engine_args):
        _text(arg, f"spec.engine_args[{i}]")
    model = _require_dict(d["model"], "spec.model")
    _check_keys(model, _MODEL_KEYS, _MODEL_KEYS, "spec.model")
    files = []
    for i, f in enumerate(_list(model["files"], "spec.model.files", MAX_MODEL_FILES)):
        where = f"spec.model.files[{i}]"
        f = _require_dict(f, where)
        _check_keys(f, _MODEL_FILE_KEYS - {"size"}, _MODEL_FILE_KEYS, where)
        digest = _text(f["sha256"], f"{where}.sha256", max_len=64)
        if len(digest) != 64 or digest.strip("0123456789abcdef"):
            raise ProtocolError(f"{where}.sha256 must be 64 lowercase hexadecimal digits")
        files.append(
            {
                "path": _text(f["path"], f"{where}.path", max_len=1024),
                "sha256": digest,
                "size": _integer(f.get("size"), f"{where}.size", 0, _BYTES_MAX),
            }
        )
    command = d.get("command")
    if command is not None:
        command = [
            _text(arg, f"spec.command[{i}]", max_len=4096)
            for i, arg in enumerate(_list(command, "spec.command", 256))
        ]
    health_path = _text(d.get("health_path"), "spec.health_path", nullable=True, max_len=256)
    if health_path is not None and not health_path.startswith("/"):
        raise ProtocolError("spec.health_path must start with /")
    if engine == "generic" and (not command or health_path is None):
        raise ProtocolError(
            "a generic worker needs spec.command (an argv list) and spec.health_path"
        )
    if engine != "generic" and command is not None:
        raise ProtocolError(f"spec.command is only for the generic engine, not {engine}")
    api_key = d.get("api_key")
    if api_key is not None and (type(api_key) is not str or not _API_KEY.match(api_key)):
        # The value itself is a secret: never in the message.
        raise ProtocolError("spec.api_key must be 16..256 URL-safe characters (A-Z a-z 0-9 _ -)")
    return {
        "worker_id": _integer(d["worker_id"], "spec.worker_id", 1, _ID_MAX, nullable=False),
        "deployment_id": _integer(d["deployment_id"], "spec.deployment_id", 1, _ID_MAX),
        "engine": engine,
        "engine_args": list(engine_args),
        "model": {
            "version_id": _integer(model["version_id"], "spec.model.version_id", 1, _ID_MAX),
            "path": _text(model["path"], "spec.model.path", max_len=4096),
            "files": files,
        },
        "gpus": _gpu_list(d["gpus"], "spec.gpus"),
        # 0: the agent picks a free port of its range (agents/workers/ports.py).
        "port": 0
        if d["port"] == 0 and type(d["port"]) is int
        else _integer(d["port"], "spec.port", _PORT_MIN, _PORT_MAX, nullable=False),
        "health_path": health_path,
        "command": command,
        "api_key": api_key,
    }


# --- whole messages ----------------------------------------------------------


def validate_message(d: Any) -> dict[str, Any]:
    """Validate one agent -> console message (hello, telemetry, batch or worker)."""
    d = _require_dict(d, "message")
    kind = d.get("type")
    if kind == TELEMETRY:
        _check_keys(d, frozenset({"type", "sample"}), frozenset({"type", "sample"}), "telemetry")
        return {"type": TELEMETRY, "sample": validate_sample(d["sample"])}
    if kind == BATCH:
        _check_keys(d, frozenset({"type", "samples"}), frozenset({"type", "samples"}), "batch")
        samples = _list(d["samples"], "batch.samples", MAX_BATCH_SAMPLES)
        return {"type": BATCH, "samples": [validate_sample(s) for s in samples]}
    if kind == HELLO:
        keys = frozenset({"type", "protocol", "agent_version", "facts"})
        _check_keys(d, keys, keys, "hello")
        if d["protocol"] != PROTOCOL_VERSION or type(d["protocol"]) is not int:
            raise ProtocolError(
                f"agent speaks protocol {d['protocol']!r}; this console speaks "
                f"{PROTOCOL_VERSION}: upgrade the agent or the console so they match"
            )
        return {
            "type": HELLO,
            "protocol": PROTOCOL_VERSION,
            "agent_version": _text(d["agent_version"], "hello.agent_version", max_len=64),
            "facts": validate_facts(d["facts"]),
        }
    if kind == WORKER:
        _check_keys(d, frozenset({"type", "worker"}), frozenset({"type", "worker"}), "worker")
        return {"type": WORKER, "worker": validate_worker_status(d["worker"])}
    raise ProtocolError(
        f"unknown message type {kind!r}; expected hello, telemetry, batch or worker"
    )


# --- answers to console commands (Celery results, read by the console) --------
# A node is not trusted: what its agent answers is checked like any message.

MAX_TAIL_LINES = 5000
MAX_RUNS = 1000
_PING_KEYS = frozenset({"node_id", "agent_version", "ts"})
_ANSWER_REQUIRED = frozenset({"operation_id", "ok", "detail", "worker"})
_ANSWER_KEYS = _ANSWER_REQUIRED | {"lines", "run", "runs", "workers"}
_RUN_KEYS = frozenset(
    {"run", "pid", "started", "ended", "exit_code", "exit_signal", "duration", "cause", "evidence"}
)


def _run_entry(d: Any, where: str) -> dict[str, Any]:
    d = _require_dict(d, where)
    _check_keys(d, frozenset({"run"}), _RUN_KEYS, where)
    return {
        "run": _integer(d["run"], f"{where}.run", 0, _COUNTER_MAX, nullable=False),
        "pid": _integer(d.get("pid"), f"{where}.pid", 1, 2**31 - 1),
        "started": _number(d.get("started"), f"{where}.started", _TS_MIN, _TS_MAX),
        "ended": _number(d.get("ended"), f"{where}.ended", _TS_MIN, _TS_MAX),
        "exit_code": _integer(d.get("exit_code"), f"{where}.exit_code", 0, 255),
        "exit_signal": _integer(d.get("exit_signal"), f"{where}.exit_signal", 1, 64),
        "duration": _number(d.get("duration"), f"{where}.duration", 0, 10 * 365 * 86400),
        "cause": _choice(d.get("cause"), f"{where}.cause", EXIT_CAUSES, nullable=True),
        "evidence": _text(d.get("evidence"), f"{where}.evidence", nullable=True, max_len=4096),
    }


def validate_command_answer(verb: str, d: Any) -> Any:
    """Return a cleaned copy of an agent's answer to `hangar.agent.<verb>`."""
    where = f"answer to {verb}"
    if verb == "ping":
        d = _require_dict(d, where)
        _check_keys(d, _PING_KEYS, _PING_KEYS, where)
        return {
            "node_id": _integer(d["node_id"], f"{where}.node_id", 1, _ID_MAX, nullable=False),
            "agent_version": _text(d["agent_version"], f"{where}.agent_version", max_len=64),
            "ts": _number(d["ts"], f"{where}.ts", _TS_MIN, _TS_MAX, nullable=False),
        }
    if verb == "collect_facts":
        return validate_facts(d)
    if verb == "preflight":
        return validate_preflight(d)
    d = _require_dict(d, where)
    _check_keys(d, _ANSWER_REQUIRED, _ANSWER_KEYS, where)
    answer: dict[str, Any] = {
        "operation_id": _text(d["operation_id"], f"{where}.operation_id", max_len=64),
        "ok": _boolean(d["ok"], f"{where}.ok"),
        "detail": _log_line(d["detail"], f"{where}.detail"),
        "worker": None
        if d["worker"] is None
        else validate_worker_status(d["worker"], f"{where}.worker"),
    }
    if "lines" in d:
        lines = _list(d["lines"], f"{where}.lines", MAX_TAIL_LINES)
        answer["lines"] = [_log_line(line, f"{where}.lines[{i}]") for i, line in enumerate(lines)]
    if "run" in d:
        answer["run"] = _integer(d["run"], f"{where}.run", 0, _COUNTER_MAX)
    if "runs" in d:
        runs = _list(d["runs"], f"{where}.runs", MAX_RUNS)
        answer["runs"] = [_run_entry(r, f"{where}.runs[{i}]") for i, r in enumerate(runs)]
    if "workers" in d:
        workers = _list(d["workers"], f"{where}.workers", MAX_WORKERS)
        answer["workers"] = [
            validate_worker_status(w, f"{where}.workers[{i}]") for i, w in enumerate(workers)
        ]
    return answer


# --- preflight (docs/health.md) --------------------------------------------------

PREFLIGHT_STATUSES = frozenset({"pass", "warn", "fail", "skip"})
MAX_PREFLIGHT_RESULTS = 256
_PREFLIGHT_KEYS = frozenset({"started_at", "finished_at", "results"})
_PREFLIGHT_RESULT_KEYS = frozenset({"check", "subject", "status", "value", "advice"})


def validate_preflight(d: Any) -> dict[str, Any]:
    where = "answer to preflight"
    d = _require_dict(d, where)
    _check_keys(d, _PREFLIGHT_KEYS, _PREFLIGHT_KEYS, where)
    results = []
    for i, r in enumerate(_list(d["results"], f"{where}.results", MAX_PREFLIGHT_RESULTS)):
        rw = f"{where}.results[{i}]"
        r = _require_dict(r, rw)
        _check_keys(r, _PREFLIGHT_RESULT_KEYS, _PREFLIGHT_RESULT_KEYS, rw)
        if r["status"] not in PREFLIGHT_STATUSES:
            raise ProtocolError(f"{rw}.status must be one of {sorted(PREFLIGHT_STATUSES)}")
        value = r["value"]
        if value is not None and type(value) not in (bool, int, float, str):
            raise ProtocolError(f"{rw}.value must be a number, text, true/false or null")
        if type(value) is str:
            value = _text(value, f"{rw}.value", max_len=200)
        results.append(
            {
                "check": _text(r["check"], f"{rw}.check", max_len=64),
                "subject": r["subject"] and _text(r["subject"], f"{rw}.subject", max_len=512),
                "status": r["status"],
                "value": value,
                "advice": r["advice"] and _text(r["advice"], f"{rw}.advice", max_len=200),
            }
        )
    return {
        "started_at": _number(d["started_at"], f"{where}.started_at", _TS_MIN, _TS_MAX, False),
        "finished_at": _number(d["finished_at"], f"{where}.finished_at", _TS_MIN, _TS_MAX, False),
        "results": results,
    }
