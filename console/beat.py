"""Celery beat that sends only while it leads: one beat per console host, one sender.

Each console host runs its beat; they agree on a leader through a lock in Redis
(`hangar:beat:leader`, a token with a TTL of `HANGAR_BEAT_LOCK_SECONDS`, renewed
by the leader every third of it). A beat that is not the leader keeps its
schedule turning without sending anything, and one that cannot renew stops
sending before its lock can expire, so two beats never send in the same period.
The leader notes each job's last run in `hangar:beat:last-run`; a beat that
takes over starts from those times, so an hourly job does not run again at once
because its leader changed.

No consensus of our own: the lock is a plain Redis key, on the Redis that
Sentinel keeps available (docs/ha.md says what a failover of Redis can do to it).
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

import redis
from celery.beat import PersistentScheduler
from django.conf import settings

from apps.core.lease import RedisLease

log = logging.getLogger(__name__)

LOCK_KEY = "hangar:beat:leader"
LAST_RUN_KEY = "hangar:beat:last-run"


class LeaderLock(RedisLease):
    """The leader lease (apps/core/lease.py); `held()` is true only while surely ours."""

    def __init__(self, client: redis.Redis, ttl_s: float, key: str = LOCK_KEY) -> None:
        super().__init__(client, ttl_s, key)
        self.valid_until = 0.0  # monotonic time up to which we may act as leader

    def held(self) -> bool:
        return time.monotonic() < self.valid_until

    def refresh(self) -> bool:
        """Renew the lock if ours, else try to take it; True if we lead now."""
        started = time.monotonic()
        try:
            ours = self.take_or_renew()
        except redis.RedisError as exc:
            log.warning("beat: cannot reach Redis for the leader lock (%s)", exc)
            ours = False
        # Counted from before the call: the key may have been set at any moment of it.
        # Two thirds of the TTL: we stop acting well before another beat may take it.
        self.valid_until = started + self.ttl_s * 2 / 3 if ours else 0.0
        return ours

    def release(self) -> None:
        if self.held():
            super().release()
        self.valid_until = 0.0


class LeaderScheduler(PersistentScheduler):
    """PersistentScheduler whose `apply_entry` sends only while this beat leads."""

    def __init__(self, *args, **kwargs) -> None:
        self.lock = LeaderLock(
            settings.REDIS.client(socket_timeout=2, socket_connect_timeout=2),
            settings.BEAT_LOCK_SECONDS,
        )
        self._refreshed_at = 0.0
        self.leading = False
        super().__init__(*args, **kwargs)

    def tick(self, *args, **kwargs) -> float:
        renew_every = self.lock.ttl_s / 3
        if time.monotonic() - self._refreshed_at >= renew_every:
            self._refreshed_at = time.monotonic()
            leading = self.lock.refresh()
            if leading and not self.leading:
                log.info("beat: leading (lock %s, token %s)", LOCK_KEY, self.lock.token)
                self._start_from_last_runs()
            elif self.leading and not leading:
                log.warning("beat: no longer leading; sending nothing until it leads again")
            self.leading = leading
        return min(super().tick(*args, **kwargs), renew_every)

    def apply_entry(self, entry, producer=None) -> None:
        if not self.lock.held():
            return  # the entry was reserved: the schedule keeps turning unsent
        super().apply_entry(entry, producer=producer)
        try:
            self.lock.client.hset(LAST_RUN_KEY, entry.name, time.time())
        except redis.RedisError as exc:
            log.warning("beat: last run of %s not noted in Redis (%s)", entry.name, exc)

    def _start_from_last_runs(self) -> None:
        try:
            noted = self.lock.client.hgetall(LAST_RUN_KEY)
        except redis.RedisError:
            return
        now, wall = self.app.now(), time.time()
        for raw_name, raw_at in noted.items():
            entry = self.schedule.get(raw_name.decode())
            if entry is not None:
                entry.last_run_at = now - timedelta(seconds=max(0.0, wall - float(raw_at)))
        self._heap = None  # rebuilt from the entries at the next tick

    def close(self) -> None:
        self.lock.release()
        super().close()
