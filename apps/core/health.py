"""Dependency checks behind /healthz. Each returns {"state": ..., details...}."""

from __future__ import annotations

import contextlib

from django.conf import settings
from django.core.cache import cache
from django.db import connection

from apps.core import outbox

# A Celery ping waits its whole timeout for replies; load balancers and monitors
# call /healthz every few seconds in every web process, so one answer serves all
# of them for this long (in the shared cache, so across processes too).
CELERY_CHECK_SECONDS = 5
CELERY_CHECK_KEY = "health.celery"


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
        client = settings.REDIS.client(socket_connect_timeout=1, socket_timeout=1)
        client.ping()
    except Exception as exc:
        return {"state": "down", "error": str(exc)[:200]}
    return {"state": "up"}


def check_celery(redis_up: bool) -> dict:
    """Workers answering a broadcast ping, at most once per CELERY_CHECK_SECONDS."""
    if not redis_up:
        return {"state": "unknown", "workers": []}
    try:
        cached = cache.get(CELERY_CHECK_KEY)
    except Exception:
        cached = None
    if cached is not None:
        return cached
    result = ping_celery()
    # Redis may have gone away since its check: then the next call pings again.
    with contextlib.suppress(Exception):
        cache.set(CELERY_CHECK_KEY, result, CELERY_CHECK_SECONDS)
    return result


def ping_celery() -> dict:
    """Not fatal when none answer: the API works without workers."""
    from console.celery import app

    try:
        replies = app.control.ping(timeout=0.5) or []
    except Exception as exc:
        return {"state": "unknown", "error": str(exc)[:200], "workers": []}
    workers = sorted(name for reply in replies for name in reply)
    console_workers = [name for name in workers if not name.startswith("hangar-agent-")]
    return {"state": "up" if console_workers else "none", "workers": workers}


def check_outbox() -> dict:
    """Writes kept while the database was away (apps/core/outbox.py): "ok", "waiting"
    (not written yet) or "dropped" (some lost since Redis started: the log says which)."""
    state = outbox.state()
    if "error" in state:
        return {"state": "unknown", **state}
    dropped = sum(state["dropped"].values())
    name = "waiting" if state["waiting"] else ("dropped" if dropped else "ok")
    return {"state": name, **state}


def health_report(detailed: bool) -> tuple[dict, bool]:
    """The report and whether the console can serve.

    Only `detailed` reports (for logged-in users) carry more than each check's
    state: error texts name hosts and databases, and the Celery workers' names
    name the agents' hosts, none of which is for anonymous callers.
    """
    database = check_database()
    redis_check = check_redis()
    celery = check_celery(redis_check["state"] == "up")
    healthy = database["state"] == "up" and redis_check["state"] == "up"
    checks = {
        "database": database,
        "redis": redis_check,
        "celery": celery,
        "outbox": check_outbox(),
    }
    if not detailed:
        checks = {name: {"state": check["state"]} for name, check in checks.items()}
    return {"status": "ok" if healthy else "unavailable", "checks": checks}, healthy
