"""Database writes kept in Redis while the database is away, written in order when it returns.

Some writes stand for a judgement that exists nowhere else: a minute's rollup
of samples the agent has already let go, a node state or an alert transition
decided by a socket's in-memory state. When the database refuses one of them
(docs/reliability.md, "When the database is away"), the write is kept as JSON
at the end of one Redis list, and a thread of the process that kept it writes
the list out, oldest first, once the database answers again (beat's
`core.drain_outbox` does the same for a process that ended meanwhile).

While anything waits in the list, new writes of the same kinds join its end
instead of going straight to the database: a transition judged after the
return is then never written before one judged during the outage.

The list is bounded (HANGAR_OUTBOX_LIMIT records). A write that finds it full
is dropped, counted per kind in `hangar:outbox:dropped` (shown by /healthz and
/metrics) and logged. A kept write whose function fails for another reason
than the database being away (its node deleted meanwhile, a bug) is logged and
counted in `hangar:outbox:failed`, so it cannot block those behind it.

A kept function is called with keyword arguments that JSON carries unchanged
(numbers, strings, lists, dicts), inside its own transaction.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar

import redis
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction

log = logging.getLogger(__name__)

QUEUE = "hangar:outbox"
DROPPED = "hangar:outbox:dropped"
FAILED = "hangar:outbox:failed"
LOCK = "hangar:outbox:lock"
LOCK_SECONDS = 30
RETRY_SECONDS = 2.0
# What "the database is away" means: it refused the connection, or the
# connection broke mid-way (psycopg raises these, Django wraps them).
DATABASE_AWAY = (OperationalError, InterfaceError)

_kinds: dict[str, Callable] = {}
_draining: ContextVar[bool] = ContextVar("hangar_outbox_draining", default=False)
_client: redis.Redis | None = None
_thread: threading.Thread | None = None
_thread_lock = threading.Lock()

# Appends unless full; a full list counts the drop instead. Atomic, so concurrent
# writers never push past the limit.
_KEEP = """
if redis.call('LLEN', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('RPUSH', KEYS[1], ARGV[2])
  return 1
end
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
return 0
"""


def first_line(exc: BaseException) -> str:
    """An error in one log line: psycopg's messages run over several."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def client() -> redis.Redis:
    global _client
    if _client is None:
        # Through Sentinel where there is one (apps/core/redis_target.py): the outbox
        # is most needed during a failover.
        _client = settings.REDIS.client(socket_timeout=2, socket_connect_timeout=2)
    return _client


def kept(kind: str):
    """Make `fn(**kwargs)` a write that is kept for later when the database is away.

    Called inside a transaction (a request's, another kept write's), the
    function runs as it is: the enclosing code owns that failure."""

    def wrap(fn: Callable) -> Callable:
        _kinds[kind] = fn

        @functools.wraps(fn)
        def write(**kwargs):
            if connection.in_atomic_block or _draining.get():
                return fn(**kwargs)
            if not waiting_now():
                try:
                    with transaction.atomic():
                        return fn(**kwargs)
                except DATABASE_AWAY as exc:
                    log.warning(
                        "database away (%s): keeping a %s write for when it returns",
                        first_line(exc),
                        kind,
                    )
                    connection.close()  # broken; the next use opens a fresh one
            keep(kind, kwargs)
            return None

        return write

    return wrap


def waiting_now() -> int:
    """Records waiting in the list; 0 when Redis cannot say (then the database is tried)."""
    try:
        return client().llen(QUEUE)
    except redis.RedisError:
        return 0


def keep(kind: str, kwargs: dict) -> bool:
    """Append one write to the list; False when it was dropped (full, or Redis away)."""
    record = json.dumps({"kind": kind, "args": kwargs, "kept_at": time.time()})
    try:
        appended = client().eval(_KEEP, 2, QUEUE, DROPPED, settings.OUTBOX_LIMIT, record, kind)
    except redis.RedisError as exc:
        log.error("database and Redis both away: a %s write is lost (%s)", kind, exc)
        return False
    if not appended:
        log.error(
            "outbox full (%d writes wait for the database): dropped a %s write (%s so far)",
            settings.OUTBOX_LIMIT,
            kind,
            dropped().get(kind, 0),
        )
        return False
    start_draining()
    return True


def dropped() -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client().hgetall(DROPPED).items()}


def failed() -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client().hgetall(FAILED).items()}


def state() -> dict:
    """What /healthz and /metrics show: writes waiting, dropped and failed, by kind."""
    try:
        return {"waiting": client().llen(QUEUE), "dropped": dropped(), "failed": failed()}
    except redis.RedisError as exc:
        return {"error": str(exc)[:200]}


def drain() -> int:
    """Write what the list holds, oldest first, until it is empty or the database
    is away again; returns how many were written. One drainer at a time (a lock
    in Redis): two would write the same record twice."""
    redis_client = client()
    token = uuid.uuid4().hex
    if not redis_client.set(LOCK, token, nx=True, ex=LOCK_SECONDS):
        return 0
    written = 0
    try:
        while (raw := redis_client.lindex(QUEUE, 0)) is not None:
            record = json.loads(raw)
            if not _write_one(record):
                break
            # Removed only once written: a drainer that dies in between leaves it first.
            redis_client.lpop(QUEUE)
            redis_client.expire(LOCK, LOCK_SECONDS)
            written += 1
    finally:
        if redis_client.get(LOCK) == token.encode():
            redis_client.delete(LOCK)
    if written:
        log.info("database back: wrote %d kept writes", written)
    return written


def _write_one(record: dict) -> bool:
    """True when the record is done with (written, or failed for good)."""
    kind = record.get("kind")
    fn = _kinds.get(kind)
    if fn is None:
        # Each app registers its kinds when it loads (AppConfig.ready), so this is
        # a process without that app: leave the record for one that has it.
        log.warning("outbox: no kept write named %r in this process; left for another", kind)
        return False
    marker = _draining.set(True)
    try:
        with transaction.atomic():
            fn(**record["args"])
    except DATABASE_AWAY:
        connection.close()
        return False
    except Exception:
        log.exception("a kept %s write failed and is dropped: %s", kind, str(record)[:300])
        client().hincrby(FAILED, str(kind), 1)
    finally:
        _draining.reset(marker)
    return True


def start_draining() -> None:
    """This process's drainer thread: retries until the list is empty."""
    global _thread
    with _thread_lock:
        if _thread is not None and _thread.is_alive():
            return
        _thread = threading.Thread(target=_drain_until_empty, name="hangar-outbox", daemon=True)
        _thread.start()


def _drain_until_empty() -> None:
    while True:
        time.sleep(RETRY_SECONDS)
        try:
            drain()
            if not waiting_now():
                return
        except Exception:
            log.exception("outbox: draining failed; retrying")
        finally:
            connection.close()  # this thread's own connection
