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
    _forget_failures(lock.scope, lock.key)
    changes = {"scope": lock.scope, "subject": lock.key, "reason": "admin" if by else "expired"}
    if by is not None and recorder.in_request():
        recorder.describe(action="auth.unlock", target=lock, changes=changes)
    else:
        recorder.record("auth.unlock", target=lock, changes=changes)


def _counter_key(scope: str, key: str) -> str:
    # Hashed: a typed username can be any length or character; cache keys cannot.
    return f"login-failures:{scope}:{hashlib.sha256(key.encode()).hexdigest()}"


def _last_failure_key(scope: str, key: str) -> str:
    return _counter_key(scope, key) + ":last"


def failures(scope: str, key: str) -> tuple[int, float]:
    """(failures in the window, Unix time of the last one) for a username or address."""
    counter, last = _counter_key(scope, key), _last_failure_key(scope, key)
    values = cache.get_many([counter, last])
    return int(values.get(counter, 0)), float(values.get(last, 0))


def _count_failure(scope: str, key: str) -> int:
    """One more failure; returns the new count.

    An atomic increment (Redis INCR through the cache): parallel attempts each
    count, where a read and a write would let them overwrite each other's. The
    window runs from the latest failure.
    """
    counter = _counter_key(scope, key)
    while True:
        cache.add(counter, 0, WINDOW_SECONDS)
        try:
            count = cache.incr(counter)
            break
        except ValueError:  # expired between add and incr
            continue
    cache.touch(counter, WINDOW_SECONDS)
    cache.set(_last_failure_key(scope, key), time.time(), WINDOW_SECONDS)
    return count


def _forget_failures(scope: str, key: str) -> None:
    cache.delete_many([_counter_key(scope, key), _last_failure_key(scope, key)])


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
        count, last = failures(scope, key)
        if count >= THROTTLE_AFTER:
            delay = 2 ** (count - THROTTLE_AFTER + 1)
            remaining = int(last + delay - time.time()) + 1
            if remaining > 0:
                return Refusal(f"Too many failed logins. Wait {remaining} seconds.", remaining)
    return None


def note_login_failure(username: str, address: str | None) -> None:
    limit = settings.LOGIN_FAILURE_LIMIT
    for scope, key in _subjects(username, address):
        count = _count_failure(scope, key)
        # Exactly one attempt reaches the limit, so parallel ones make one lock.
        if count == limit or (count > limit and _active_lock(scope, key) is None):
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
                    "failures": count,
                    "minutes": settings.LOGIN_LOCK_MINUTES,
                },
            )


def note_login_success(username: str, address: str | None) -> None:
    for scope, key in _subjects(username, address):
        if scope == LoginLock.Scope.USERNAME:
            _forget_failures(scope, key)
