"""Whether the console is there to hear its agents.

Each web process (Daphne, console/asgi.py) writes every second, into one Redis
hash, since when it has been listening. The offline sweep judges a node's
silence only over time when some web process was listening: a web restart
slower than HANGAR_NODE_GRACE_SECONDS must not mark every node offline, and so
take their workers out of the gateway's routes, for the console's own absence
(docs/reliability.md, "Daphne killed").
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import redis

from apps.telemetry import live

KEY = "hangar:listening"
BEAT_S = 1.0
STALE_S = 5.0  # a process silent this long is gone (SIGKILL leaves its field)
log = logging.getLogger(__name__)
# A beat is "<since>,<Redis's own time>": staleness is judged on Redis's clock, so
# hosts whose clocks disagree by seconds are still told alive from gone. `since`
# stays the web host's clock, as node heartbeats (hangar:last_seen) are.
_BEAT = """
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ',' .. t[1] .. '.' .. string.format('%06d', t[2]))
"""
_started: threading.Thread | None = None


def start_beating() -> None:
    """Start this process's beat (once per process; a daemon thread)."""
    global _started
    if _started is not None:
        return
    field = f"{socket.gethostname()}:{os.getpid()}"
    since = time.time()

    def beat() -> None:
        while True:
            try:
                live.client().eval(_BEAT, 1, KEY, field, since)
            except redis.RedisError as exc:  # the sweep cannot run either
                log.debug("listening beat not written: %s", exc)
            time.sleep(BEAT_S)

    _started = threading.Thread(target=beat, name="hangar-listening", daemon=True)
    _started.start()


def listening_since() -> float | None:
    """The earliest start among the web processes alive now; None if none is.

    0.0 (judge as always) while no web process has ever beaten here: web processes
    of a release before this one, during a rolling upgrade, say nothing. So when
    all are gone the newest dead one's field stays, to tell "none listens" from
    "none says"."""
    client = live.client()
    beats = client.hgetall(KEY)
    if not beats:
        return 0.0
    seconds, micros = client.time()  # the clock the beats were written by
    now = seconds + micros / 1e6
    alive, gone = [], []
    for field, value in beats.items():
        try:
            since, last = (float(part) for part in value.split(b","))
        except ValueError:
            since, last = 0.0, 0.0  # not ours to read: forget it
        if now - last <= STALE_S:
            alive.append(since)
        else:
            gone.append((last, field))
    if not alive and gone:
        gone.remove(max(gone))
    if gone:
        client.hdel(KEY, *(field for _last, field in gone))
    return min(alive) if alive else None
