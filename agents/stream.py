"""The always-on websocket stream to the console.

Two halves that never wait on each other: a sampler thread sweeps every
`interval` seconds into a `SampleBuffer`, whatever the network does; the
asyncio sender drains that buffer while a connection is up and reconnects
with jittered exponential backoff while it is not. After an outage the
buffered sweeps go out as `batch` messages, oldest first, right after `hello`.

How full the buffer is shows in the log (every reconnect attempt while the
console is away) and in `<state-dir>/health.json`, rewritten every few seconds
and read by `hangar-agent status` (docs/agent.md, docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from agents import __version__, protocol
from agents.buffer import SampleBuffer
from agents.collect import Collector
from agents.files import write_private
from agents.unacked import Unacknowledged
from agents.workers.feed import StatusFeed

log = logging.getLogger("hangar.agent")

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 10.0
# A console host whose link is gone resets nothing: sends pile up unacknowledged and
# websockets' keepalive ping waits behind them. The kernel ends the connection when
# sent data stays unacknowledged this long (TCP_USER_TIMEOUT), so the agent moves on
# to the next console before the node's silence (HANGAR_NODE_GRACE_SECONDS, 15 s)
# marks it offline.
UNACKED_TIMEOUT_S = 8
FACTS_REFRESH_S = 300.0
HEALTH_FILE = "health.json"
HEALTH_EVERY_S = 5.0


class CredentialRefused(Exception):
    """The console does not accept this node's credential (close code 4401)."""


def websocket_url(console: str) -> str:
    """http(s)://console[/prefix] -> ws(s)://console[/prefix]/ws/agent/"""
    parts = urlsplit(console)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"console URL {console!r} must start with http:// or https://")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws/agent/", "", ""))


def describe_fill(fill: dict[str, Any]) -> str:
    """One line for the log: how full the buffer is and what it stands for."""
    return (
        f"buffer {fill['samples']}/{fill['capacity']} samples ({fill['percent']:g}% full, "
        f"{fill['sweeps']} sweeps, {fill['merged_total']} merged so far)"
    )


def console_list(consoles: str | Sequence[str]) -> list[str]:
    """Console addresses in the order to try them: a list, or one comma-separated string.

    Several addresses are several console hosts of one installation (docs/ha.md):
    the agent streams to one at a time and moves to the next when it is lost.
    """
    items = [consoles] if isinstance(consoles, str) else list(consoles)
    found = [part.strip() for item in items for part in item.split(",") if part.strip()]
    if not found:
        raise ValueError("no console address given")
    return list(dict.fromkeys(found))  # each once, first mention first


