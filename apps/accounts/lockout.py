"""Brute-force protection for the login form (and nothing else needs it:
API tokens are 256-bit random secrets).

Failures are counted in Redis per username and per client address over a
window. From THROTTLE_AFTER failures on, each attempt must wait a growing delay;
at settings.LOGIN_FAILURE_LIMIT the username or address is locked for
settings.LOGIN_LOCK_MINUTES. Locks live in the database so admins can see and
lift them, and both the lock and the unlock are audit events.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from apps.accounts.models import LoginLock
from apps.audit import recorder

THROTTLE_AFTER = 3
WINDOW_SECONDS = 15 * 60


@dataclass
class Refusal:
    message: str
    retry_after: int


def _subjects(username: str, address: str | None) -> list[tuple[str, str]]:
    subjects = [(LoginLock.Scope.USERNAME, username.lower()[:255])]
    if address:
        subjects.append((LoginLock.Scope.ADDRESS, address))
    return subjects


def _active_lock(scope: str, key: str) -> LoginLock | None:
    lock = LoginLock.objects.filter(scope=scope, key=key, unlocked_at__isnull=True).first()
    if lock is None:
        return None
    if lock.locked_until <= timezone.now():
        lift_lock(lock, by=None)
        return None
    return lock


def lift_lock(lock: LoginLock, by=None) -> None:
    """End a lock, on expiry (actor system) or by an admin (the request's actor)."""
    lock.unlocked_at = timezone.now()
    lock.save(update_fields=["unlocked_at"])
    cache.delete(_counter_key(lock.scope, lock.key))
    changes = {"scope": lock.scope, "subject": lock.key, "reason": "admin" if by else "expired"}
    if by is not None and recorder.in_request():
        recorder.describe(action="auth.unlock", target=lock, changes=changes)
    else:
        recorder.record("auth.unlock", target=lock, changes=changes)


def _counter_key(scope: str, key: str) -> str:
    # Hashed: a typed username can be any length or character; cache keys cannot.
    return f"login-failures:{scope}:{hashlib.sha256(key.encode()).hexdigest()}"


def check_login_allowed(username: str, address: str | None) -> Refusal | None:
    """Refuse before checking the password when a lock or throttle applies."""
    for scope, key in _subjects(username, address):
        lock = _active_lock(scope, key)
        if lock is not None:
            wait = int((lock.locked_until - timezone.now()).total_seconds()) + 1
            return Refusal(
                "Too many failed logins: this account or address is locked. "
                f"Try again in {wait // 60 + 1} minutes or ask an administrator.",
                wait,
            )
        failures = cache.get(_counter_key(scope, key)) or {}
        count = failures.get("count", 0)
        if count >= THROTTLE_AFTER:
            delay = 2 ** (count - THROTTLE_AFTER + 1)
            remaining = int(failures.get("last", 0) + delay - time.time()) + 1
            if remaining > 0:
                return Refusal(f"Too many failed logins. Wait {remaining} seconds.", remaining)
    return None


def note_login_failure(username: str, address: str | None) -> None:
    limit = settings.LOGIN_FAILURE_LIMIT
    for scope, key in _subjects(username, address):
        counter_key = _counter_key(scope, key)
        failures = cache.get(counter_key) or {"count": 0}
        failures = {"count": failures["count"] + 1, "last": time.time()}
        cache.set(counter_key, failures, WINDOW_SECONDS)
        if failures["count"] >= limit and _active_lock(scope, key) is None:
            lock = LoginLock.objects.create(
                scope=scope,
                key=key,
                locked_until=timezone.now() + timedelta(minutes=settings.LOGIN_LOCK_MINUTES),
            )
            recorder.record(
                "auth.lock",
                target=lock,
                source_address=address,
                changes={
                    "scope": scope,
                    "subject": key,
                    "failures": failures["count"],
                    "minutes": settings.LOGIN_LOCK_MINUTES,
                },
            )


def note_login_success(username: str, address: str | None) -> None:
    for scope, key in _subjects(username, address):
        if scope == LoginLock.Scope.USERNAME:
            cache.delete(_counter_key(scope, key))
