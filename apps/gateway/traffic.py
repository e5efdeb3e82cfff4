"""The gateways' request counters turned into windowed numbers, per deployment and route.

Every `hangar-gateway` process writes its cumulative counters each second to
`hangar:gateway:stats:<host:pid>` (apps/gateway/proxy/metrics.py `export`) and
names itself in the set `hangar:gateway:reporters`. Beat's `gateway.judge_traffic`
(every 5 s) reads them all, takes the difference to the previous reading of the
same process (kept in Redis, `hangar:gateway:traffic:last`, so a restarted beat
carries on), adds the processes up and derives requests/s, 5xx and 4xx rates,
latency and time-to-first-token percentiles, tokens/s and requests in flight.

The numbers go to the alert rules (deployment.<id>.*), to the deployment page
(a `traffic` message on the cluster's telemetry group) and to the console's
/metrics (from `hangar:gateway:traffic:current`).

Decisions: a process seen for the first time is only a baseline (its counters
since it started may span any time); a process whose counters went down
restarted, and what it has counted since is the window's; a process whose key
expired (15 s without a report) is dropped from the set.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from apps.alerts.series import deployment_series
from apps.alerts.services import evaluate_deployment_values
from apps.deployments.models import Deployment
from apps.gateway.models import ConsumerKey
from apps.telemetry.live import client, cluster_group

REPORTERS_KEY = "hangar:gateway:reporters"  # as apps/gateway/proxy/state.py
STATS_KEY = "hangar:gateway:stats:"
LAST_KEY = "hangar:gateway:traffic:last"
CURRENT_KEY = "hangar:gateway:traffic:current"
# The current numbers outlive a few missed beats, then vanish rather than go stale.
CURRENT_TTL_S = 60
LAST_TTL_S = 3600


# --- reading -------------------------------------------------------------------------


def read_reports(redis=None) -> dict[str, dict]:
    """Every live gateway process's latest report, by reporter; expired ones leave the set."""
    redis = redis or client()
    reporters = sorted(m.decode() for m in redis.smembers(REPORTERS_KEY))
    if not reporters:
        return {}
    raw = redis.mget([STATS_KEY + r for r in reporters])
    reports, gone = {}, []
    for reporter, body in zip(reporters, raw, strict=True):
        if body is None:
            gone.append(reporter)
            continue
        try:
            reports[reporter] = json.loads(body)
        except ValueError:
            gone.append(reporter)
    if gone:
        redis.srem(REPORTERS_KEY, *gone)
    return reports


# --- windows ---------------------------------------------------------------------------