def backoff_delay(
    attempt: int,
    rng: random.Random,
    base: float = BACKOFF_BASE_S,
    cap: float = BACKOFF_CAP_S,
) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0-based).

    "Equal jitter": a random point in the upper half of the exponential
    ceiling, so a fleet that lost the console together does not reconnect
    together, and no agent ever retries in a tight loop.
    """
    ceiling = min(cap, base * 2 ** min(attempt, 32))
    return rng.uniform(ceiling / 2, ceiling)


class FactsBox:
    """Latest FACTS with a version number the sender compares against."""

    def __init__(self, facts: dict[str, Any]) -> None:
        self._lock = threading.Lock()
        self._facts = facts
        self.version = 1

    def get(self) -> tuple[int, dict[str, Any]]:
        with self._lock:
            return self.version, self._facts

    def update(self, facts: dict[str, Any]) -> bool:
        with self._lock:
            if facts == self._facts:
                return False
            self._facts = facts
            self.version += 1
            return True


class Sampler(threading.Thread):
    """Sweeps on a fixed schedule; never touches the network."""

    def __init__(
        self,
        collector: Collector,
        buffer: SampleBuffer,
        facts: FactsBox,
        interval: float,
        on_sample: Callable[[], None],
        facts_refresh_s: float = FACTS_REFRESH_S,
    ) -> None:
        super().__init__(name="hangar-sampler", daemon=True)
        self.collector = collector
        self.buffer = buffer
        self.facts = facts
        self.interval = interval
        self.on_sample = on_sample
        self.facts_refresh_s = facts_refresh_s
        self.stopping = threading.Event()

    def run(self) -> None:
        next_sweep = time.monotonic()
        next_facts = next_sweep + self.facts_refresh_s
        while not self.stopping.is_set():
            try:
                self.buffer.push(self.collector.sweep())
                self.on_sample()
                if time.monotonic() >= next_facts:
                    next_facts += self.facts_refresh_s
                    if self.facts.update(self.collector.facts()):
                        self.on_sample()
            except Exception:
                # One bad sweep must not end telemetry for the node; the seq
                # gap it leaves is visible on the console.
                log.exception("sweep failed")
            # A fixed schedule rather than sleep(interval): sweeps do not
            # drift, and after a stall the sampler skips rather than bursts.
            next_sweep += self.interval
            now = time.monotonic()
            if next_sweep < now:
                next_sweep = now
            self.stopping.wait(next_sweep - now)

    def stop(self) -> None:
        self.stopping.set()


class Stream:
    """Keeps one connection to a console up and drains the buffer into it.

    With several console addresses, a connection that is lost or refused moves the
    agent to the next address; the backoff grows only once every address has
    failed in a round. The buffer is the same whichever console takes it, so what
    was not sent to one is sent to the next. Create it inside the running event
    loop that will run it.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        credential: str,
        buffer: SampleBuffer,
        facts: FactsBox,
        *,
        backoff_base: float = BACKOFF_BASE_S,
        backoff_cap: float = BACKOFF_CAP_S,
        rng: random.Random | None = None,
        workers: StatusFeed | None = None,
    ) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self.index = 0  # the address in use or to try next
        self.credential = credential
        self.buffer = buffer
        self.facts = facts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.rng = rng or random.Random()
        self.wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()  # the sampler thread wakes us through it
        self.connections = 0  # successful connections so far, for logs and tests
        self.connected_since: float | None = None  # welcomed by the console
        self.unreachable_since: float | None = None
        self.workers = workers
        if workers is not None:
            workers.set_notify(self.notify)

    @property
    def url(self) -> str:
        return self.urls[self.index]

    def notify(self) -> None:
        """Called from the sampler thread after each push (and on worker changes)."""
        with contextlib.suppress(RuntimeError):  # loop already closed at shutdown
            self._loop.call_soon_threadsafe(self.wake.set)

    async def run(self) -> None:
        """Run until cancelled; raises CredentialRefused if the console says so."""
        attempt = 0
        while True:
            try:
                async with connect(
                    self.url,
                    additional_headers={"Authorization": f"Bearer {self.credential}"},
                    user_agent_header=f"hangar-agent/{__version__}",
                    open_timeout=10,
                    close_timeout=5,
                ) as ws:
                    _limit_unacked(ws)
                    self.connections += 1
                    log.info("connected to %s", self.url)
                    welcomed = await self._session(ws)
                    if welcomed:
                        attempt = 0
            except InvalidStatus as exc:
                if exc.response.status_code in (401, 403):
                    raise CredentialRefused(f"HTTP {exc.response.status_code}") from exc
                log.warning("console refused the connection: %s", exc)
            except ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code == protocol.CLOSE_CREDENTIAL_REFUSED:
                    raise CredentialRefused(exc.rcvd.reason or "close code 4401") from exc
                log.warning("connection to the console lost: %s", exc)
            except InvalidURI:
                raise
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                log.warning("cannot reach the console at %s: %s", self.url, exc)
            except Exception:
                # A bug here must not end telemetry for the node: log, back off, retry.
                log.exception("unexpected error in the stream")
            self.connected_since = None
            self.unreachable_since = self.unreachable_since or time.time()
            # Next address; the backoff counts whole rounds over the addresses.
            self.index = (self.index + 1) % len(self.urls)
            delay = backoff_delay(
                attempt // len(self.urls), self.rng, self.backoff_base, self.backoff_cap
            )
            attempt += 1
            log.info(
                "reconnecting to %s in %.1f s; console away for %.0f s; %s",
                self.url,
                delay,
                time.time() - self.unreachable_since,
                describe_fill(self.buffer.fill()),
            )
            await asyncio.sleep(delay)

    def health(self) -> dict[str, Any]:
        """What health.json says (see the module docstring)."""
        return {
            "pid": os.getpid(),
            "updated_at": time.time(),
            "console": self.url,
            "connected": self.connected_since is not None,
            "connected_since": self.connected_since,
            "unreachable_since": self.unreachable_since,
            "connections": self.connections,
            "buffer": self.buffer.fill(),
        }

    async def _session(self, ws: ClientConnection) -> bool:
        """Talk over one connection until it ends; True if the console welcomed us."""
        welcomed = asyncio.Event()
        unacked = Unacknowledged.of(ws)
        reader = asyncio.create_task(self._read(ws, welcomed))
        sender = asyncio.create_task(self._send(ws, unacked))
        ended_well = False  # the console closed, or the agent is stopping
        try:
            done, _ = await asyncio.wait({reader, sender}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                try:
                    task.result()  # re-raise ConnectionClosed and friends
                except ConnectionClosed as exc:
                    ended_well = exc.rcvd is not None
                    raise
        except asyncio.CancelledError:
            ended_well = True  # stopping: what is still in memory goes with the agent
            raise
        finally:
            for task in (reader, sender):
                task.cancel()
            await asyncio.gather(reader, sender, return_exceptions=True)
            # A console that closes has read what came before its close; a connection
            # that just died took its unacknowledged bytes along (agents/unacked.py).
            unacked.settle()  # the last word of the socket, if it still has one
            lost_with_it = [] if ended_well else unacked.unacknowledged()
            if lost_with_it:
                log.warning(
                    "connection ended with %d samples unacknowledged; sending them again",
                    len(lost_with_it),
                )
                self.buffer.requeue(lost_with_it)
        return welcomed.is_set()

    async def _read(self, ws: ClientConnection, welcomed: asyncio.Event) -> None:
        while True:
            raw = await ws.recv()  # raises ConnectionClosed, carrying the close code
            try:
                message = json.loads(raw)
            except ValueError:
                log.warning("console sent something that is not JSON; ignored")
                continue
            if not isinstance(message, dict):
                continue
            if message.get("type") == protocol.WELCOME:
                if message.get("protocol") != protocol.PROTOCOL_VERSION:
                    log.warning("console speaks protocol %r", message.get("protocol"))
                if self.unreachable_since is not None:
                    log.info(
                        "console back after %.0f s; sending the %s",
                        time.time() - self.unreachable_since,
                        describe_fill(self.buffer.fill()),
                    )
                self.connected_since, self.unreachable_since = time.time(), None
                welcomed.set()
            elif message.get("type") == protocol.ERROR:
                # The console refused one message and kept the connection: a
                # bug on one side or the other, worth a line in the journal.
                log.warning("console refused a message: %s", message.get("detail"))

    async def _send_all_workers(self, ws: ClientConnection) -> None:
        """After hello: every worker's status, superseding changes queued meanwhile."""
        if self.workers is None:
            return
        self.workers.clear()
        for status in await asyncio.to_thread(self.workers.snapshot):
            await ws.send(json.dumps(protocol.worker(status)))

    async def _send(self, ws: ClientConnection, unacked: Unacknowledged) -> None:
        facts_version, facts = self.facts.get()
        await ws.send(json.dumps(protocol.hello(facts, __version__)))
        await self._send_all_workers(ws)
        while True:
            version, facts = self.facts.get()
            if version != facts_version:
                facts_version = version
                await ws.send(json.dumps(protocol.hello(facts, __version__)))
                await self._send_all_workers(ws)
            self.wake.clear()
            if self.workers is not None:
                # Not requeued if a send fails: the next hello sends every worker anew.
                for status in self.workers.take():
                    await ws.send(json.dumps(protocol.worker(status)))
            unacked.settle()  # at least once per sweep: the wake below is the sampler's
            samples = self.buffer.take(protocol.MAX_BATCH_SAMPLES)
            if not samples:
                await self.wake.wait()
                continue
            if len(samples) == 1:
                message = protocol.telemetry(samples[0])
            else:
                message = protocol.batch(samples)
            try:
                await ws.send(json.dumps(message))
            except BaseException:
                # Not sent: keep them for the next connection (cancellation
                # included, so a shutdown mid-send loses nothing in memory).
                self.buffer.requeue(samples)
                raise
            unacked.sent(samples)


def _limit_unacked(ws: ClientConnection) -> None:
    sock = ws.transport.get_extra_info("socket")
    option = getattr(socket, "TCP_USER_TIMEOUT", None)  # Linux
    if sock is not None and option is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, option, UNACKED_TIMEOUT_S * 1000)


