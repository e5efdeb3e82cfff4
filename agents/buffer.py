"""Bounded buffer of samples for when the console is unreachable.

The newest `keep_recent` samples stay exactly as measured: they are what an
operator looks at first after an outage. When the buffer is full, two older
neighbours are merged into one, so older history loses resolution evenly
(1 s, then 2 s, then 4 s per sample...) instead of being dropped, and memory
stays bounded however long the outage lasts.

A merged sample says how many sweeps it stands for in `coalesced` (see
docs/protocol.md): the console can then tell coalescing from lost samples.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from agents.protocol import MAX_FAULTS

Sample = dict[str, Any]

DEFAULT_CAPACITY = 600
# Means, weighted by how many sweeps each side stands for.
_MEAN_FIELDS = ("temperature", "utilization_gpu", "utilization_memory", "power_draw", "fan")
_MEAN_INT_FIELDS = ("memory_used", "sm_clock")
# Cumulative counters: the later reading already includes the earlier one.
_MAX_FIELDS = ("ecc_errors", "xid_errors")


def weight(sample: Sample) -> int:
    """How many sweeps a sample stands for."""
    return 1 + sample.get("coalesced", 0)


def _mean(a: Any, wa: int, b: Any, wb: int, as_int: bool) -> Any:
    if a is None or b is None:
        return b if a is None else a
    value = (a * wa + b * wb) / (wa + wb)
    return round(value) if as_int else round(value, 3)


def _union(a: Iterable[str], b: Iterable[str]) -> list[str]:
    return list(dict.fromkeys([*a, *b]))


def _merge_gpu(a: dict[str, Any], wa: int, b: dict[str, Any], wb: int) -> dict[str, Any]:
    merged = dict(b)
    for key in _MEAN_FIELDS:
        merged[key] = _mean(a[key], wa, b[key], wb, as_int=False)
    for key in _MEAN_INT_FIELDS:
        merged[key] = _mean(a[key], wa, b[key], wb, as_int=True)
    for key in _MAX_FIELDS:
        merged[key] = b[key] if a[key] is None else max(a[key], b[key] or 0)
    if merged["memory_used"] is not None and merged["memory_total"] is not None:
        merged["memory_used"] = min(merged["memory_used"], merged["memory_total"])
    merged["throttle_reasons"] = _union(a["throttle_reasons"], b["throttle_reasons"])
    merged["fault"] = b["fault"] or a["fault"]  # a fault anywhere in the window shows
    merged["uuid"] = b["uuid"] or a["uuid"]
    return merged


def merge(older: Sample, newer: Sample) -> Sample:
    """One sample standing for both: newer's seq and ts, means and unions."""
    wa, wb = weight(older), weight(newer)
    older_gpus = {g["index"]: g for g in older["gpus"]}
    gpus = []
    for g in newer["gpus"]:
        previous = older_gpus.pop(g["index"], None)
        gpus.append(g if previous is None else _merge_gpu(previous, wa, g, wb))
    gpus.extend(older_gpus.values())  # a GPU that vanished mid-window stays visible
    gpus.sort(key=lambda g: g["index"])
    host = dict(newer["host"])
    host["cpu_percent"] = _mean(
        older["host"]["cpu_percent"], wa, newer["host"]["cpu_percent"], wb, as_int=False
    )
    for key in ("memory_used", "disk_used"):
        host[key] = _mean(older["host"][key], wa, newer["host"][key], wb, as_int=True)
    merged = {
        **newer,
        "gpus": gpus,
        "host": host,
        "faults": _union(older["faults"], newer["faults"])[:MAX_FAULTS],
        "coalesced": wa + wb - 1,
    }
    health = _merge_health(older.get("health"), newer.get("health"))
    if health is not None:
        merged["health"] = health
    return merged


def _merge_health(older: list | None, newer: list | None) -> list | None:
    """The newer health read, keeping the Xids of an older one it replaces."""
    if older is None or newer is None:
        return newer if older is None else older
    older_xids = {h["index"]: h["xids"] for h in older}
    return [{**h, "xids": [*older_xids.get(h["index"], []), *h["xids"]][:64]} for h in newer]


class SampleBuffer:
    """Thread-safe: the sampler thread pushes, the network side takes."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, keep_recent: int | None = None) -> None:
        if capacity < 2:
            raise ValueError("capacity must be at least 2")
        self.capacity = capacity
        self.keep_recent = capacity // 2 if keep_recent is None else keep_recent
        if not 0 <= self.keep_recent <= capacity - 2:
            raise ValueError("keep_recent must leave room for at least one pair to merge")
        self._samples: list[Sample] = []
        self._lock = threading.Lock()
        self.coalesced_total = 0  # sweeps folded away since start, for logs and tests

    def __len__(self) -> int:
        with self._lock:
            return len(self._samples)

    def fill(self) -> dict[str, Any]:
        """How full the buffer is, for the log and the health file (agents/stream.py).

        `sweeps` is what the samples stand for: more than `samples` once old ones
        were merged; `oldest_ts` is the newest sweep of the oldest sample held."""
        with self._lock:
            samples = self._samples
            return {
                "samples": len(samples),
                "capacity": self.capacity,
                "percent": round(100 * len(samples) / self.capacity, 1),
                "sweeps": sum(weight(s) for s in samples),
                "merged_total": self.coalesced_total,
                "oldest_ts": samples[0].get("ts") if samples else None,
            }

    def push(self, sample: Sample) -> None:
        with self._lock:
            self._samples.append(sample)
            self._shrink()

    def take(self, limit: int) -> list[Sample]:
        """Remove and return up to `limit` samples, oldest first."""
        with self._lock:
            taken, self._samples = self._samples[:limit], self._samples[limit:]
            return taken

    def requeue(self, samples: list[Sample]) -> None:
        """Put back samples that could not be sent, ahead of newer ones."""
        with self._lock:
            self._samples[:0] = samples
            self._shrink()

    def _shrink(self) -> None:
        samples = self._samples
        while len(samples) > self.capacity:
            i = self._pair_to_merge()
            samples[i : i + 2] = [merge(samples[i], samples[i + 1])]
            self.coalesced_total += 1

    def _pair_to_merge(self) -> int:
        """Index of the older sample of the pair to merge next.

        Like an exponential histogram: merge the two oldest samples of the
        smallest weight that two neighbours share. Weights then stay powers
        of two, coarsest first, at most two sizes apart, and an outage twice
        as long costs one halving of the older samples' resolution.
        """
        samples = self._samples
        end = len(samples) - self.keep_recent - 1  # last index whose pair is all "older"
        best, best_weight = -1, 0
        for i in range(end):
            w = weight(samples[i])
            if w == weight(samples[i + 1]) and (best < 0 or w < best_weight):
                best, best_weight = i, w
        if best >= 0:
            return best
        # No equal neighbours (only after requeue() mixes sizes): lightest pair.
        return min(range(end), key=lambda i: weight(samples[i]) + weight(samples[i + 1]))
