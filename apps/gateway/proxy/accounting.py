"""Usage accounting: every request counted per minute in process, added into Redis each second.

One entry per (minute, key, route, deployment, worker, status class) holds
requests, prompt and completion tokens, summed time to first token (and how
many streams that covers), summed duration and summed queued time. Every
second one pipeline adds this process's entries into the minute's hash
`hangar:gw:<namespace>:usage:<minute>` (HINCRBY, so processes add up) and names
the minute in `hangar:gw:<namespace>:usage:minutes`; the console's beat moves
closed minutes into the database in bulk (apps/gateway/usage.py). While Redis
is away the entries wait here (bounded) and go with the next pipeline.

The optional per-request log (HANGAR_GATEWAY_REQUEST_LOG) pushes one small
JSON record per request, never a prompt or a completion.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict

log = logging.getLogger("hangar.gateway")

METRICS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "first_token_ms",
    "streams",
    "duration_ms",
    "queued_ms",
)
# Beyond this many distinct entries waiting for Redis, new ones are counted as dropped.
MAX_PENDING = 200_000
REQUEST_LOG_MAX = 1_000_000


def usage_key(namespace: str, minute: int) -> str:
    return f"hangar:gw:{namespace}:usage:{minute}"


def minutes_key(namespace: str) -> str:
    return f"hangar:gw:{namespace}:usage:minutes"


def request_log_key(namespace: str) -> str:
    return f"hangar:gw:{namespace}:requests"


class Accounts:
    def __init__(self, namespace: str, request_log: bool = False) -> None:
        self.namespace = namespace
        self.request_log = request_log
        self.pending: dict[tuple, list[int]] = defaultdict(lambda: [0] * len(METRICS))
        self.records: list[str] = []
        self.dropped = 0
        self.reporter = ""  # host:pid, for lease ids

    def count(
        self, *, at: float, key: int, route: str, deployment: str, worker: int | None,
        status: int, prompt: int, completion: int, first_token_s: float | None,
        duration_s: float, queued_s: float, request_id: str = "", project: int | None = None,
    ) -> None:  # fmt: skip
        minute = int(at) - int(at) % 60
        entry_key = (minute, key, route, deployment, worker or 0, _status_class(status))
        if entry_key not in self.pending and len(self.pending) >= MAX_PENDING:
            self.dropped += 1
            return
        entry = self.pending[entry_key]
        entry[0] += 1
        entry[1] += prompt
        entry[2] += completion
        if first_token_s is not None:
            entry[3] += round(first_token_s * 1000)
            entry[4] += 1
        entry[5] += round(duration_s * 1000)
        entry[6] += round(queued_s * 1000)
        if self.request_log and len(self.records) < MAX_PENDING:
            self.records.append(
                json.dumps(
                    {
                        "at": at,
                        "id": request_id,
                        "key": key,
                        "project": project,
                        "route": route,
                        "deployment": deployment,
                        "worker": worker,
                        "status": status,
                        "prompt": prompt,
                        "completion": completion,
                        "first_token_ms": None
                        if first_token_s is None
                        else round(first_token_s * 1000),
                        "duration_ms": round(duration_s * 1000),
                        "queued_ms": round(queued_s * 1000),
                    },
                    separators=(",", ":"),
                )
            )

    async def flush(self, redis) -> None:
        """Add what this process counted into Redis; kept for the next try on failure."""
        if not self.pending and not self.records:
            return
        pending, records = self.pending, self.records
        self.pending, self.records = defaultdict(lambda: [0] * len(METRICS)), []
        try:
            # MULTI/EXEC: all of it lands or none, so a retry never counts twice.
            async with redis.pipeline(transaction=True) as pipe:
                minutes = set()
                for (minute, key, route, deployment, worker, status), values in pending.items():
                    name = usage_key(self.namespace, minute)
                    base = f"{key}|{route}|{deployment}|{worker}|{status}|"
                    for metric, value in zip(METRICS, values, strict=True):
                        if value:
                            pipe.hincrby(name, base + metric, value)
                    minutes.add(minute)
                for minute in minutes:
                    pipe.sadd(minutes_key(self.namespace), minute)
                    # A minute nobody moves (no console) still goes away, after a week.
                    pipe.expire(usage_key(self.namespace, minute), 7 * 86400)
                if records:
                    pipe.rpush(request_log_key(self.namespace), *records)
                    pipe.ltrim(request_log_key(self.namespace), -REQUEST_LOG_MAX, -1)
                await pipe.execute()
        except Exception as exc:  # Redis away: merge back, try again next second
            log.warning("usage not written to Redis yet (%s); kept for the next try", exc)
            for entry_key, values in pending.items():
                mine = self.pending[entry_key]
                for i, value in enumerate(values):
                    mine[i] += value
            self.records = records + self.records


def _status_class(status: int) -> str:
    # The gateway's own 429s are kept apart from an engine's 4xx.
    return "429" if status == 429 else f"{status // 100}xx"
