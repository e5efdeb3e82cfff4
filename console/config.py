"""Read Hangar's configuration from HANGAR_* environment variables.

Every reader raises ConfigError with a one-line message naming the variable, so
a misconfigured start-up ends with a sentence a person can act on rather than a
traceback (manage.py, asgi.py and the Celery app catch it).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import urlparse

# Neither imports Django: safe to import before Django is set up.
from apps.core.forwarded import parse_networks
from apps.core.redis_target import RedisTarget
from apps.core.redis_target import from_environment as redis_target_from_environment

PREFIX = "HANGAR_"
BASE_DIR = Path(__file__).resolve().parent.parent


class ConfigError(Exception):
    """A HANGAR_* variable holds a value Hangar cannot use."""


def raw(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(PREFIX + name)
    if value is None or value.strip() == "":
        return default
    return value.strip()


def boolean(name: str, default: bool = False) -> bool:
    value = raw(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{PREFIX}{name}={value!r} is not a boolean; use true or false")


def integer(name: str, default: int, minimum: int = 0) -> int:
    value = raw(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{PREFIX}{name}={value!r} is not a whole number") from None
    if number < minimum:
        raise ConfigError(f"{PREFIX}{name}={number} must be at least {minimum}")
    return number


def choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = raw(name, default).lower()
    if value not in choices:
        raise ConfigError(f"{PREFIX}{name}={value!r} is not one of {', '.join(choices)}")
    return value


def listing(name: str, default: list[str]) -> list[str]:
    value = raw(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def networks(name: str) -> tuple:
    """Comma-separated IP addresses or CIDR networks (apps/core/forwarded.py)."""
    try:
        return parse_networks(raw(name, "") or "")
    except ValueError as exc:
        raise ConfigError(f"{PREFIX}{name}: {exc}") from None


def data_dir() -> Path:
    path = Path(raw("DATA_DIR", str(BASE_DIR / "data"))).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{PREFIX}DATA_DIR={path} cannot be created: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise ConfigError(f"{PREFIX}DATA_DIR={path} is not writable")
    return path


def secret_key(directory: Path) -> str:
    """The configured key, else one generated once and kept in the data directory."""
    value = raw("SECRET_KEY")
    if value is not None:
        if len(value) < 32:
            raise ConfigError(f"{PREFIX}SECRET_KEY is too short; use at least 32 characters")
        return value
    key_file = directory / "secret_key"
    if not key_file.exists():
        # O_EXCL: two processes starting together must not write two keys.
        try:
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(50))
    return key_file.read_text().strip()


def database(directory: Path) -> dict:
    import dj_database_url

    url = raw("DATABASE_URL", f"sqlite:///{directory / 'hangar.sqlite3'}")
    scheme = urlparse(url).scheme
    if scheme not in {"sqlite", "postgres", "postgresql", "pgsql"}:
        raise ConfigError(
            f"{PREFIX}DATABASE_URL scheme {scheme!r} is not supported; use postgres:// or sqlite://"
        )
    url, hosts, ports = _several_hosts(url)
    try:
        config = dj_database_url.parse(url, conn_max_age=60)
    except Exception as exc:
        raise ConfigError(f"{PREFIX}DATABASE_URL cannot be parsed: {exc}") from None
    if hosts:
        # libpq takes lists: it tries each host in turn and, with
        # target_session_attrs=read-write, keeps the first that accepts writes.
        config["HOST"], config["PORT"] = hosts, ports
        # A connection kept from before a failover is checked before reuse.
        config["CONN_HEALTH_CHECKS"] = True
    if scheme == "sqlite":
        # WAL and a busy timeout let Daphne, Celery and beat share one file.
        config["OPTIONS"] = {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL;",
        }
        config["CONN_MAX_AGE"] = 0
    else:
        # A database host that stops answering fails a request in seconds, not after
        # the kernel's TCP timeout (docs/reliability.md, "When the database is away").
        config.setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
    return config


def _several_hosts(url: str) -> tuple[str, str, str]:
    """postgres://u@h1:5432,h2:5433/db -> (the URL with h1 alone, "h1,h2", "5432,5433").

    ("url", "", "") for one host. dj-database-url reads one host only; libpq reads
    comma-separated HOST and PORT lists.
    """
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    auth, at, hostlist = netloc.rpartition("@")
    if "," not in hostlist:
        return url, "", ""
    hosts, ports = [], []
    for item in hostlist.split(","):
        if item.startswith("["):  # [IPv6]:port
            host, _, port = item[1:].partition("]")
            port = port.removeprefix(":")
        else:
            host, _, port = item.partition(":")
        port = port or "5432"
        if not host or not port.isdigit():
            raise ConfigError(
                f"{PREFIX}DATABASE_URL host {item!r} is not HOST:PORT; "
                "use postgres://user@host1:5432,host2:5432/name"
            )
        hosts.append(host)
        ports.append(port)
    first = f"{hosts[0]}:{ports[0]}" if ":" not in hosts[0] else f"[{hosts[0]}]:{ports[0]}"
    return f"{scheme}{sep}{auth}{at}{first}{slash}{tail}", ",".join(hosts), ",".join(ports)


def redis_target() -> RedisTarget:
    """HANGAR_REDIS_URL, and the Sentinels when configured (apps/core/redis_target.py)."""
    try:
        return redis_target_from_environment()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def bind(name: str = "BIND", default: str = "127.0.0.1:8000") -> tuple[str, int]:
    value = raw(name, default)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{PREFIX}{name}={value!r} must be HOST:PORT, e.g. {default}")
    return host.strip("[]"), int(port)
