"""Limits: every ceiling that applies to a request, judged at once in one Redis round trip.

The shape is Sentry's quotas: one Lua script checks every counter a request
touches (key, user, project, each member, each key; per route or for all) and
only when all have room charges them all. A request is charged its *estimate*
of tokens at admission (`estimate_tokens`); when it ends, `settle` charges the
difference to what the engine reported (a refund when it used less). Requests
in progress are leases in a sorted set, scored by when they lapse, so a
gateway that dies holding some frees them within `LEASE_S` (the live ones are
renewed while they run).

Windows are fixed and aligned: the minute on the epoch, the day from midnight
and the week from Monday 00:00 in the console's time zone. A window ends all at
once ("resets on time"), which is what Retry-After and x-ratelimit-reset say.
docs/limits.md gives the estimate and how far a limit can be overrun.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from redis.exceptions import NoScriptError

log = logging.getLogger("hangar.gateway")

LEASE_S = 60
# Admission. KEYS: one per check. ARGV: now, lease id, lease expiry, then per check
# (kind, limit, amount, expire_at): kind "w" a window counter, "c" a lease set.
# Returns {0, used...} when admitted (each counter after the charge), else
# {index of the first check that has no room, its use now}.
ADMIT = """
local now = tonumber(ARGV[1])
local used = {}
for i = 1, #KEYS do
  local base = 3 + (i - 1) * 4
  local kind, limit, amount = ARGV[base + 1], tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  local current
  if kind == 'c' then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    current = redis.call('ZCARD', KEYS[i])
  else
    current = tonumber(redis.call('GET', KEYS[i]) or '0')
  end
  if current + amount > limit then return {i, current} end
  used[i] = current + amount
end
for i = 1, #KEYS do
  local base = 3 + (i - 1) * 4
  if ARGV[base + 1] == 'c' then
    redis.call('ZADD', KEYS[i], ARGV[3], ARGV[2])
    redis.call('EXPIREAT', KEYS[i], math.floor(tonumber(ARGV[3])) + 1)
  else
    redis.call('INCRBY', KEYS[i], ARGV[base + 3])
    redis.call('EXPIREAT', KEYS[i], ARGV[base + 4])
  end
end
return {0, unpack(used)}
"""
# Settling. KEYS: the request's counters. ARGV: lease id, then per key (kind, delta):
# a window counter still alive takes the delta; a lease set loses the lease.
SETTLE = """
for i = 1, #KEYS do
  local kind, delta = ARGV[2 * i], tonumber(ARGV[2 * i + 1])
  if kind == 'c' then
    redis.call('ZREM', KEYS[i], ARGV[1])
  elseif delta ~= 0 and redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('INCRBY', KEYS[i], delta)
  end
end
return 1
"""
# KEYS: lease sets; ARGV: lease id, new expiry. Renews only leases still held.
RENEW = """
for i = 1, #KEYS do
  if redis.call('ZSCORE', KEYS[i], ARGV[1]) then
    redis.call('ZADD', KEYS[i], 'XX', ARGV[2], ARGV[1])
    redis.call('EXPIREAT', KEYS[i], math.floor(tonumber(ARGV[2])) + 1)
  end
end
return 1
"""

SCRIPTS = {"admit": ADMIT, "settle": SETTLE, "renew": RENEW}

# The fields of a limit, what each counts, and its window.
FIELDS = {
    "requests_per_minute": ("requests", "minute"),
    "tokens_per_minute": ("tokens", "minute"),
    "tokens_per_day": ("tokens", "day"),
    "tokens_per_week": ("tokens", "week"),
    "concurrent_requests": ("concurrent", None),
}
# Completion tokens assumed for a request that sets no max_tokens (docs/limits.md).
DEFAULT_COMPLETION_ESTIMATE = 256


@dataclass(frozen=True)
class Rule:
    """One limit of the snapshot as the gateway keeps it."""

    id: int
    scope: str  # key | user | project | each-member | each-key
    subject: int  # the key, user or project id
    route: str | None
    values: dict  # field -> ceiling


@dataclass
class Check:
    rule: Rule
    field: str
    counter: str  # the Redis key
    kind: str  # "w" window, "c" concurrency
    limit: int
    amount: int
    resets_at: float  # window end; for concurrency, 0


@dataclass
class Admission:
    """What was charged for one request, to settle when it ends."""

    checks: list[Check] = field(default_factory=list)
    lease: str = ""
    estimate: int = 0
    used: list[int] = field(default_factory=list)
    settled: bool = False


@dataclass
class Refusal:
    check: Check
    used: int


class Windows:
    """Window starts and ends in the console's time zone, worked out once a second."""

    def __init__(self, zone: str = "UTC") -> None:
        try:
            self.zone = ZoneInfo(zone)
        except (KeyError, ValueError):
            self.zone = ZoneInfo("UTC")
        self._at = -1
        self._bounds: dict[str, tuple[int, int]] = {}

    def bounds(self, now: float) -> dict[str, tuple[int, int]]:
        second = int(now)
        if second != self._at:
            minute = second - second % 60
            local = datetime.fromtimestamp(second, self.zone)
            midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
            # zoneinfo adds on the wall clock: a day across a DST change is 23 or 25 h.
            day_end = int((midnight + timedelta(days=1)).timestamp())
            monday = midnight - timedelta(days=midnight.weekday())
            week_end = int((monday + timedelta(days=7)).timestamp())
            self._bounds = {
                "minute": (minute, minute + 60),
                "day": (int(midnight.timestamp()), day_end),
                "week": (int(monday.timestamp()), week_end),
            }
            self._at = second
        return self._bounds


