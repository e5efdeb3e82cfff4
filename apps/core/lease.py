"""A lease in Redis: a key holding its holder's token, with a TTL the holder renews.

One mechanism for "only one of us does this now": beat's leader lock
(console/beat.py) and a model checksum under way (apps/registry/services.py).
Renewing and releasing check the token inside Redis, so a holder whose lease
lapsed, and was taken by another, can neither extend nor delete the other's.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid

import redis

# Extend the key only if it is still ours (one that lost it must not take it back).
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisLease:
    def __init__(self, client: redis.Redis, ttl_s: float, key: str) -> None:
        self.client = client
        self.key = key
        self.ttl_s = ttl_s
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._renew = client.register_script(RENEW)

    def take_or_renew(self) -> bool:
        """Renew the lease if ours, else take it if free; True if ours now.
        Raises redis.RedisError: what Redis being away means is the caller's call."""
        ttl_ms = int(self.ttl_s * 1000)
        return bool(self._renew(keys=[self.key], args=[self.token, ttl_ms])) or bool(
            self.client.set(self.key, self.token, nx=True, px=ttl_ms)
        )

    def release(self) -> None:
        """Delete the lease if still ours; Redis away: it expires by itself."""
        with contextlib.suppress(redis.RedisError):
            self.client.eval(RELEASE, 1, self.key, self.token)
