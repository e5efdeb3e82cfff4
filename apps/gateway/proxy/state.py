"""The gateway's in-process view: the console's snapshot, and requests in flight.

Requests read `View.current` only (plain dict lookups). A background task swaps in
a new snapshot when the console announces one, and polls as a backstop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import random
import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from apps.gateway.proxy.config import GatewayConfig
from apps.gateway.proxy.limits import Rule, subject_of

log = logging.getLogger("hangar.gateway")

SNAPSHOT_KEY = "hangar:gateway:snapshot"
# Each gateway process reports its request counters here every second (docs/gateway.md).
REPORTERS_KEY = "hangar:gateway:reporters"
STATS_KEY = "hangar:gateway:stats:"
STATS_TTL_S = 15
MAX_FALLBACKS = 3


@dataclass
class Key:
    id: int
    name: str
    prefix: str
    owner: str
    routes: frozenset | None  # None: every route
    networks: tuple
    expires: float
    user: int | None = None
    service_account: int | None = None
    project: int | None = None
    # Every limit that applies to this key, with its counter's subject (limits.py).
    rules: tuple = ()
    # The fair-share lane: the project, or the key alone when it has none.
    lane: str = ""
    weight: int = 100


DEFAULT_WEIGHT = 100


@dataclass
class Snapshot:
    generation: int = 0
    routes: dict = field(default_factory=dict)
    deployments: dict = field(default_factory=dict)
    keys: dict = field(default_factory=dict)
    timezone: str = "UTC"
    projects: dict = field(default_factory=dict)  # id (str) -> {"name", "weight"}

    @classmethod
    def parse(cls, raw: bytes) -> Snapshot:
        data = json.loads(raw)
        projects = data.get("projects", {})
        rules = [
            Rule(
                id=r["id"],
                scope=r["scope"],
                subject=r["subject"],
                route=r["route"],
                values=r["values"],
            )
            for r in data.get("limits", ())
        ]
        # Limits by whom they hold, so each key finds its own without a scan of all.
        by_subject: dict[tuple[str, int], list[Rule]] = {}
        for rule in rules:
            kind = {"key": "k", "user": "u"}.get(rule.scope, "p")
            by_subject.setdefault((kind, rule.subject), []).append(rule)
        keys = {}
        for digest, k in data["keys"].items():
            key = Key(
                id=k["id"],
                name=k["name"],
                prefix=k["prefix"],
                owner=k["owner"],
                routes=None if k["routes"] is None else frozenset(k["routes"]),
                networks=tuple(ipaddress.ip_network(n) for n in k["networks"]),
                expires=k["expires"],
                user=k.get("user"),
                service_account=k.get("service_account"),
                project=k.get("project"),
            )
            candidates = by_subject.get(("k", key.id), []) + by_subject.get(("u", key.user), [])
            candidates += by_subject.get(("p", key.project), [])
            key.rules = tuple(
                (rule, subject)
                for rule in candidates
                if (subject := subject_of(rule, key)) is not None
            )
            project = projects.get(str(key.project)) if key.project is not None else None
            key.lane = f"p{key.project}" if project else f"k{key.id}"
            key.weight = project["weight"] if project else DEFAULT_WEIGHT
            keys[digest] = key
        return cls(
            generation=data["generation"],
            routes=data["routes"],
            deployments=data["deployments"],
            keys=keys,
            timezone=data.get("timezone", "UTC"),
            projects=projects,
        )


class View:
    """The current snapshot, how fresh it is, and each worker's requests in flight."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.current: Snapshot | None = None
        self.confirmed_at = 0.0  # the console's last confirmation we saw
        self.redis_ok = False
        self.in_flight: dict[int, int] = {}
        self._redis = config.redis.async_client(socket_connect_timeout=2, socket_timeout=5)

    @property
    def redis(self) -> aioredis.Redis:
        return self._redis

    # --- freshness --------------------------------------------------------------

    def age(self) -> float:
        return time.time() - self.confirmed_at if self.confirmed_at else float("inf")

    def stale(self) -> bool:
        return self.age() > self.config.stale_after_s

    # --- keys and routes (the hot path) -------------------------------------------

    def key_for(self, raw: str) -> Key | None:
        if self.current is None:
            return None
        key = self.current.keys.get(hashlib.sha256(raw.encode()).hexdigest())
        if key is None or key.expires <= time.time():
            return None
        return key

    def routes_for(self, key: Key) -> list[str]:
        names = sorted(self.current.routes) if self.current else []
        return names if key.routes is None else [n for n in names if n in key.routes]

    def workers_for(self, model: str) -> tuple[str | None, list[dict]]:
        """(deployment id, its ready workers) for a request to `model`, fallbacks included."""
        snapshot = self.current
        name = model
        for _hop in range(MAX_FALLBACKS + 1):
            route = snapshot.routes.get(name)
            if route is None:
                return None, []
            serving = [
                t
                for t in route["targets"]
                if snapshot.deployments.get(str(t["deployment"]), {}).get("workers")
            ]
            if serving:
                if len(serving) == 1:
                    target = serving[0]
                else:
                    weights = [t["weight"] for t in serving]
                    target = random.choices(serving, weights)[0]
                deployment = str(target["deployment"])
                return deployment, snapshot.deployments[deployment]["workers"]
            name = route.get("fallback")
            if not name:
                break
        return None, []

    def pick(self, workers: list[dict], avoid: set[int]) -> dict | None:
        """The ready worker with the fewest requests in flight (ties at random)."""
        best, least = [], None
        for worker in workers:
            if worker["id"] in avoid:
                continue
            busy = self.in_flight.get(worker["id"], 0)
            if least is None or busy < least:
                best, least = [worker], busy
            elif busy == least:
                best.append(worker)
        if not best:
            return None
        return best[0] if len(best) == 1 else random.choice(best)

    # --- keeping the snapshot current ----------------------------------------------

    async def refresh(self) -> bool:
        """Load the snapshot if it changed; note the console's last confirmation."""
        try:
            generation, confirmed = await self._redis.mget(
                SNAPSHOT_KEY + ":generation-stored", SNAPSHOT_KEY + ":checked-at"
            )
            if generation is not None and (
                self.current is None or int(generation) != self.current.generation
            ):
                raw = await self._redis.get(SNAPSHOT_KEY)
                if raw is not None:
                    self.current = Snapshot.parse(raw)
                    log.info(
                        "snapshot %s: %d routes, %d keys",
                        self.current.generation,
                        len(self.current.routes),
                        len(self.current.keys),
                    )
            if confirmed is not None:
                self.confirmed_at = float(confirmed)
            self.redis_ok = True
            return True
        except (aioredis.RedisError, OSError, ValueError, KeyError) as exc:
            if self.redis_ok:
                log.warning("cannot refresh the snapshot from Redis: %s", exc)
            self.redis_ok = False
            return False

    async def follow(self, stop: asyncio.Event) -> None:
        """Reload on the console's announcement; poll as a backstop for a lost message."""
        channel = f"hangar:gateway:changed:{self.config.namespace}"
        while not stop.is_set():
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(channel)
                await self.refresh()
                while not stop.is_set():
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=self.config.poll_interval_s
                    )
                    await self.refresh()
                    del message
            except (aioredis.RedisError, OSError) as exc:
                self.redis_ok = False
                log.warning("lost Redis (%s); serving from the last snapshot", exc)
                await asyncio.sleep(min(self.config.poll_interval_s, 1.0))
            finally:
                with contextlib.suppress(aioredis.RedisError, OSError):
                    await pubsub.aclose()

    async def report(self, stop: asyncio.Event, exported, reporter: str) -> None:
        """Every second: this process's counters into Redis, for the console to add up."""
        while not stop.is_set():
            try:
                body = json.dumps({"reporter": reporter, "at": time.time(), **exported()})
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.set(STATS_KEY + reporter, body, ex=STATS_TTL_S)
                    pipe.sadd(REPORTERS_KEY, reporter)
                    await pipe.execute()
            except (aioredis.RedisError, OSError):
                pass  # the next second tries again; counters are cumulative
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    async def close(self) -> None:
        await self._redis.aclose()
