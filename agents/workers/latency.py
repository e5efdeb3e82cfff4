"""Sliding windows that turn scrapes or probes into WORKER_METRICS.

Both are fed by the supervisor and hold no sockets, so they are tested with
plain text and numbers. Prometheus: quantiles of the histogram's bucket
deltas between the oldest and newest scrape in the window (what the engine
served in that time, not since it started); requests per second and error
rate from counter deltas. Probe: percentiles of the supervisor's own small
requests (its health checks), for engines without metrics; rps is then
unknown (null), the error rate is the share of failed probes.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from agents.workers import prometheus
from agents.workers.engines import PrometheusNames

DEFAULT_WINDOW_S = 60.0
_QUANTILES = (0.5, 0.95, 0.99)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


@dataclass(frozen=True)
class Scrape:
    ts: float
    buckets: dict[float, float]
    requests: float
    errors: float | None


def read_scrape(ts: float, text: str, names: PrometheusNames) -> Scrape:
    samples = prometheus.parse_text(text)
    buckets = prometheus.histogram_buckets(samples, names.latency_histogram)
    if names.requests_counter and (
        names.requests_counter in samples or names.requests_counter + "_total" in samples
    ):
        requests = prometheus.counter_total(samples, names.requests_counter)
    else:
        requests = prometheus.counter_total(samples, names.latency_histogram + "_count")
    errors: float | None = None
    if names.errors_counter and (
        names.errors_counter in samples
        or names.errors_counter + "_total" in samples
        or names.errors_counter.removesuffix("_total") in samples
    ):
        errors = prometheus.counter_total(samples, names.errors_counter)
    elif names.error_labels and names.requests_counter:
        errors = prometheus.counter_total(samples, names.requests_counter, names.error_labels)
    return Scrape(ts, buckets, requests, errors)


def _went_backwards(new: Scrape, old: Scrape) -> bool:
    """A counter reset: the engine restarted between scrapes."""
    if new.requests < old.requests:
        return True
    return any(new.buckets.get(le, 0.0) < count for le, count in old.buckets.items())


class PrometheusWindow:
    source = "prometheus"

    def __init__(self, names: PrometheusNames, window_s: float = DEFAULT_WINDOW_S) -> None:
        self.names = names
        self.window_s = window_s
        self.scrapes: deque[Scrape] = deque()

    def add(self, ts: float, text: str) -> None:
        scrape = read_scrape(ts, text, self.names)
        if self.scrapes and _went_backwards(scrape, self.scrapes[-1]):
            self.scrapes.clear()
        self.scrapes.append(scrape)
        # Keep one scrape at or before the window's start, so the deltas span it.
        while len(self.scrapes) > 2 and self.scrapes[1].ts <= ts - self.window_s:
            self.scrapes.popleft()

    def summary(self, worker_id: int) -> dict[str, Any]:
        p50 = p95 = p99 = rps = error_rate = None
        if len(self.scrapes) >= 2:
            old, new = self.scrapes[0], self.scrapes[-1]
            delta = prometheus.bucket_delta(new.buckets, old.buckets)
            p50, p95, p99 = (prometheus.histogram_quantile(q, delta) for q in _QUANTILES)
            elapsed = new.ts - old.ts
            served = new.requests - old.requests
            if elapsed > 0:
                rps = round(served / elapsed, 4)
            if new.errors is not None and old.errors is not None and served > 0:
                error_rate = round(min(1.0, max(0.0, (new.errors - old.errors) / served)), 4)
            elif served > 0 or new.errors is not None:
                error_rate = 0.0
        return _metrics(worker_id, p50, p95, p99, rps, error_rate, self.source)


class ProbeWindow:
    source = "probe"

    def __init__(self, window_s: float = DEFAULT_WINDOW_S) -> None:
        self.window_s = window_s
        self.probes: deque[tuple[float, float | None]] = deque()  # (ts, seconds or None)

    def add(self, ts: float, seconds: float | None) -> None:
        """One probe: how long it took, or None when it failed."""
        self.probes.append((ts, seconds))
        while self.probes and self.probes[0][0] < ts - self.window_s:
            self.probes.popleft()

    def summary(self, worker_id: int) -> dict[str, Any]:
        ok = [s for _, s in self.probes if s is not None]
        p50, p95, p99 = prometheus.quantiles(ok, _QUANTILES)
        error_rate = None
        if self.probes:
            error_rate = round((len(self.probes) - len(ok)) / len(self.probes), 4)
        return _metrics(worker_id, p50, p95, p99, None, error_rate, self.source)


def _metrics(worker_id, p50, p95, p99, rps, error_rate, source) -> dict[str, Any]:
    def finite(v: float | None) -> float | None:
        return v if v is None or math.isfinite(v) else None

    return {
        "worker_id": worker_id,
        "p50_ms": _ms(finite(p50)),
        "p95_ms": _ms(finite(p95)),
        "p99_ms": _ms(finite(p99)),
        "rps": rps,
        "error_rate": error_rate,
        "source": source,
    }
