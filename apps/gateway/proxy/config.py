"""The gateway's settings, from the same HANGAR_* variables as the console."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from apps.core import redis_target
from apps.core.forwarded import parse_networks
from apps.core.redis_target import RedisTarget


class ConfigError(Exception):
    """A HANGAR_* variable holds a value the gateway cannot use; str() is one line."""


def _raw(name: str, default: str) -> str:
    return os.environ.get(f"HANGAR_{name}", default)


def _number(name: str, default: float, minimum: float = 0) -> float:
    text = _raw(name, str(default))
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"HANGAR_{name}={text!r} is not a number") from None
    if value < minimum:
        raise ConfigError(f"HANGAR_{name}={text!r} must be at least {minimum:g}")
    return value


def _bind(name: str, default: str) -> tuple[str, int]:
    value = _raw(name, default)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"HANGAR_{name}={value!r} must be HOST:PORT, e.g. {default}")
    return host.strip("[]"), int(port)


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _raw(name, default).strip().lower()
    if value not in choices:
        raise ConfigError(f"HANGAR_{name}={value!r} must be one of: {', '.join(choices)}")
    return value


def _networks(name: str, default: str = "") -> tuple:
    try:
        return parse_networks(_raw(name, default))
    except ValueError as exc:
        raise ConfigError(f"HANGAR_{name}: {exc}") from None


@dataclass(frozen=True)
class GatewayConfig:
    # One server or the master Sentinels name, as the console's (apps/core/redis_target.py).
    redis: RedisTarget
    namespace: str
    host: str
    port: int
    admin_host: str
    admin_port: int
    max_body_bytes: int
    connect_timeout_s: float
    read_timeout_s: float
    # How long known keys keep working when the console can't confirm the snapshot.
    stale_after_s: float
    poll_interval_s: float
    trusted_proxies: tuple = field(default_factory=tuple)
    # Fair share (fairshare.py): requests in flight per ready worker, all gateway
    # processes together, before requests wait; how many may wait; for how long.
    worker_concurrency: int = 256
    queue_length: int = 1000
    queue_timeout_s: float = 30.0
    # When Redis can't be asked about limits: "allow" serves (and counts the miss),
    # "refuse" answers 503.
    limits_without_redis: str = "allow"
    request_log: bool = False


def load() -> GatewayConfig:
    try:
        redis = redis_target.from_environment()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    host, port = _bind("GATEWAY_BIND", "127.0.0.1:8400")
    admin_host, admin_port = _bind("GATEWAY_ADMIN_BIND", "127.0.0.1:8401")
    return GatewayConfig(
        redis=redis,
        namespace=_raw("AGENT_BROKER_NAMESPACE", f"db{redis.db}"),
        host=host,
        port=port,
        admin_host=admin_host,
        admin_port=admin_port,
        max_body_bytes=int(_number("GATEWAY_MAX_BODY_BYTES", 4 * 2**20, minimum=1024)),
        connect_timeout_s=_number("GATEWAY_CONNECT_TIMEOUT", 3.0, minimum=0.1),
        read_timeout_s=_number("GATEWAY_READ_TIMEOUT", 600.0, minimum=1.0),
        stale_after_s=_number("GATEWAY_STALE_SECONDS", 300.0, minimum=1.0),
        poll_interval_s=_number("GATEWAY_POLL_SECONDS", 1.0, minimum=0.05),
        # The gateway sits behind the same nginx as the console (deploy/nginx/), so
        # it trusts the console's proxies unless told otherwise.
        trusted_proxies=_networks("GATEWAY_TRUSTED_PROXIES", _raw("TRUSTED_PROXIES", "")),
        worker_concurrency=int(_number("GATEWAY_WORKER_CONCURRENCY", 256, minimum=1)),
        queue_length=int(_number("GATEWAY_QUEUE_LENGTH", 1000, minimum=0)),
        queue_timeout_s=_number("GATEWAY_QUEUE_TIMEOUT", 30.0, minimum=0.1),
        limits_without_redis=_choice("GATEWAY_LIMITS_WITHOUT_REDIS", "allow", ("allow", "refuse")),
        request_log=_choice("GATEWAY_REQUEST_LOG", "false", ("true", "false")) == "true",
    )
