"""The series rules are written against: telemetry's flattened names plus derived ones.

Every value a rule can watch is a flat name -> number. Worker metrics plug in
here as more names (worker.<id>.p99_ms, ...) when samples carry them, and
other sources (worker status, node state) hand the evaluator their own names
(worker.<id>.crashloop, node.offline) through services.evaluate_values; the
gateway's request metrics are a deployment's own (deployment.<id>.http_5xx_rate)
through services.evaluate_deployment_values.
"""

from __future__ import annotations

from agents.protocol import HEALTH_COUNTERS, HEALTH_FLAGS, NVLINK_COUNTER_NAMES
from apps.telemetry.series import flatten

# Counters and derived gauges telemetry does not roll up but alerts watch.
GPU_COUNTERS = ("ecc_errors", "xid_errors")
WORKER_METRICS = ("p50_ms", "p95_ms", "p99_ms", "rps", "error_rate")

# Names that do not come from samples (docs/alerts.md lists them all).
NODE_OFFLINE = "node.offline"

# A deployment's own series, from the gateway's request counters (apps/gateway/traffic.py):
# deployment.<id>.<metric>. Rates are fractions of the window's requests (0.001 = 0.1 %).
DEPLOYMENT_METRICS = (
    "requests_per_s",
    "http_5xx_rate",
    "http_4xx_rate",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "tokens_per_s",
    "in_flight",
    # The gateways' fair-share queue (apps/gateway/proxy/fairshare.py).
    "queue_length",
    "queue_wait_p50_ms",
    "queue_wait_p99_ms",
)


def deployment_series(deployment_id: int, traffic: dict) -> dict[str, float]:
    """deployment.<id>.<metric> of one deployment's window (None dropped: a window
    without requests has no latency)."""
    prefix = f"deployment.{deployment_id}."
    return {
        prefix + metric: float(traffic[metric])
        for metric in DEPLOYMENT_METRICS
        if traffic.get(metric) is not None
    }


def health_series(reads) -> dict[str, float]:
    """gpu.N.<health counter>, gpu.N.<flag> (1 or 0), gpu.N.nvlink_errors and
    gpu.N.pcie_link_width_below_max from a sample's health reads (docs/health.md).
    Unsupported fields give no series: a rule on them never fires, never sees 0."""
    values: dict[str, float] = {}
    for read in reads:
        prefix = f"gpu.{read['index']}."
        for name in HEALTH_COUNTERS:
            if read.get(name) is not None:
                values[prefix + name] = float(read[name])
        for name in HEALTH_FLAGS:
            if read.get(name) is not None:
                values[prefix + name] = 1.0 if read[name] else 0.0
        counts = [
            link[name]
            for link in read.get("nvlink") or ()
            for name in NVLINK_COUNTER_NAMES
            if link.get(name) is not None
        ]
        if counts:
            values[prefix + "nvlink_errors"] = float(sum(counts))
        width, width_max = read.get("pcie_link_width"), read.get("pcie_link_width_max")
        if width and width_max:
            values[prefix + "pcie_link_width_below_max"] = 1.0 if width < width_max else 0.0
    return values


def alert_series(sample: dict) -> dict[str, float]:
    """flatten(sample) plus gpu.N.memory_used_percent, gpu.N.ecc_errors, gpu.N.xid_errors,
    host.memory_used_percent, host.disk_used_percent and worker.<id>.<metric>."""
    values = flatten(sample)
    for gpu in sample.get("gpus", ()):
        prefix = f"gpu.{gpu['index']}."
        used, total = gpu.get("memory_used"), gpu.get("memory_total")
        if used is not None and total:
            values[prefix + "memory_used_percent"] = 100.0 * used / total
        for counter in GPU_COUNTERS:
            count = gpu.get(counter)
            if count is not None:
                values[prefix + counter] = float(count)
    host = sample.get("host") or {}
    for part in ("memory", "disk"):
        used, total = host.get(f"{part}_used"), host.get(f"{part}_total")
        if used is not None and total:
            values[f"host.{part}_used_percent"] = 100.0 * used / total
    values.update(health_series(sample.get("health") or ()))
    for worker in sample.get("workers") or ():
        prefix = f"worker.{worker['worker_id']}."
        for metric in WORKER_METRICS:
            value = worker.get(metric)
            if value is not None:
                values[prefix + metric] = float(value)
    return values
