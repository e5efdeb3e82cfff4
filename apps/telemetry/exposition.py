"""The Prometheus text exposition of `/metrics`: every family with HELP and TYPE,
base units in the names (Prometheus's naming conventions), and, switchable, the
GPU families under dcgm-exporter's names and labels.

docs/metrics.md lists every family and where the DCGM names come from
(dcgm-exporter's etc/default-counters.csv). tests/telemetry/test_metrics.py
keeps `promtool check metrics` clean.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

MIB = 1024 * 1024

# Which GPU family names `/metrics` uses: HANGAR_METRICS_GPU_NAMES, or ?names= per scrape.
NAME_SCHEMES = ("hangar", "dcgm", "both")


@dataclass(frozen=True)
class Family:
    """One metric family over one sample field: value = field's value times factor."""

    name: str
    kind: str  # gauge or counter
    help: str
    field: str
    factor: float = 1.0
    derive: Callable[[dict], float | None] | None = None

    def value(self, row: dict) -> float | None:
        if self.derive is not None:
            return self.derive(row)
        raw = row.get(self.field)
        return None if raw is None else raw * self.factor


def _free_mib(gpu: dict) -> float | None:
    used, total = gpu.get("memory_used"), gpu.get("memory_total")
    return None if used is None or total is None else (total - used) / MIB


GPU_FAMILIES = (
    Family("hangar_gpu_temperature_celsius", "gauge", "GPU core temperature.", "temperature"),
    Family(
        "hangar_gpu_utilization_ratio",
        "gauge",
        "Share of the last sample period a kernel ran on the GPU (0-1).",
        "utilization_gpu",
        0.01,
    ),
    Family(
        "hangar_gpu_memory_utilization_ratio",
        "gauge",
        "Share of the last sample period device memory was read or written (0-1).",
        "utilization_memory",
        0.01,
    ),
    Family("hangar_gpu_memory_used_bytes", "gauge", "GPU memory in use.", "memory_used"),
    Family("hangar_gpu_memory_total_bytes", "gauge", "GPU memory in all.", "memory_total"),
    Family("hangar_gpu_power_draw_watts", "gauge", "GPU power draw.", "power_draw"),
    Family("hangar_gpu_power_limit_watts", "gauge", "GPU power limit.", "power_limit"),
    Family("hangar_gpu_sm_clock_hertz", "gauge", "GPU SM clock.", "sm_clock", 1e6),
    Family("hangar_gpu_fan_speed_ratio", "gauge", "GPU fan speed (0-1).", "fan", 0.01),
    Family(
        "hangar_gpu_ecc_errors_total",
        "counter",
        "Uncorrected ECC errors since the driver loaded (volatile).",
        "ecc_errors",
    ),
    Family(
        "hangar_gpu_xid_errors_total",
        "counter",
        "XID errors since the agent started.",
        "xid_errors",
    ),
)

# Names, types, help texts and units as dcgm-exporter's etc/default-counters.csv has them
# (github.com/NVIDIA/dcgm-exporter, commit d5e5f51): MHz, C, W, %, MiB, not base units.
# ECC and XID are left out: DCGM_FI_DEV_XID_ERRORS is the last XID's code, not a count,
# and the ECC counters are commented out in that file.
DCGM_FAMILIES = (
    Family("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz).", "sm_clock"),
    Family("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).", "temperature"),
    Family("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", "power_draw"),
    Family("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", "utilization_gpu"),
    Family(
        "DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %).", "utilization_memory"
    ),
    Family(
        "DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).", "", derive=_free_mib
    ),
    Family(
        "DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).", "memory_used", 1 / MIB
    ),
)

HOST_FAMILIES = (
    Family(
        "hangar_host_cpu_utilization_ratio",
        "gauge",
        "Host CPU busy share (0-1).",
        "cpu_percent",
        0.01,
    ),
    Family("hangar_host_memory_used_bytes", "gauge", "Host memory in use.", "memory_used"),
    Family("hangar_host_memory_total_bytes", "gauge", "Host memory in all.", "memory_total"),
    Family("hangar_host_disk_used_bytes", "gauge", "Data disk space in use.", "disk_used"),
    Family("hangar_host_disk_total_bytes", "gauge", "Data disk space in all.", "disk_total"),
)