def estimate_tokens(payload: dict, body_bytes: int) -> int:
    """An upper estimate of what a request will use: its prompt plus what it may generate.

    The prompt is taken as a third of the body's bytes (English runs about four
    bytes a token, Chinese about three; the JSON around it only adds), and the
    completion as max_tokens (or max_completion_tokens) when set, else
    DEFAULT_COMPLETION_ESTIMATE. Embeddings generate nothing.
    """
    prompt = math.ceil(body_bytes / 3)
    if "input" in payload and "messages" not in payload and "prompt" not in payload:
        return prompt
    wanted = payload.get("max_completion_tokens") or payload.get("max_tokens")
    if isinstance(wanted, int) and not isinstance(wanted, bool) and wanted > 0:
        completion = wanted
    else:
        completion = DEFAULT_COMPLETION_ESTIMATE
    n = payload.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        completion *= n
    return prompt + completion


def subject_of(rule: Rule, key) -> str | None:
    """The counter's subject for `key` under `rule`; None when the rule doesn't apply."""
    if rule.scope == "key":
        return f"k{key.id}" if rule.subject == key.id else None
    if rule.scope == "user":
        return f"u{key.user}" if key.user is not None and rule.subject == key.user else None
    if key.project is None or rule.subject != key.project:
        return None
    if rule.scope == "project":
        return f"p{key.project}"
    if rule.scope == "each-key":
        return f"p{key.project}k{key.id}"
    # each-member: a person's keys together; an application's keys together
    owner = f"u{key.user}" if key.user is not None else f"s{key.service_account}"
    return f"p{key.project}{owner}"


def checks_for(
    rules: list[tuple[Rule, str]], route: str, estimate: int, now: float, windows: Windows,
    namespace: str,
) -> list[Check]:  # fmt: skip
    """Every counter this request to `route` touches, with what it would charge."""
    bounds = windows.bounds(now)
    checks = []
    for rule, subject in rules:
        if rule.route is not None and rule.route != route:
            continue
        for name, ceiling in rule.values.items():
            counts, window = FIELDS[name]
            base = f"hangar:gw:{namespace}:lim:{rule.id}:{subject}:{name}"
            if counts == "concurrent":
                checks.append(Check(rule, name, base, "c", ceiling, 1, 0.0))
                continue
            start, end = bounds[window]
            amount = 1 if counts == "requests" else estimate
            checks.append(Check(rule, name, f"{base}:{start}", "w", ceiling, amount, end))
    return checks


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()


