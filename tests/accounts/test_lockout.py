"""Brute force: failures are throttled, then locked; locks are audited and can be lifted."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.db import connections
from django.utils import timezone

from apps.accounts import lockout
from apps.accounts.models import LoginLock
from apps.audit.models import AuditEvent
from tests.accounts.helpers import login

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


def _fail(browser, username: str, times: int, first_address: int = 1) -> list[int]:
    """Wrong passwords from different addresses, so only the username's counter grows."""
    return [
        login(browser, username, "wrong", address=f"10.1.0.{first_address + n}").status_code
        for n in range(times)
    ]


def _let_the_throttle_delay_pass(scope: str, key: str) -> None:
    """Move the last failure into the past instead of sleeping through the delay."""
    cache.set(lockout._last_failure_key(scope, key), time.time() - 3600, lockout.WINDOW_SECONDS)


def test_repeated_failures_for_a_username_are_throttled_with_retry_after(make_user, browser):
    make_user("ann", password=PASSWORD)

    assert _fail(browser, "ann", lockout.THROTTLE_AFTER) == [401] * lockout.THROTTLE_AFTER
    throttled = login(browser, "ann", PASSWORD, address="10.1.0.99")

    assert throttled.status_code == 429
    assert int(throttled["Retry-After"]) >= 1
    assert "Too many failed logins" in throttled.content.decode()
    assert AuditEvent.objects.filter(action="auth.login").first().changes["reason"] == "locked"


def test_throttled_username_logs_in_once_the_delay_has_passed(make_user, browser):
    make_user("ann", password=PASSWORD)
    _fail(browser, "ann", lockout.THROTTLE_AFTER)

    _let_the_throttle_delay_pass("username", "ann")

    assert login(browser, "ann", PASSWORD).status_code == 302


def test_failures_up_to_the_limit_lock_the_username_and_audit_the_lock(
    make_user, browser, settings
):
    settings.LOGIN_FAILURE_LIMIT = lockout.THROTTLE_AFTER + 1
    make_user("ann", password=PASSWORD)
    _fail(browser, "ann", lockout.THROTTLE_AFTER)
    _let_the_throttle_delay_pass("username", "ann")
    assert _fail(browser, "ann", 1, first_address=50) == [401]

    lock = LoginLock.objects.get(scope="username", key="ann", unlocked_at__isnull=True)
    assert lock.locked_until > timezone.now() + timedelta(minutes=settings.LOGIN_LOCK_MINUTES - 1)
    event = AuditEvent.objects.get(action="auth.lock")
    assert (event.actor_type, event.target_id) == ("system", str(lock.pk))
    assert event.changes["subject"] == "ann"
    assert event.changes["failures"] == settings.LOGIN_FAILURE_LIMIT

    refused = login(browser, "ann", PASSWORD, address="10.1.0.200")
    assert refused.status_code == 429
    assert "locked" in refused.content.decode()
    assert int(refused["Retry-After"]) > 60


def test_admin_unlock_lifts_the_lock_and_is_audited(make_user, browser, admin_api, settings):
    settings.LOGIN_FAILURE_LIMIT = lockout.THROTTLE_AFTER
    ann = make_user("ann", password=PASSWORD)
    _fail(browser, "ann", lockout.THROTTLE_AFTER)
    assert LoginLock.objects.filter(key="ann", unlocked_at__isnull=True).exists()

    response = admin_api.post(f"/api/v1/users/{ann.pk}/unlock/")

    assert response.status_code == 200
    assert response.json() == {"locks_lifted": 1}
    assert not LoginLock.objects.filter(key="ann", unlocked_at__isnull=True).exists()
    event = AuditEvent.objects.filter(action="auth.unlock").get()
    assert (event.actor_name, event.outcome) == ("root-admin", "allowed")
    assert event.changes["locks_lifted"] == 1
    assert login(browser, "ann", PASSWORD).status_code == 302


def test_unlock_is_for_administrators_only(make_user, client_for):
    ann = make_user("ann")
    viewer = make_user("vic", "viewer")

    assert client_for(viewer).post(f"/api/v1/users/{ann.pk}/unlock/").status_code == 403
    assert AuditEvent.objects.get().outcome == "denied"


def test_an_expired_lock_is_lifted_at_the_next_attempt_by_the_system(make_user, browser, settings):
    settings.LOGIN_FAILURE_LIMIT = lockout.THROTTLE_AFTER
    make_user("ann", password=PASSWORD)
    _fail(browser, "ann", lockout.THROTTLE_AFTER)
    lock = LoginLock.objects.get(key="ann")
    LoginLock.objects.filter(pk=lock.pk).update(locked_until=timezone.now() - timedelta(seconds=1))

    assert login(browser, "ann", PASSWORD).status_code == 302

    lock.refresh_from_db()
    assert lock.unlocked_at is not None
    unlock = AuditEvent.objects.get(action="auth.unlock")
    assert (unlock.actor_type, unlock.target_id) == ("system", str(lock.pk))
    assert unlock.changes["reason"] == "expired"


def test_failures_from_one_address_throttle_and_lock_that_address(make_user, browser, settings):
    settings.LOGIN_FAILURE_LIMIT = lockout.THROTTLE_AFTER + 1
    make_user("ann", password=PASSWORD)
    spray = [f"user{n}" for n in range(lockout.THROTTLE_AFTER)]
    for username in spray:
        assert login(browser, username, "guess", address="192.0.2.7").status_code == 401

    # Even the right password of a real account is throttled from that address...
    assert login(browser, "ann", PASSWORD, address="192.0.2.7").status_code == 429
    # ...but not from another one.
    assert login(browser, "ann", PASSWORD, address="192.0.2.8").status_code == 302

    _let_the_throttle_delay_pass("address", "192.0.2.7")
    assert login(browser, "nobody", "guess", address="192.0.2.7").status_code == 401
    assert LoginLock.objects.filter(scope="address", key="192.0.2.7").exists()
    assert AuditEvent.objects.filter(action="auth.lock").get().changes["subject"] == "192.0.2.7"


def test_a_successful_login_resets_the_username_counter(make_user, browser):
    make_user("ann", password=PASSWORD)
    _fail(browser, "ann", lockout.THROTTLE_AFTER - 1)
    assert login(browser, "ann", PASSWORD).status_code == 302

    assert _fail(browser, "ann", lockout.THROTTLE_AFTER - 1, first_address=20) == [401] * (
        lockout.THROTTLE_AFTER - 1
    )
    assert login(browser, "ann", "wrong", address="10.1.0.90").status_code == 401


@pytest.mark.django_db(transaction=True)  # the threads' own connections commit
def test_parallel_failures_are_each_counted_and_make_one_lock(settings):
    """Eight threads failing at once: every failure counts, and the one that
    reaches the limit is the only one to lock (a get-then-set lost counts)."""
    threads, each = 8, 25
    settings.LOGIN_FAILURE_LIMIT = threads * each
    start = threading.Barrier(threads)

    def attempts():
        start.wait()
        for _ in range(each):
            lockout.note_login_failure("ann", None)
        connections.close_all()

    workers = [threading.Thread(target=attempts) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert lockout.failures("username", "ann")[0] == threads * each
    assert LoginLock.objects.filter(key="ann").count() == 1