# The agent's own measurement of each worker's engine (docs/protocol.md §4).
WORKER_FAMILIES = (
    Family("hangar_worker_latency_p50_seconds", "gauge", "Median request time.", "p50_ms", 0.001),
    Family(
        "hangar_worker_latency_p95_seconds",
        "gauge",
        "95th percentile request time.",
        "p95_ms",
        0.001,
    ),
    Family(
        "hangar_worker_latency_p99_seconds",
        "gauge",
        "99th percentile request time.",
        "p99_ms",
        0.001,
    ),
    Family("hangar_worker_requests_per_second", "gauge", "Requests/s the engine served.", "rps"),
    Family("hangar_worker_error_ratio", "gauge", "Share of requests that failed.", "error_rate"),
    Family(
        "hangar_worker_availability_ratio",
        "gauge",
        "Share of the last hour the worker was ready (beat, every 30 s).",
        "availability",
        0.01,
    ),
)

# The gateways' latest window (apps/gateway/traffic.py), per deployment and per route.
TRAFFIC_FAMILIES = (
    ("requests_per_second", "gauge", "Requests/s through the gateways.", "requests_per_s", 1),
    (
        "http_5xx_ratio",
        "gauge",
        "Share of requests answered with a 5xx status.",
        "http_5xx_rate",
        1,
    ),
    (
        "http_4xx_ratio",
        "gauge",
        "Share of requests answered with a 4xx status.",
        "http_4xx_rate",
        1,
    ),
    ("latency_p50_seconds", "gauge", "Median time to the whole answer.", "latency_p50_ms", 0.001),
    (
        "latency_p95_seconds",
        "gauge",
        "95th percentile time to the whole answer.",
        "latency_p95_ms",
        0.001,
    ),
    (
        "latency_p99_seconds",
        "gauge",
        "99th percentile time to the whole answer.",
        "latency_p99_ms",
        0.001,
    ),
    (
        "first_token_p50_seconds",
        "gauge",
        "Median time to a stream's first chunk.",
        "ttft_p50_ms",
        0.001,
    ),
    (
        "first_token_p99_seconds",
        "gauge",
        "99th percentile time to first chunk.",
        "ttft_p99_ms",
        0.001,
    ),
    ("tokens_per_second", "gauge", "Prompt and completion tokens/s.", "tokens_per_s", 1),
    ("in_flight", "gauge", "Requests in flight now.", "in_flight", 1),
)


