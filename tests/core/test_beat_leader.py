"""Two beats, one sender: the leader lock in Redis (console/beat.py).

A Redis of the test's own; each beat is the real LeaderScheduler on a Celery app
whose one job goes to a queue named after that beat, so the queues say who sent.
"""

from __future__ import annotations

import pytest
from celery import Celery

from apps.core.redis_target import RedisTarget
from console.beat import LOCK_KEY, LeaderLock, LeaderScheduler
from tests.support import processes
from tests.support.servers import Servers


@pytest.fixture(scope="module")
def own_redis():
    servers = Servers()
    try:
        yield servers.redis("beat-redis")
    finally:
        servers.close()


@pytest.fixture
def clean_redis(own_redis):
    own_redis.client().flushall()
    return own_redis


def test_only_one_lock_holder_and_the_other_takes_over_when_it_stops_renewing(clean_redis):
    first = LeaderLock(clean_redis.client(), ttl_s=1)
    second = LeaderLock(clean_redis.client(), ttl_s=1)
    assert first.refresh() and first.held()
    assert not second.refresh() and not second.held()
    # `first` stops renewing (its host is gone): the key expires, `second` takes it.
    processes.wait_for(second.refresh, timeout=10, what="the second lock taking over")
    assert not first.refresh()  # and the first does not take it back
    assert clean_redis.client().get(LOCK_KEY).decode() == second.token


def beat(url: str, queue: str, tmp_path) -> LeaderScheduler:
    app = Celery(f"beat-{queue}", broker=url, set_as_current=False)
    app.conf.beat_schedule = {
        "often": {"task": "hangar.test.often", "schedule": 0.2, "options": {"queue": queue}}
    }
    return LeaderScheduler(app=app, schedule_filename=str(tmp_path / f"{queue}.db"))


def test_of_two_beats_only_the_leader_sends_and_the_other_sends_once_it_is_gone(
    clean_redis, settings, tmp_path
):
    url = f"redis://127.0.0.1:{clean_redis.port}/0"
    settings.REDIS = RedisTarget(url)
    settings.BEAT_LOCK_SECONDS = 3
    first, second = beat(url, "first", tmp_path), beat(url, "second", tmp_path)
    data = clean_redis.client()

    def tick_both() -> bool:
        first.tick()
        second.tick()
        return data.llen("first") >= 5

    processes.wait_for(tick_both, timeout=30, what="five jobs sent by the first beat")
    assert data.llen("second") == 0
    assert first.leading and not second.leading

    first.close()  # a beat that stops releases the lock

    def tick_second() -> bool:
        second.tick()
        return data.llen("second") >= 1

    processes.wait_for(tick_second, timeout=30, what="the second beat taking over")
    assert second.leading
    assert data.hexists("hangar:beat:last-run", "often")
    second.close()
