"""The two clients of the telemetry benchmark, each run as its own process.

    python -m tests.bench.swarm agents  --port P --credentials FILE
    python -m tests.bench.swarm browser --port P --session KEY --out FILE

`agents` drives many simulated nodes from one asyncio loop: one websocket per
node to /ws/agent/, a hello, then one telemetry message per node per second
(`agents.simulate` GPUs, the send time in sample["ts"]). `browser` is one
logged-in user subscribed to every cluster on /ws/telemetry/; it records, for
each sample it receives, which node and seq it was and when it arrived.

Both talk to the orchestrator (tests/bench/telemetry.py) in JSON lines: they
print {"ready": ...} once connected, wait for one command on stdin, and print
their result. Nothing here imports Django: like a real agent or browser, these
processes only know the wire protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from agents import protocol
from agents.simulate import SimulatedSource

GIB = 1024**3


def say(message: dict) -> None:
    print(json.dumps(message), flush=True)


async def command() -> dict:
    """The next JSON line from the orchestrator; {} when stdin closes."""
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    return json.loads(line) if line.strip() else {}


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": math.nan, "p99": math.nan, "max": math.nan}
    ordered = sorted(values)
    last = len(ordered) - 1
    return {
        "p50": ordered[round(0.50 * last)],
        "p99": ordered[round(0.99 * last)],
        "max": ordered[last],
    }


# --- agents --------------------------------------------------------------------


class SimulatedAgent:
    """One node: its credential, its GPUs and its socket."""

    def __init__(self, node_id: int, credential: str, phase: float, gpus: int):
        self.node_id = node_id
        self.credential = credential
        self.phase = phase  # offset within each second, so sends spread evenly
        self.source = SimulatedSource(gpus, seed=node_id)
        self.host = {
            "cpu_percent": 12.5,
            "memory_used": 96 * GIB,
            "memory_total": 512 * GIB,
            "disk_used": 200 * GIB,
            "disk_total": 2000 * GIB,
        }
        self.seq = 0
        self.conn: ClientConnection | None = None
        self.reader: asyncio.Task | None = None
        self.unexpected: list[str] = []  # anything the console sent after welcome
        self.closed: str | None = None
        self.send_failures = 0

    def facts(self) -> dict:
        n = self.node_id
        return protocol.validate_facts(
            {
                "hostname": f"bench-{self.node_id}",
                "os": "Debian GNU/Linux 12",
                "kernel": "6.1.0",
                "cpu_count": 64,
                "memory_total": 512 * GIB,
                "addresses": [f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"],
                **self.source.facts(),
                "simulated": True,
            }
        )

    async def connect(self, url: str, limit: asyncio.Semaphore) -> str | None:
        """Connect, read the welcome, send hello. Returns a problem, or None."""
        problem = None
        async with limit:
            for _attempt in range(3):  # as a real agent would, retry a failed handshake
                try:
                    self.conn = await connect(
                        url,
                        additional_headers={"Authorization": f"Bearer {self.credential}"},
                        user_agent_header="hangar-bench-agent",
                        open_timeout=60,
                        close_timeout=5,
                        ping_interval=None,  # keep the load to telemetry
                        max_queue=None,
                    )
                    welcome = json.loads(await asyncio.wait_for(self.conn.recv(), 60))
                    if welcome.get("type") != protocol.WELCOME:
                        return f"node {self.node_id}: expected welcome, got {welcome}"
                    await self.conn.send(json.dumps(protocol.hello(self.facts(), "bench")))
                    break
                except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
                    self.conn = None
                    problem = f"node {self.node_id}: {type(exc).__name__}: {exc}"
                    await asyncio.sleep(1)
            else:
                return problem
        self.reader = asyncio.create_task(self.read())
        return None

    async def read(self) -> None:
        try:
            async for message in self.conn:
                self.unexpected.append(str(message)[:300])
        except ConnectionClosed as exc:
            self.closed = str(exc)
        else:
            self.closed = "closed by the console"

    async def stream(self, start: float, stop: float, lags: list[float]) -> None:
        """One sample per second at start + phase + k, until stop."""
        due = start + self.phase
        while due < stop and self.closed is None:
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            gpus, faults = self.source.sample()
            now = time.time()
            lags.append(now - due)
            sample = {
                "seq": self.seq + 1,
                "ts": now,
                "simulated": True,
                "gpus": gpus,
                "host": self.host,
                "faults": faults,
            }
            try:
                await self.conn.send(json.dumps(protocol.telemetry(sample)))
            except ConnectionClosed as exc:
                self.closed = str(exc)
                self.send_failures += 1
                return
            self.seq += 1
            due += 1.0


async def run_agents(args: argparse.Namespace) -> None:
    nodes = json.loads(Path(args.credentials).read_text())
    url = f"ws://127.0.0.1:{args.port}/ws/agent/"
    swarm = [SimulatedAgent(n["id"], n["credential"], n["phase"], args.gpus) for n in nodes]
    # A bounded number of handshakes at a time: each costs the console a
    # credential lookup and the hello a facts write, all on its one DB thread.
    limit = asyncio.Semaphore(args.connect_concurrency)
    problems = [p for p in await asyncio.gather(*(a.connect(url, limit) for a in swarm)) if p]
    live = [a for a in swarm if a.conn is not None]
    say({"ready": True, "connected": len(live), "problems": problems[:20]})

    go = await command()
    lags: list[float] = []
    if go.get("start"):
        await asyncio.gather(*(a.stream(go["start"], go["stop"], lags) for a in live))
    say(
        {
            "sent": {str(a.node_id): a.seq for a in swarm},
            "send_lag": percentiles(lags),
            "send_failures": sum(a.send_failures for a in swarm),
            "unexpected": [m for a in swarm for m in a.unexpected][:20],
            "unexpected_count": sum(len(a.unexpected) for a in swarm),
            "closed_early": [f"node {a.node_id}: {a.closed}" for a in live if a.closed][:20],
            "closed_early_count": sum(1 for a in live if a.closed),
        }
    )

    await command()  # "exit": close only when told, so closing is not measured
    for agent in live:
        agent.reader.cancel()
    await asyncio.gather(*(a.conn.close() for a in live), return_exceptions=True)


# --- browser -------------------------------------------------------------------


async def run_browser(args: argparse.Namespace) -> None:
    origin = f"http://127.0.0.1:{args.port}"
    for attempt in range(5):  # a busy machine can drop one handshake; a second is fine
        try:
            conn = await connect(
                f"ws://127.0.0.1:{args.port}/ws/telemetry/",
                origin=origin,
                additional_headers={"Cookie": f"sessionid={args.session}"},
                open_timeout=30,
                ping_interval=None,
                max_size=None,  # a snapshot of many nodes can exceed 1 MiB
                max_queue=None,
            )
            break
        except (OSError, InvalidHandshake, TimeoutError):
            if attempt == 4:
                raise
            await asyncio.sleep(1)
    await conn.send(json.dumps({"action": "subscribe"}))
    snapshot = json.loads(await asyncio.wait_for(conn.recv(), 30))
    if snapshot.get("type") != "snapshot":
        raise SystemExit(f"browser: expected a snapshot, got {snapshot}")

    received: list[tuple[int, int, float, float]] = []  # node, seq, sample ts, arrival
    other: dict[str, int] = {}
    last_arrival = time.time()

    async def receive() -> None:
        nonlocal last_arrival
        async for raw in conn:
            now = time.time()
            message = json.loads(raw)
            if message.get("type") == "sample":
                sample = message["sample"]
                received.append((message["node"], sample["seq"], sample["ts"], now))
                last_arrival = now
            else:
                kind = str(message.get("type"))
                other[kind] = other.get(kind, 0) + 1

    receiver = asyncio.create_task(receive())
    say({"ready": True, "snapshot_nodes": len(snapshot["nodes"])})

    drain = await command()
    # After the agents stop: keep reading until nothing arrives for `idle`
    # seconds, so a backlog still in flight is counted as late, not lost.
    deadline = time.time() + drain.get("deadline", 60)
    while time.time() < deadline and time.time() - last_arrival < drain.get("idle", 3):
        if receiver.done():
            break
        await asyncio.sleep(0.2)
    closed = None
    if receiver.done() and receiver.exception() is not None:
        closed = str(receiver.exception())
    receiver.cancel()
    Path(args.out).write_text(json.dumps({"samples": received, "other": other, "closed": closed}))
    say({"done": True, "samples": len(received)})
    await conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=["agents", "browser"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--credentials", help="agents: JSON list of {id, credential, phase}")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--connect-concurrency", type=int, default=20)
    parser.add_argument("--session", help="browser: a session key of a logged-in user")
    parser.add_argument("--out", help="browser: where to write what it received")
    args = parser.parse_args(argv)
    asyncio.run(run_agents(args) if args.role == "agents" else run_browser(args))


if __name__ == "__main__":
    main()