class LimitStore:
    """The Redis side of limits, batched: requests that arrive together share round trips.

    Admissions and settlements go, in the order they were asked for, through one
    sender: the first at once, and those that come while a batch is out go
    together in one pipeline when it returns. Nothing waits at low load; at high
    load one round trip serves many requests. Each script stays atomic, and a
    settlement asked for before an admission is applied before it (a refund is
    in place for the client's next request). Scripts go by SHA and are loaded
    again when Redis has forgotten them (a restart).
    """

    def __init__(self, redis) -> None:
        self.redis = redis
        self._queue: list[tuple[str, list, asyncio.Future | None]] = []
        self._sender: asyncio.Future | None = None
        self._shas = {name: _sha(body) for name, body in SCRIPTS.items()}

    def _send(self, script: str, call: list, future: asyncio.Future | None) -> None:
        self._queue.append((script, call, future))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.ensure_future(self._send_all())

    async def _send_all(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                answers = await self._run([(script, call) for script, call, _f in batch])
            except Exception as exc:
                answers = [exc] * len(batch)
                if not any(future for _s, _c, future in batch):
                    log.warning("%d settlements not written (%s)", len(batch), exc)
            for (_script, _call, future), answer in zip(batch, answers, strict=True):
                if future is None or future.done():
                    continue
                if isinstance(answer, Exception):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)

    async def admit(self, checks: list[Check], lease: str, now: float) -> Admission | Refusal:
        """Charge every check or none."""
        if not checks:
            return Admission()
        argv: list = [now, lease, now + LEASE_S]
        for check in checks:
            argv += [check.kind, check.limit, check.amount, int(check.resets_at) + 5]
        future = asyncio.get_running_loop().create_future()
        self._send("admit", [len(checks), *(c.counter for c in checks), *argv], future)
        answer = await future
        if int(answer[0]) != 0:
            return Refusal(checks[int(answer[0]) - 1], int(answer[1]))
        return Admission(checks=checks, lease=lease, used=[int(u) for u in answer[1:]])

    def settle(self, admission: Admission, requests: int, tokens: int) -> None:
        """Charge what the request really used against what admission charged.

        `requests` is 1 when it counts as a request (0 to refund: the gateway itself
        turned it away after admission, e.g. its queue timed out). Not awaited: it
        is not on the answer's path; a failure leaves leases to lapse by themselves.
        """
        if admission.settled or not admission.checks:
            return
        admission.settled = True
        argv: list = [admission.lease]
        for check in admission.checks:
            if check.kind == "c":
                delta = 0
            elif FIELDS[check.field][0] == "requests":
                delta = requests - check.amount
            else:
                delta = tokens - check.amount
            argv += [check.kind, delta]
        self._send(
            "settle", [len(admission.checks), *(c.counter for c in admission.checks), *argv], None
        )

    async def flush(self) -> None:
        """Wait for what is still being sent (on shutdown)."""
        if self._sender is not None and not self._sender.done():
            await asyncio.wait([self._sender], timeout=5)

    def renew(self, admissions, now: float) -> None:
        """Keep the leases of requests still running from lapsing (sent soon, in order)."""
        for admission in admissions:
            sets = [c.counter for c in admission.checks if c.kind == "c"]
            if sets and not admission.settled:
                self._send("renew", [len(sets), *sets, admission.lease, now + LEASE_S], None)

    async def _run(self, calls: list[tuple[str, list]]) -> list:
        """EVALSHA each call in one pipeline; the calls Redis had no script for (it
        restarted) go again, once, after loading the scripts."""
        answers = await self._pipeline(calls)
        missing = [i for i, a in enumerate(answers) if isinstance(a, NoScriptError)]
        if missing:
            for body in SCRIPTS.values():
                await self.redis.script_load(body)
            again = await self._pipeline([calls[i] for i in missing])
            for i, answer in zip(missing, again, strict=True):
                answers[i] = answer
        return answers

    async def _pipeline(self, calls: list[tuple[str, list]]) -> list:
        async with self.redis.pipeline(transaction=False) as pipe:
            for script, call in calls:
                pipe.evalsha(self._shas[script], *call)
            return await pipe.execute(raise_on_error=False)


def headers_for(admission: Admission | Refusal, now: float) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the tightest request and token windows."""
    if isinstance(admission, Refusal):
        pairs = [(admission.check, admission.used)]
    else:
        pairs = list(zip(admission.checks, admission.used, strict=True))
    headers: dict[str, str] = {}
    for counts in ("requests", "tokens"):
        best = None
        for check, used in pairs:
            if check.kind != "w" or FIELDS[check.field][0] != counts:
                continue
            remaining = max(0, check.limit - used)
            if best is None or remaining < best[1]:
                best = (check, remaining)
        if best is not None:
            check, remaining = best
            headers[f"x-ratelimit-limit-{counts}"] = str(check.limit)
            headers[f"x-ratelimit-remaining-{counts}"] = str(remaining)
            headers[f"x-ratelimit-reset-{counts}"] = duration(check.resets_at - now)
    return headers


def duration(seconds: float) -> str:
    """OpenAI's reset format: 1s, 6m0s, 2h3m4s, 3d4h."""
    seconds = max(0, math.ceil(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def lease_id(reporter: str, counter: int) -> str:
    return f"{reporter}:{counter}:{time.monotonic_ns()}"
