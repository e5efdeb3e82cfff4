"""The one Redis lease (apps/core/lease.py) of beat's leader and of checksums."""

from __future__ import annotations

from apps.core.lease import RedisLease


def test_a_lease_is_held_by_one_and_renewed_and_released_only_by_its_holder(settings):
    client = settings.REDIS.client()
    key = "hangar:test:lease"
    mine, theirs = RedisLease(client, 30, key), RedisLease(client, 30, key)
    assert mine.take_or_renew() and not theirs.take_or_renew()
    client.set(key, theirs.token, ex=5)  # mine lapsed; the other took it
    assert not mine.take_or_renew()
    mine.release()
    assert client.get(key) == theirs.token.encode() and client.ttl(key) <= 5
    assert theirs.take_or_renew() and 5 < client.ttl(key) <= 30  # renewed by its holder
    theirs.release()
    assert not client.exists(key)
    assert mine.take_or_renew()  # free again: anyone may take it
    mine.release()
