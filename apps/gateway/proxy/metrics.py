"""Request metrics per route and deployment, kept in process, shown at /metrics."""

from __future__ import annotations

import bisect
from collections import defaultdict

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self.latency: dict[tuple[str, str], Histogram] = defaultdict(Histogram)
        self.first_token: dict[tuple[str, str], Histogram] = defaultdict(Histogram)
        self.tokens: dict[tuple[str, str, str], int] = defaultdict(int)
        self.refused: dict[tuple[str, str], int] = defaultdict(int)
        self.in_flight: dict[tuple[str, str], int] = defaultdict(int)
        self.queue_wait: dict[str, Histogram] = defaultdict(Histogram)
        self.retries = 0
        self.cancelled = 0
        self.limits_unchecked = 0
        self.fair = None  # the FairShare, for the queue's length
        # Key id -> when this process last let it through (the console keeps it).
        self.key_used: dict[int, float] = {}

    def request_done(self, route: str, deployment: str, status: int, seconds: float) -> None:
        self.requests[(route, deployment, f"{status // 100}xx")] += 1
        self.latency[(route, deployment)].observe(seconds)

    def refuse(self, reason: str, key_prefix: str = "") -> None:
        """A refused request is counted per key and reason, not logged one by one."""
        self.refused[(reason, key_prefix)] += 1

    def render(self, snapshot_age: float, redis_ok: bool, generation: int) -> str:
        lines = [
            "# HELP hangar_gateway_requests_total Requests answered, by status class.",
            "# TYPE hangar_gateway_requests_total counter",
        ]
        for (route, deployment, code), n in sorted(self.requests.items()):
            labels = f'route="{route}",deployment="{deployment}",code="{code}"'
            lines.append(f"hangar_gateway_requests_total{{{labels}}} {n}")
        for name, table, help_text in (
            ("hangar_gateway_request_seconds", self.latency, "Time to the whole answer."),
            (
                "hangar_gateway_first_token_seconds",
                self.first_token,
                "Time to a stream's first chunk.",
            ),
        ):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
            for (route, deployment), hist in sorted(table.items()):
                labels = f'route="{route}",deployment="{deployment}"'
                running = 0
                for bound, count in zip((*BUCKETS, float("inf")), hist.counts, strict=True):
                    running += count
                    le = "+Inf" if bound == float("inf") else f"{bound:g}"
                    lines.append(f'{name}_bucket{{{labels},le="{le}"}} {running}')
                lines.append(f"{name}_sum{{{labels}}} {hist.sum:.6f}")
                lines.append(f"{name}_count{{{labels}}} {running}")
        lines += ["# TYPE hangar_gateway_tokens_total counter"]
        for (route, deployment, kind), n in sorted(self.tokens.items()):
            labels = f'route="{route}",deployment="{deployment}",kind="{kind}"'
            lines.append(f"hangar_gateway_tokens_total{{{labels}}} {n}")
        lines += ["# TYPE hangar_gateway_in_flight gauge"]
        for (route, deployment), n in sorted(self.in_flight.items()):
            lines.append(
                f'hangar_gateway_in_flight{{route="{route}",deployment="{deployment}"}} {n}'
            )
        lines += ["# TYPE hangar_gateway_refused_total counter"]
        for (reason, prefix), n in sorted(self.refused.items()):
            lines.append(f'hangar_gateway_refused_total{{reason="{reason}",key="{prefix}"}} {n}')
        lines += [
            "# HELP hangar_gateway_queue_wait_seconds Time requests waited for a slot "
            "(those that waited at all).",
            "# TYPE hangar_gateway_queue_wait_seconds histogram",
        ]
        for deployment, hist in sorted(self.queue_wait.items()):
            running = 0
            for bound, count in zip((*BUCKETS, float("inf")), hist.counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                lines.append(
                    f'hangar_gateway_queue_wait_seconds_bucket{{deployment="{deployment}",'
                    f'le="{le}"}} {running}'
                )
            lines.append(
                f'hangar_gateway_queue_wait_seconds_sum{{deployment="{deployment}"}} {hist.sum:.6f}'
            )
            lines.append(
                f'hangar_gateway_queue_wait_seconds_count{{deployment="{deployment}"}} {running}'
            )
        lines += [
            "# HELP hangar_gateway_queued Requests waiting for a slot now.",
            "# TYPE hangar_gateway_queued gauge",
        ]
        if self.fair is not None:
            for deployment, state in sorted(self.fair.deployments.items()):
                lines.append(f'hangar_gateway_queued{{deployment="{deployment}"}} {state.waiting}')
        lines += [
            "# HELP hangar_gateway_limits_unchecked_total Requests served without a limit "
            "check because Redis could not be asked.",
            "# TYPE hangar_gateway_limits_unchecked_total counter",
            f"hangar_gateway_limits_unchecked_total {self.limits_unchecked}",
        ]
        age = snapshot_age if snapshot_age != float("inf") else -1
        lines += [
            "# TYPE hangar_gateway_upstream_retries_total counter",
            f"hangar_gateway_upstream_retries_total {self.retries}",
            "# TYPE hangar_gateway_client_cancelled_total counter",
            f"hangar_gateway_client_cancelled_total {self.cancelled}",
            "# HELP hangar_gateway_snapshot_age_seconds Since the console last confirmed keys "
            "and routes (-1: never).",
            "# TYPE hangar_gateway_snapshot_age_seconds gauge",
            f"hangar_gateway_snapshot_age_seconds {age:.3f}",
            "# TYPE hangar_gateway_redis_up gauge",
            f"hangar_gateway_redis_up {1 if redis_ok else 0}",
            "# TYPE hangar_gateway_snapshot_generation gauge",
            f"hangar_gateway_snapshot_generation {generation}",
        ]
        return "\n".join(lines) + "\n"


def export(metrics: Metrics) -> dict:
    """The counters as JSON for the console (cumulative since this process started).

    One entry per (route, deployment): requests by status class, latency and time to
    first token as histogram bucket counts (BUCKETS, then +Inf) with their sums,
    tokens by kind, and requests in flight now.
    """
    entries: dict[tuple[str, str], dict] = {}

    def entry(route: str, deployment: str) -> dict:
        return entries.setdefault(
            (route, deployment),
            {
                "route": route,
                "deployment": deployment,
                "requests": {},
                "latency": {"counts": [0] * (len(BUCKETS) + 1), "sum": 0.0},
                "first_token": {"counts": [0] * (len(BUCKETS) + 1), "sum": 0.0},
                "tokens": {},
                "in_flight": 0,
            },
        )

    for (route, deployment, code), n in metrics.requests.items():
        entry(route, deployment)["requests"][code] = n
    for name, table in (("latency", metrics.latency), ("first_token", metrics.first_token)):
        for (route, deployment), hist in table.items():
            entry(route, deployment)[name] = {"counts": list(hist.counts), "sum": hist.sum}
    for (route, deployment, kind), n in metrics.tokens.items():
        entry(route, deployment)["tokens"][kind] = n
    for (route, deployment), n in metrics.in_flight.items():
        entry(route, deployment)["in_flight"] = n
    keys_used = {str(key): at for key, at in metrics.key_used.items()}
    queues = {}
    deployments = set(metrics.queue_wait)
    if metrics.fair is not None:
        deployments |= set(metrics.fair.deployments)
    for deployment in deployments:
        hist = metrics.queue_wait.get(deployment)
        state = metrics.fair.deployments.get(deployment) if metrics.fair else None
        queues[deployment] = {
            "waiting": state.waiting if state else 0,
            "wait": {"counts": list(hist.counts), "sum": hist.sum} if hist else None,
        }
    return {
        "buckets": list(BUCKETS),
        "entries": list(entries.values()),
        "keys_used": keys_used,
        "queues": queues,
    }
