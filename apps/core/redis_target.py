"""Where Hangar's Redis is: one server, or a master known by name to Sentinels.

Every Redis user of the console (cache, channel layer, Celery broker and results,
live telemetry, node identities, the gateway snapshot) and of `hangar-gateway`
(snapshot, limits, usage) connects through one `RedisTarget`, read once from
the environment:

- `HANGAR_REDIS_URL` says who we are there and which database
  (`redis://user:password@host:port/db`); alone, it is also the server.
- `HANGAR_REDIS_SENTINELS=host:port,host:port,...` and `HANGAR_REDIS_MASTER=name`:
  the server is whichever one the Sentinels name master of `name`; the URL's host
  and port are then not used. `HANGAR_REDIS_SENTINEL_PASSWORD` if the Sentinels
  themselves ask for one.

Imports only the standard library and redis: `hangar-gateway` shares it
(tests/test_import_rules.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.sentinel
from redis.asyncio import sentinel as async_sentinel

DEFAULT_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class RedisTarget:
    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""
    sentinel_password: str | None = None

    @property
    def uses_sentinel(self) -> bool:
        return bool(self.sentinels)

    @property
    def db(self) -> int:
        path = urlsplit(self.url).path.strip("/")
        return int(path) if path.isdigit() else 0

    def credentials(self) -> dict[str, Any]:
        """username, password and db of the URL, for connections Sentinel points at."""
        parts = urlsplit(self.url)
        found: dict[str, Any] = {"db": self.db}
        if parts.username:
            found["username"] = unquote(parts.username)
        if parts.password:
            found["password"] = unquote(parts.password)
        return found

    def _sentinel_kwargs(self, options: Mapping[str, Any]) -> dict[str, Any]:
        # Sentinels get the same socket timeouts as the data connections, and their
        # own password (never the data one).
        found = {k: v for k, v in options.items() if k.startswith("socket_")}
        if self.sentinel_password:
            found["password"] = self.sentinel_password
        return found

    def client(self, **options: Any) -> redis.Redis:
        """A redis-py client of the current master (or of the one server)."""
        if not self.uses_sentinel:
            return redis.Redis.from_url(self.url, **options)
        sentinel = redis.sentinel.Sentinel(
            list(self.sentinels), sentinel_kwargs=self._sentinel_kwargs(options)
        )
        return sentinel.master_for(self.master, **self.credentials(), **options)

    def async_client(self, **options: Any) -> redis.asyncio.Redis:
        """As `client`, for asyncio code (consumers, batcher, gateway)."""
        if not self.uses_sentinel:
            return redis.asyncio.Redis.from_url(self.url, **options)
        sentinel = async_sentinel.Sentinel(
            list(self.sentinels), sentinel_kwargs=self._sentinel_kwargs(options)
        )
        return sentinel.master_for(self.master, **self.credentials(), **options)

    # --- the libraries that take a configuration rather than a client ----------

    def channel_layer_host(self) -> str | dict[str, Any]:
        """One entry of channels_redis's `hosts`."""
        if not self.uses_sentinel:
            return self.url
        return {
            "sentinels": list(self.sentinels),
            "master_name": self.master,
            "sentinel_kwargs": self._sentinel_kwargs({}) or None,
            **self.credentials(),
        }

    def celery_url(self) -> str:
        """Celery's broker and result URL: kombu's `sentinel://a;sentinel://b` list."""
        if not self.uses_sentinel:
            return self.url
        parts = urlsplit(self.url)
        auth = parts.netloc.rpartition("@")[0]
        auth = f"{auth}@" if auth else ""
        return ";".join(
            f"sentinel://{auth}{_host(host)}:{port}/{self.db}" for host, port in self.sentinels
        )

    def celery_transport_options(self) -> dict[str, Any]:
        """broker_transport_options and result_backend_transport_options."""
        if not self.uses_sentinel:
            return {}
        found: dict[str, Any] = {"master_name": self.master}
        if self.sentinel_password:
            found["sentinel_kwargs"] = {"password": self.sentinel_password}
        return found

    def cache_options(self) -> dict[str, Any]:
        """Django RedisCache OPTIONS beyond timeouts: a Sentinel pool when configured."""
        if not self.uses_sentinel:
            return {}
        return {
            "pool_class": "apps.core.redis_target.CachePool",
            "sentinels": list(self.sentinels),
            "master": self.master,
            "sentinel_password": self.sentinel_password,
        }


class CachePool:
    """Django's RedisCache builds its pool with `pool_class.from_url(url, **options)`."""

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        sentinels: list,
        master: str,
        sentinel_password: str | None = None,
        **options: Any,
    ) -> redis.sentinel.SentinelConnectionPool:
        target = RedisTarget(url, tuple(tuple(s) for s in sentinels), master, sentinel_password)
        sentinel = redis.sentinel.Sentinel(
            list(target.sentinels), sentinel_kwargs=target._sentinel_kwargs(options)
        )
        return redis.sentinel.SentinelConnectionPool(
            master, sentinel, **target.credentials(), **options
        )


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def parse_sentinels(value: str) -> tuple[tuple[str, int], ...]:
    """`host:port,host:port` (IPv6 as `[addr]:port`) -> ((host, port), ...)"""
    found = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{item!r} is not HOST:PORT")
        found.append((host, int(port)))
    return tuple(found)


def from_environment(environ: Mapping[str, str] | None = None) -> RedisTarget:
    """The target the HANGAR_REDIS_* variables describe; ValueError names the variable."""
    environ = os.environ if environ is None else environ

    def read(name: str) -> str:
        return (environ.get(f"HANGAR_{name}") or "").strip()

    url = read("REDIS_URL") or DEFAULT_URL
    parts = urlsplit(url)
    if parts.scheme not in {"redis", "rediss", "unix"} or not (parts.hostname or parts.path):
        raise ValueError(f"HANGAR_REDIS_URL={url!r} is not a redis:// URL")
    try:
        sentinels = parse_sentinels(read("REDIS_SENTINELS"))
    except ValueError as exc:
        raise ValueError(f"HANGAR_REDIS_SENTINELS: {exc}; use host:port,host:port") from None
    master = read("REDIS_MASTER")
    if sentinels and not master:
        raise ValueError(
            "HANGAR_REDIS_SENTINELS is set but HANGAR_REDIS_MASTER is not: "
            "name the master the Sentinels monitor (their `sentinel monitor NAME ...`)"
        )
    if sentinels and parts.scheme != "redis":
        # TLS through Sentinel is not wired (redis-py needs its own connection class).
        raise ValueError("HANGAR_REDIS_URL must be redis:// when HANGAR_REDIS_SENTINELS is set")
    return RedisTarget(
        url=url,
        sentinels=sentinels,
        master=master if sentinels else "",
        sentinel_password=read("REDIS_SENTINEL_PASSWORD") or None,
    )
