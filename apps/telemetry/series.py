"""Flatten samples into named series and roll them up per minute."""

from __future__ import annotations

GPU_METRICS = (
    "temperature",
    "utilization_gpu",
    "utilization_memory",
    "memory_used",
    "power_draw",
    "sm_clock",
    "fan",
)
HOST_METRICS = ("cpu_percent", "memory_used", "disk_used")
WORKER_METRICS = ("p50_ms", "p95_ms", "p99_ms", "rps", "error_rate")


def flatten(sample: dict) -> dict[str, float]:
    """{"gpu.0.temperature": 41.0, "host.cpu_percent": 12.5, ...} (None dropped)."""
    values: dict[str, float] = {}
    for gpu in sample.get("gpus", ()):
        prefix = f"gpu.{gpu['index']}."
        for metric in GPU_METRICS:
            value = gpu.get(metric)
            if value is not None:
                values[prefix + metric] = float(value)
    for worker in sample.get("workers") or ():
        prefix = f"worker.{worker['worker_id']}."
        for metric in WORKER_METRICS:
            value = worker.get(metric)
            if value is not None:
                values[prefix + metric] = float(value)
    host = sample.get("host") or {}
    for metric in HOST_METRICS:
        value = host.get(metric)
        if value is not None:
            values["host." + metric] = float(value)
    return values


class MinuteRollup:
    """Accumulates one node's samples for the current minute."""

    __slots__ = ("count", "minute", "stats")

    def __init__(self, minute: int):
        self.minute = minute
        self.count = 0
        self.stats: dict[str, list[float]] = {}

    def add(self, values: dict[str, float], weight: int = 1) -> None:
        """`weight`: the sweeps a sample stands for (1 + its `coalesced`: an agent's
        buffer merges old samples during a long outage, agents/buffer.py), so the
        minute's count is the sweeps taken, merged or not."""
        self.count += weight
        for key, value in values.items():
            stat = self.stats.get(key)
            if stat is None:
                self.stats[key] = [value, value, value * weight, weight]
            else:
                if value < stat[0]:
                    stat[0] = value
                if value > stat[1]:
                    stat[1] = value
                stat[2] += value * weight
                stat[3] += weight

    def summary(self) -> dict[str, list[float]]:
        """{series: [min, mean, max]}, with a 4th item, the series' own count, only
        where it differs from the minute's sample count (a series that began or
        ended within the minute): enough to merge two parts of a minute exactly."""
        return {
            key: _packed(lo, total / n, hi, n, self.count)
            for key, (lo, hi, total, n) in self.stats.items()
        }


def _packed(lo: float, mean: float, hi: float, n: int, samples: int) -> list[float]:
    return [lo, round(mean, 3), hi] if n == samples else [lo, round(mean, 3), hi, n]


def merge_minutes(
    samples_a: int, series_a: dict[str, list], samples_b: int, series_b: dict[str, list]
) -> tuple[int, dict[str, list[float]]]:
    """One minute's summary from two parts of it (two sockets of one node, or a
    stored row and a later flush): counts add, min and max combine, means weigh by
    count. Returns (samples, series)."""
    samples = samples_a + samples_b
    merged = {}
    for key in series_a.keys() | series_b.keys():
        parts = [
            (s[0], s[1], s[2], s[3] if len(s) > 3 else count)
            for s, count in ((series_a.get(key), samples_a), (series_b.get(key), samples_b))
            if s is not None
        ]
        n = sum(part[3] for part in parts)
        mean = sum(part[1] * part[3] for part in parts) / n if n else parts[0][1]
        lo = min(part[0] for part in parts)
        hi = max(part[2] for part in parts)
        merged[key] = _packed(lo, mean, hi, n, samples)
    return samples, merged