class Window:
    """What one deployment (or route) did between two readings, all processes added up."""

    __slots__ = ("buckets", "first_token", "in_flight", "latency", "rate", "requests", "tokens")

    # rate and tokens are per second, each process over its own interval, added up.

    def __init__(self, buckets: list[float]) -> None:
        self.buckets = buckets
        self.requests: dict[str, int] = {}
        self.latency = [0] * (len(buckets) + 1)
        self.first_token = [0] * (len(buckets) + 1)
        self.tokens = 0.0
        self.rate = 0.0
        self.in_flight = 0

    def add(self, delta: dict, seconds: float, in_flight: int) -> None:
        for code, n in delta["requests"].items():
            self.requests[code] = self.requests.get(code, 0) + n
        for mine, theirs in ((self.latency, delta["latency"]), (self.first_token, delta["ttft"])):
            for i, n in enumerate(theirs[: len(mine)]):
                mine[i] += n
        if seconds > 0:
            self.tokens += delta["tokens"] / seconds
            self.rate += sum(delta["requests"].values()) / seconds
        self.in_flight += in_flight

    def numbers(self, window_s: float) -> dict:
        total = sum(self.requests.values())
        return {
            "window_s": round(window_s, 3),
            "requests": total,
            "requests_per_s": round(self.rate, 3),
            "http_5xx_rate": (self.requests.get("5xx", 0) / total) if total else 0.0,
            "http_4xx_rate": (self.requests.get("4xx", 0) / total) if total else 0.0,
            "latency_p50_ms": _ms(quantile(0.50, self.buckets, self.latency)),
            "latency_p95_ms": _ms(quantile(0.95, self.buckets, self.latency)),
            "latency_p99_ms": _ms(quantile(0.99, self.buckets, self.latency)),
            "ttft_p50_ms": _ms(quantile(0.50, self.buckets, self.first_token)),
            "ttft_p99_ms": _ms(quantile(0.99, self.buckets, self.first_token)),
            "tokens_per_s": round(self.tokens, 3),
            "in_flight": self.in_flight,
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def quantile(q: float, bounds: list[float], counts: list[int]) -> float | None:
    """The q-quantile of a histogram (counts per bucket, +Inf last), interpolated
    linearly within its bucket as Prometheus's histogram_quantile does; None
    without observations. One in the +Inf bucket is the highest finite bound."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    below = 0
    for i, count in enumerate(counts):
        if count and below + count >= rank:
            if i >= len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i else 0.0
            return lower + (bounds[i] - lower) * (rank - below) / count
        below += count
    return bounds[-1]


def _counters(entry: dict) -> dict:
    return {
        "requests": dict(entry.get("requests") or {}),
        "latency": list((entry.get("latency") or {}).get("counts") or ()),
        "ttft": list((entry.get("first_token") or {}).get("counts") or ()),
        "tokens": sum((entry.get("tokens") or {}).values()),
    }


def _minus(now: dict, before: dict) -> dict | None:
    """now - before, or None where any counter went down (the process restarted)."""
    requests = {}
    for code, n in now["requests"].items():
        requests[code] = n - before["requests"].get(code, 0)
    if any(n < 0 for n in requests.values()) or set(before["requests"]) - set(now["requests"]):
        return None
    hists = {}
    for name in ("latency", "ttft"):
        old = before[name] + [0] * (len(now[name]) - len(before[name]))
        if len(old) > len(now[name]):
            return None
        hists[name] = [a - b for a, b in zip(now[name], old, strict=True)]
        if any(n < 0 for n in hists[name]):
            return None
    tokens = now["tokens"] - before["tokens"]
    if tokens < 0:
        return None
    return {"requests": requests, **hists, "tokens": tokens}


def _entries(report: dict) -> dict[str, dict]:
    return {f"{e['route']}\n{e['deployment']}": e for e in report.get("entries") or ()}


def windows(
    reports: dict[str, dict], last: dict[str, dict]
) -> tuple[dict[str, Window], dict[str, Window], float]:
    """(per deployment id, per route, the longest process interval) from the reports
    now and the previous ones (both by reporter)."""
    deployments: dict[str, Window] = {}
    routes: dict[str, Window] = {}
    longest = 0.0
    for reporter, report in reports.items():
        buckets = list(report.get("buckets") or ())
        before = last.get(reporter)
        now_entries = _entries(report)
        deltas: dict[str, dict] = {}
        seconds = 0.0
        if before is not None:
            seconds = max(0.0, float(report.get("at", 0)) - float(before.get("at", 0)))
        if seconds > 0:  # else a first reading, or no new one since (a process gone quiet)
            old_entries = _entries(before)
            restarted = bool(set(old_entries) - set(now_entries))
            for name, entry in now_entries.items():
                old = old_entries.get(name)
                counters = _counters(entry)
                delta = counters if old is None else _minus(counters, _counters(old))
                if delta is None:
                    restarted = True
                    break
                deltas[name] = delta
            if restarted:
                # Counters went down: a fresh start; all it counted is since then.
                deltas = {name: _counters(entry) for name, entry in now_entries.items()}
            longest = max(longest, seconds)
        for name, entry in now_entries.items():
            delta = deltas.get(name) or {
                "requests": {},
                "latency": [],
                "ttft": [],
                "tokens": 0,
            }
            in_flight = int(entry.get("in_flight") or 0)
            for table, key in ((deployments, entry["deployment"]), (routes, entry["route"])):
                window = table.get(key)
                if window is None:
                    window = table[key] = Window(buckets)
                window.add(delta, seconds, in_flight)
    return deployments, routes, longest


def queue_numbers(reports: dict[str, dict], last: dict[str, dict]) -> dict[str, dict]:
    """Per deployment: requests waiting now (all processes), and the wait's p50/p99 over
    the window, from each process's queue-wait histogram (fairshare.py)."""
    out: dict[str, dict] = {}
    for reporter, report in reports.items():
        buckets = list(report.get("buckets") or ())
        before = (last.get(reporter) or {}).get("queues") or {}
        for deployment, queue in (report.get("queues") or {}).items():
            entry = out.setdefault(
                deployment,
                {"buckets": buckets, "queue_length": 0, "counts": [0] * (len(buckets) + 1)},
            )
            entry["queue_length"] += int(queue.get("waiting") or 0)
            now_counts = list((queue.get("wait") or {}).get("counts") or ())
            old_counts = list(
                ((before.get(deployment) or {}).get("wait") or {}).get("counts") or ()
            )
            old_counts = (old_counts + [0] * len(now_counts))[: len(now_counts)]
            delta = [a - b for a, b in zip(now_counts, old_counts, strict=True)]
            if any(n < 0 for n in delta):  # the process restarted: all it counted is new
                delta = now_counts
            for i, n in enumerate(delta[: len(entry["counts"])]):
                entry["counts"][i] += n
    for entry in out.values():
        counts = entry.pop("counts")
        entry["queue_wait_p50_ms"] = _ms(quantile(0.50, entry["buckets"], counts))
        entry["queue_wait_p99_ms"] = _ms(quantile(0.99, entry["buckets"], counts))
        entry["queued_requests"] = sum(counts)
    return out


# --- the beat task's work ------------------------------------------------------------------


def judge_traffic(redis=None) -> dict:
    """Read every gateway's report, compute the window, publish and alert on it."""
    redis = redis or client()
    reports = read_reports(redis)
    raw_last = redis.get(LAST_KEY)
    last = json.loads(raw_last) if raw_last else {}
    per_deployment, per_route, seconds = windows(reports, last)
    redis.set(LAST_KEY, json.dumps(reports), ex=LAST_TTL_S)
    now = time.time()
    current = {
        "at": now,
        "window_s": round(seconds, 3),
        "deployments": {k: w.numbers(seconds) for k, w in per_deployment.items()},
        "routes": {k: w.numbers(seconds) for k, w in per_route.items()},
    }
    for deployment, queue in queue_numbers(reports, last).items():
        numbers = current["deployments"].setdefault(
            deployment, Window(queue.pop("buckets")).numbers(seconds)
        )
        queue.pop("buckets", None)
        numbers.update(queue)
    redis.set(CURRENT_KEY, json.dumps(current), ex=CURRENT_TTL_S)
    ids = [int(k) for k in current["deployments"] if k.isdigit()]
    known = list(Deployment.objects.filter(pk__in=ids).only("pk", "name", "cluster_id"))
    if seconds > 0:  # a first reading is a baseline: no window to judge yet
        _alert(known, current["deployments"], now)
    _publish(known, current)
    touched = copy_keys_last_used(reports)
    return {
        "reporters": len(reports),
        "deployments": len(known),
        "window_s": seconds,
        "keys_touched": touched,
    }


def copy_keys_last_used(reports: dict[str, dict]) -> int:
    """ConsumerKey.last_used_at from the gateways' reports, in one bulk update.

    Gateways never write the database: they report when each key was last let
    through, and this copies the latest of those (later only) every few seconds.
    """
    latest: dict[int, float] = {}
    for report in reports.values():
        for key_id, at in (report.get("keys_used") or {}).items():
            if str(key_id).isdigit() and isinstance(at, int | float):
                latest[int(key_id)] = max(at, latest.get(int(key_id), 0.0))
    changed = []
    for key in ConsumerKey.objects.filter(pk__in=list(latest)).only("pk", "last_used_at"):
        used = datetime.fromtimestamp(latest[key.pk], tz=UTC)
        if key.last_used_at is None or used > key.last_used_at:
            key.last_used_at = used
            changed.append(key)
    ConsumerKey.objects.bulk_update(changed, ["last_used_at"], batch_size=1000)
    return len(changed)


def _alert(deployments: list[Deployment], numbers: dict[str, dict], now: float) -> None:
    items = []
    for deployment in deployments:
        traffic = numbers[str(deployment.pk)]
        values = deployment_series(deployment.pk, traffic)
        p99 = traffic["latency_p99_ms"]
        detail = (
            f"{deployment.name}: {traffic['requests']} requests in the last "
            f"{traffic['window_s']:.0f} s, {traffic['http_5xx_rate'] * 100:.2f}% 5xx"
            + ("" if p99 is None else f", p99 {p99:.0f} ms")
        )
        items.append((deployment, values, dict.fromkeys(values, detail)))
    if items:
        evaluate_deployment_values(items, ts=now)


def _publish(deployments: list[Deployment], current: dict) -> None:
    """One `traffic` message per deployment to its cluster's browsers (the live page)."""
    layer = get_channel_layer()
    for deployment in deployments:
        async_to_sync(layer.group_send)(
            cluster_group(deployment.cluster_id),
            {
                "type": "traffic.update",
                "cluster": deployment.cluster_id,
                "deployment": deployment.pk,
                "traffic": {**current["deployments"][str(deployment.pk)], "at": current["at"]},
            },
        )


def current_numbers(redis=None) -> dict:
    """The latest computed window: {"at", "window_s", "deployments": {id: {...}}, "routes"}."""
    raw = (redis or client()).get(CURRENT_KEY)
    return json.loads(raw) if raw else {"at": None, "window_s": 0, "deployments": {}, "routes": {}}


def deployment_numbers(deployment_id: int) -> dict | None:
    return current_numbers()["deployments"].get(str(deployment_id))