def label(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def labels(**pairs) -> str:
    return ",".join(f'{k}="{label(v)}"' for k, v in pairs.items())


def _number(value: float) -> str:
    return f"{value:.10g}"


class Exposition:
    """Collects families in order; each gets its HELP and TYPE once, series or not."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, series: Iterable[tuple[str, float]]):
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        self.lines += [
            f"{name}{{{lbl}}} {_number(value)}" if lbl else f"{name} {_number(value)}"
            for lbl, value in series
        ]

    def rows(self, family: Family, rows: Iterable[tuple[str, dict]]) -> None:
        def series():
            for lbl, row in rows:
                value = family.value(row)
                if value is not None:
                    yield lbl, value

        self.family(family.name, family.kind, family.help, series())

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def node_and_gpu_families(
    out: Exposition, nodes, latest: dict[int, dict], gpus: dict[tuple[int, int], dict], names: str
) -> None:
    """hangar_node_up, the GPU families (Hangar's, DCGM's or both) and the host's.

    `gpus` maps (node id, index) to the inventory's facts (name, PCI bus id) that
    dcgm-exporter carries as labels."""
    out.family(
        "hangar_node_up",
        "gauge",
        "1 when the node's agent reports (state online or degraded), by state.",
        (
            (
                labels(node=n.hostname, cluster=n.cluster.name, state=n.state),
                1 if n.state in ("online", "degraded") else 0,
            )
            for n in nodes
        ),
    )
    gpu_rows = [
        (node, gpu) for node in nodes for gpu in (latest.get(node.pk) or {}).get("gpus", ())
    ]
    if names in ("hangar", "both"):
        rows = [
            (labels(node=node.hostname, gpu=gpu["index"], uuid=gpu.get("uuid", "")), gpu)
            for node, gpu in gpu_rows
        ]
        for family in GPU_FAMILIES:
            out.rows(family, rows)
    if names in ("dcgm", "both"):
        rows = []
        for node, gpu in gpu_rows:
            facts = gpus.get((node.pk, gpu["index"]), {})
            # dcgm-exporter's labels; `Hostname` until its #655 renamed it `hostname`, so
            # both are given and dashboards of either generation work.
            lbl = labels(
                gpu=gpu["index"],
                UUID=gpu.get("uuid", ""),
                pci_bus_id=facts.get("pci_bus_id", ""),
                device=f"nvidia{gpu['index']}",
                modelName=facts.get("name", ""),
                Hostname=node.hostname,
                hostname=node.hostname,
            )
            rows.append((lbl, gpu))
        for family in DCGM_FAMILIES:
            out.rows(family, rows)
    host_rows = [
        (labels(node=n.hostname), (latest.get(n.pk) or {}).get("host") or {}) for n in nodes
    ]
    for family in HOST_FAMILIES:
        out.rows(family, host_rows)


# From each GPU's last health read (agents/health.py, judged by apps/inventory/health.py).
# A field the GPU does not support has no series, never a zero.
HEALTH_FAMILIES = (
    (
        "hangar_gpu_ecc_corrected_total",
        "counter",
        "Corrected ECC errors since the driver loaded (aggregate).",
        "ecc_aggregate_corrected",
    ),
    (
        "hangar_gpu_ecc_uncorrected_total",
        "counter",
        "Uncorrected ECC errors since the driver loaded (aggregate).",
        "ecc_aggregate_uncorrected",
    ),
    (
        "hangar_gpu_pcie_replays_total",
        "counter",
        "PCIe replays (link-level retries).",
        "pcie_replay_counter",
    ),
    ("hangar_gpu_pcie_link_width", "gauge", "PCIe lanes the link runs at now.", "pcie_link_width"),
    (
        "hangar_gpu_pcie_link_width_max",
        "gauge",
        "PCIe lanes the link can run at.",
        "pcie_link_width_max",
    ),
    (
        "hangar_gpu_remapped_rows_pending",
        "gauge",
        "1 when a row remap waits for a GPU reset.",
        "remapped_rows_pending",
    ),
)


def gpu_health_families(out: Exposition, gpus, names: str = "hangar") -> None:
    """The health state, the cordon and the health read's counters of each GPU row:
    Hangar's own families, so not under dcgm-exporter's names alone."""
    if names not in ("hangar", "both"):
        return
    rows = [(labels(node=g.node.hostname, gpu=g.index, uuid=g.uuid), g) for g in gpus]
    out.family(
        "hangar_gpu_health",
        "gauge",
        "1 for the GPU's health state (healthy, degraded, unhealthy, unknown), by state.",
        ((labels(node=g.node.hostname, gpu=g.index, uuid=g.uuid, state=g.health), 1)
         for g in gpus),
    )  # fmt: skip
    out.family(
        "hangar_gpu_cordoned",
        "gauge",
        "1 when the GPU takes no new work (cordoned by a person or the health policy).",
        ((lbl, 1 if g.cordoned else 0) for lbl, g in rows),
    )
    for name, kind, help_text, field in HEALTH_FAMILIES:
        series = []
        for lbl, g in rows:
            value = (g.health_reading or {}).get(field)
            if isinstance(value, bool):
                value = int(value)
            if isinstance(value, int | float):
                series.append((lbl, value))
        out.family(name, kind, help_text, series)


def worker_families(out: Exposition, rows: list[tuple[dict, dict]]) -> None:
    """rows: (labels as a dict, the worker's numbers: the sample's entry, state, availability)."""
    out.family(
        "hangar_worker_state",
        "gauge",
        "1 for each worker, labelled with its state (ready, crashloop, ...).",
        ((labels(**lbl, state=numbers["state"]), 1) for lbl, numbers in rows),
    )
    labelled = [(labels(**lbl), numbers) for lbl, numbers in rows]
    for family in WORKER_FAMILIES:
        out.rows(family, labelled)


def traffic_families(out: Exposition, prefix: str, rows: list[tuple[dict, dict]]) -> None:
    """hangar_<prefix>_* from the gateways' window; rows: (labels as a dict, numbers)."""
    labelled = [(labels(**lbl), numbers) for lbl, numbers in rows]
    for name, kind, help_text, field, factor in TRAFFIC_FAMILIES:
        out.rows(Family(f"hangar_{prefix}_{name}", kind, help_text, field, factor), labelled)


def outbox_families(out: Exposition, state: dict) -> None:
    """The database writes kept in Redis while the database was away
    (apps/core/outbox.py): waiting now, and dropped or failed since Redis started."""
    if "error" in state:
        return  # Redis away: no numbers rather than wrong ones
    out.family(
        "hangar_outbox_waiting",
        "gauge",
        "Database writes kept while the database was away, not written yet.",
        [("", state["waiting"])],
    )
    for name, key, help_text in (
        ("hangar_outbox_dropped_total", "dropped", "Kept writes dropped: the outbox was full."),
        ("hangar_outbox_failed_total", "failed", "Kept writes that failed when written, by kind."),
    ):
        out.family(
            name,
            "counter",
            help_text,
            ((labels(kind=kind), count) for kind, count in sorted(state[key].items())),
        )
