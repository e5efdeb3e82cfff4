"""Live telemetry written and fanned out in batches, one batcher per event loop.

Each agent socket used to make two Redis round trips per sample: a pipeline
(SET latest, HSET last_seen) and a PUBLISH for the channel layer's group_send.
At 1,000 nodes that is 2,000 round trips a second, and they took about a third
of Daphne's CPU (docs/benchmarks.md). Here every sample taken on one event loop
within a flush window goes out together: one pipeline for all nodes' latest
samples, last-seen times and lost counts, then one group_send per cluster that
carries every sample, in the order they were taken.

A flush starts on the next loop turn when none ran in the last `interval`, so a
lone sample is not held back; under load flushes are `interval` apart and carry
everything that arrived meanwhile.

Callers await `put()` until their sample is stored and sent. That keeps the
order a browser sees (a sample before the node-state or alert messages it
causes) and bounds the batcher: each agent socket has at most one sample
waiting, so pending items are at most the number of connected agents.
`max_pending` is only a backstop for sockets abandoned while Redis is down.
A failed flush is logged and retried with the next one; nothing is dropped
unless the backstop overflows, and that is logged with a count.

A flush also ends with an echo: a small message to this process's own
channel, published after the samples, and awaited. Redis delivers in order,
so its arrival means this process has read every sample it published. When
the machine is short of CPU, ingest must not outrun this process's pub/sub
reader: Redis closes a subscriber whose unread output passes 32 MB
(`client-output-buffer-limit pubsub`) and everything queued for it is lost
(docs/benchmarks.md). With the echo the backlog stays with the agents'
sockets, where it only costs latency.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref

import redis.asyncio as aioredis
from django.conf import settings

from apps.telemetry import live

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.05  # seconds between flushes under load: the latency a sample may wait
MAX_PENDING = 20_000  # samples waiting for fan-out (backstop, see the module docstring)
MAX_RETRY_DELAY = 2.0
ECHO_TIMEOUT = 5.0  # seconds to wait for a flush's echo before going on without it
LATEST_EXPIRY = 3600  # seconds: a node silent for an hour has no live sample


class TelemetryBatcher:
    def __init__(
        self,
        redis: aioredis.Redis,
        channel_layer,
        interval: float = FLUSH_INTERVAL,
        max_pending: int = MAX_PENDING,
    ):
        self.redis = redis
        self.channel_layer = channel_layer
        self.interval = interval
        self.max_pending = max_pending
        # What the next flush writes: newest sample per node (coalesced), last-seen
        # times, lost-sample counts, and per cluster every sample for browsers.
        self._latest: dict[int, str] = {}
        self._seen: dict[int, float] = {}
        self._lost: dict[int, int] = {}
        self._fanout: dict[int, list[dict]] = {}
        self._pending = 0
        self._done: asyncio.Future | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._next_flush = 0.0
        self._retry_delay = 0.0
        self._echo_channel: str | None = None
        self._echo_count = 0
        self.flushes = 0
        self.failures = 0
        self.dropped = 0

    async def put(
        self,
        node_id: int,
        cluster_id: int,
        sample_json: str,
        lost: int = 0,
        grid: list | None = None,
    ) -> None:
        """Queue one node's newest sample (JSON text); returns once it is stored and sent.

        `grid` is `[seq, tiles]` (apps/telemetry/grid.py), made once here for every
        dashboard instead of once per dashboard."""
        loop = asyncio.get_running_loop()
        self._latest[node_id] = sample_json
        self._seen[node_id] = time.time()
        if lost:
            self._lost[node_id] = self._lost.get(node_id, 0) + lost
        self._fanout.setdefault(cluster_id, []).append(
            {"node": node_id, "sample_json": sample_json, "grid": grid}
        )
        self._pending += 1
        if self._pending > self.max_pending:
            self._drop_oldest(self._pending - self.max_pending)
        if self._done is None:
            self._done = loop.create_future()
        done = self._done
        self._wake_flusher()
        # Shielded: one caller being cancelled (its socket closed) must not cancel
        # the future every other caller in this batch waits on.
        await asyncio.shield(done)

    def _wake_flusher(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            delay = self._next_flush - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._next_flush = loop.time() + self.interval
            try:
                await self.flush()
            except Exception:  # flush() handles its own failures; this must never stop
                log.exception("telemetry batcher: unexpected error")

    async def flush(self) -> None:
        """Write and send everything queued; on failure put it back for the next flush."""
        latest, seen, lost, fanout, done = (
            self._latest,
            self._seen,
            self._lost,
            self._fanout,
            self._done,
        )
        if done is None:
            return
        self._latest, self._seen, self._lost, self._fanout = {}, {}, {}, {}
        self._pending, self._done = 0, None
        stored = False
        try:
            pipe = self.redis.pipeline(transaction=False)
            for node_id, text in latest.items():
                pipe.set(live.latest_key(node_id), text, ex=LATEST_EXPIRY)
            if seen:  # empty when retrying a fan-out whose writes already succeeded
                pipe.hset(live.LAST_SEEN, mapping=seen)
            for node_id, count in lost.items():
                pipe.hincrby(live.LOST, node_id, count)
            if latest or seen or lost:
                await pipe.execute()
            stored = True
            sent = time.time()
            while fanout:
                cluster_id, items = next(iter(fanout.items()))
                if not items:  # emptied by the backstop
                    del fanout[cluster_id]
                    continue
                for item in items:
                    item["sent"] = sent
                await self.channel_layer.group_send(
                    live.cluster_group(cluster_id),
                    {"type": "telemetry.samples", "cluster": cluster_id, "items": items},
                )
                del fanout[cluster_id]
        except Exception:
            self.failures += 1
            waiting = sum(len(items) for items in fanout.values())
            log.error(
                "telemetry flush failed (%s); %d samples of %d nodes kept for the next try",
                "sending to browsers" if stored else "writing to Redis",
                waiting,
                len(latest),
                exc_info=True,
            )
            self._requeue(None if stored else (latest, seen, lost), fanout, done)
            return
        self.flushes += 1
        self._retry_delay = 0.0
        await self._echo()
        done.set_result(None)

    async def _echo(self) -> None:
        """Wait until this process has read back what it just published (see above)."""
        layer = self.channel_layer
        try:
            if self._echo_channel is None:
                self._echo_channel = await layer.new_channel("telemetry-batcher.")
            self._echo_count += 1
            await layer.send(self._echo_channel, {"type": "echo", "n": self._echo_count})
            async with asyncio.timeout(ECHO_TIMEOUT):
                while (await layer.receive(self._echo_channel))["n"] < self._echo_count:
                    pass
        except Exception:
            # Cancelling receive() unsubscribed the channel: make a new one next time.
            self._echo_channel = None
            log.warning(
                "telemetry batcher: no echo from the channel layer within %.0f s; "
                "going on without it",
                ECHO_TIMEOUT,
                exc_info=True,
            )

    def _requeue(self, stored_part, fanout: dict[int, list[dict]], done: asyncio.Future) -> None:
        """Put a failed batch back in front of what arrived since; retry with backoff."""
        if stored_part is not None:
            latest, seen, lost = stored_part
            self._latest = {**latest, **self._latest}  # what arrived since is newer
            self._seen = {**seen, **self._seen}
            for node_id, count in lost.items():
                self._lost[node_id] = self._lost.get(node_id, 0) + count
        for cluster_id, items in self._fanout.items():
            fanout.setdefault(cluster_id, []).extend(items)
        self._fanout = fanout
        self._pending = sum(len(items) for items in fanout.values())
        newer = self._done  # callers who arrived during the failed flush wait on this
        if newer is not None:
            done.add_done_callback(lambda _: newer.done() or newer.set_result(None))
        self._done = done
        self._retry_delay = min(MAX_RETRY_DELAY, max(self.interval, 2 * self._retry_delay))
        self._next_flush = asyncio.get_running_loop().time() + self._retry_delay
        self._wake_flusher()

    def _drop_oldest(self, count: int) -> None:
        """The backstop: drop the oldest samples waiting for browsers, loudly."""
        dropped = 0
        for items in self._fanout.values():
            if dropped == count:
                break
            take = min(count - dropped, len(items))
            del items[:take]
            dropped += take
        self._pending -= dropped
        self.dropped += dropped
        log.error(
            "telemetry batcher over %d waiting samples (Redis down or slow?): "
            "dropped the %d oldest before they reached browsers (%d so far)",
            self.max_pending,
            dropped,
            self.dropped,
        )


_batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TelemetryBatcher] = (
    weakref.WeakKeyDictionary()
)


def batcher_for_this_loop(channel_layer) -> TelemetryBatcher:
    """The running event loop's batcher (one per process in Daphne)."""
    loop = asyncio.get_running_loop()
    batcher = _batchers.get(loop)
    if batcher is None:
        batcher = _batchers[loop] = TelemetryBatcher(settings.REDIS.async_client(), channel_layer)
    return batcher