async def run_agent(
    console: str | Sequence[str],
    credential: str,
    collector: Collector,
    interval: float,
    stop: asyncio.Event,
    *,
    buffer: SampleBuffer | None = None,
    backoff_base: float = BACKOFF_BASE_S,
    backoff_cap: float = BACKOFF_CAP_S,
    workers: StatusFeed | None = None,
    health_path: Path | None = None,
) -> None:
    """Sample and stream until `stop` is set; raises CredentialRefused.

    `console`: one address, several (a list or comma-separated), tried in turn.

    `workers`: the supervisor's status feed, whose changes go out as `worker`
    messages (and all of them after each hello). `health_path`: where to keep
    health.json.
    """
    buffer = SampleBuffer() if buffer is None else buffer
    facts = FactsBox(await asyncio.to_thread(collector.facts))
    stream = Stream(
        [websocket_url(address) for address in console_list(console)],
        credential,
        buffer,
        facts,
        backoff_base=backoff_base,
        backoff_cap=backoff_cap,
        workers=workers,
    )
    stream_task = asyncio.create_task(stream.run())
    sampler = Sampler(collector, buffer, facts, interval, stream.notify)
    sampler.start()
    stop_task = asyncio.create_task(stop.wait())
    health_task = asyncio.create_task(_keep_health(stream, health_path)) if health_path else None
    try:
        await asyncio.wait({stream_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if stream_task.done():
            stream_task.result()  # CredentialRefused ends the agent
    finally:
        stop_task.cancel()
        if health_task is not None:
            health_task.cancel()
        stream_task.cancel()
        await asyncio.gather(stream_task, return_exceptions=True)
        sampler.stop()
        await asyncio.to_thread(sampler.join, 5)
        collector.close()
        # What this run measured and what never left: the one account of samples
        # the node itself keeps (the chaos suite compares it with the console's).
        log.info("stopped after %d sweeps, %d not sent", collector.seq, len(buffer))


async def _keep_health(stream: Stream, path: Path) -> None:
    while True:
        try:
            await asyncio.to_thread(write_private, path, json.dumps(stream.health()) + "\n")
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc)
        await asyncio.sleep(HEALTH_EVERY_S)
