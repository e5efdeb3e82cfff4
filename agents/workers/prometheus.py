"""Prometheus text format and histogram quantiles, as pure functions.

Only what latency needs: samples of counters and histograms, label sets
summed away, `histogram_quantile` with Prometheus's own interpolation (linear
within the bucket, the lower bound of the first bucket being 0, the +Inf
bucket answered with the highest finite bound).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

Labels = tuple[tuple[str, str], ...]
Samples = dict[str, list[tuple[Labels, float]]]

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def _parse_labels(text: str) -> Labels:
    labels = []
    pos = 0
    while pos < len(text):
        match = _LABEL.match(text, pos)
        if match is None:
            break
        value = match.group(2).replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
        labels.append((match.group(1), value))
        pos = match.end()
    return tuple(labels)


def _parse_value(text: str) -> float:
    lowered = text.lower()
    if lowered in ("+inf", "inf"):
        return math.inf
    if lowered == "-inf":
        return -math.inf
    return float(text)


def parse_text(text: str) -> Samples:
    """{"metric_name": [(labels, value), ...]} for every sample line."""
    samples: Samples = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            continue
        try:
            value = _parse_value(match.group(4))
        except ValueError:
            continue
        labels = _parse_labels(match.group(3) or "")
        samples.setdefault(match.group(1), []).append((labels, value))
    return samples


def _matches(labels: Labels, wanted: Mapping[str, str]) -> bool:
    have = dict(labels)
    return all(have.get(k) == v for k, v in wanted.items())


def counter_total(samples: Samples, name: str, where: Mapping[str, str] | None = None) -> float:
    """Sum of a counter over all its label sets (or those matching `where`).

    Accepts the name with or without the `_total` suffix.
    """
    series = samples.get(name)
    if series is None and not name.endswith("_total"):
        series = samples.get(name + "_total")
    if series is None and name.endswith("_total"):
        series = samples.get(name[: -len("_total")])
    return sum(v for labels, v in series or () if not where or _matches(labels, where))


def histogram_buckets(samples: Samples, name: str) -> dict[float, float]:
    """{upper bound: cumulative count}, summed over label sets other than `le`."""
    buckets: dict[float, float] = {}
    for labels, value in samples.get(name + "_bucket", ()):
        le = dict(labels).get("le")
        if le is None:
            continue
        try:
            bound = _parse_value(le)
        except ValueError:
            continue
        buckets[bound] = buckets.get(bound, 0.0) + value
    return buckets


def bucket_delta(new: Mapping[float, float], old: Mapping[float, float]) -> dict[float, float]:
    """Observations between two scrapes, per bucket (cumulative)."""
    return {le: count - old.get(le, 0.0) for le, count in new.items()}


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus's histogram_quantile over cumulative buckets; None if empty."""
    if not buckets:
        return None
    ordered = sorted(buckets.items())
    if ordered[-1][0] != math.inf:
        return None  # not a complete histogram
    total = ordered[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for i, (bound, count) in enumerate(ordered):
        if count >= rank:
            if bound == math.inf:
                # Above every finite bucket: the best we know is the highest bound.
                return ordered[i - 1][0] if i > 0 else None
            if i == 0 and bound <= 0:
                return bound
            in_bucket = count - lower_count
            if in_bucket <= 0:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / in_bucket
        lower_bound, lower_count = bound, count
    return None


def quantiles(values: Iterable[float], qs: Iterable[float]) -> list[float | None]:
    """Quantiles of raw observations (linear interpolation between ranks)."""
    ordered = sorted(values)
    out: list[float | None] = []
    for q in qs:
        if not ordered:
            out.append(None)
            continue
        position = q * (len(ordered) - 1)
        low = math.floor(position)
        high = min(low + 1, len(ordered) - 1)
        out.append(ordered[low] + (ordered[high] - ordered[low]) * (position - low))
    return out
