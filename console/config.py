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

# Standard library only, like this module: safe to import before Django is set up.
from apps.core.forwarded import parse_networks

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
    try:
        config = dj_database_url.parse(url, conn_max_age=60)
    except Exception as exc:
        raise ConfigError(f"{PREFIX}DATABASE_URL cannot be parsed: {exc}") from None
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


def redis_url() -> str:
    url = raw("REDIS_URL", "redis://127.0.0.1:6379/0")
    parsed = urlparse(url)
    if parsed.scheme not in {"redis", "rediss", "unix"} or not (parsed.hostname or parsed.path):
        raise ConfigError(f"{PREFIX}REDIS_URL={url!r} is not a redis:// URL")
    return url


def bind(name: str = "BIND", default: str = "127.0.0.1:8000") -> tuple[str, int]:
    value = raw(name, default)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{PREFIX}{name}={value!r} must be HOST:PORT, e.g. {default}")
    return host.strip("[]"), int(port)
