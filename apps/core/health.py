"""Dependency checks behind /healthz. Each returns (state, detail)."""

from __future__ import annotations

import redis
from django.conf import settings
from django.db import connection


def check_database() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return {"state": "down", "error": str(exc).splitlines()[0][:200]}
    return {"state": "up", "vendor": connection.vendor}


def check_redis() -> dict:
    try:
        client = redis.Redis.from_url(
            settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1
        )
        client.ping()
    except Exception as exc:
        return {"state": "down", "error": str(exc)[:200]}
    return {"state": "up"}


def check_celery(redis_up: bool) -> dict:
    """Workers answering a broadcast ping; not fatal: the API works without them."""
    if not redis_up:
        return {"state": "unknown", "workers": []}
    from console.celery import app

    try:
        replies = app.control.ping(timeout=0.5) or []
    except Exception as exc:
        return {"state": "unknown", "error": str(exc)[:200], "workers": []}
    workers = sorted(name for reply in replies for name in reply)
    console_workers = [name for name in workers if not name.startswith("hangar-agent-")]
    return {"state": "up" if console_workers else "none", "workers": workers}


def health_report() -> tuple[dict, bool]:
    database = check_database()
    cache = check_redis()
    celery = check_celery(cache["state"] == "up")
    healthy = database["state"] == "up" and cache["state"] == "up"
    report = {
        "status": "ok" if healthy else "unavailable",
        "checks": {"database": database, "redis": cache, "celery": celery},
    }
    return report, healthy
