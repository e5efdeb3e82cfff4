"""Gateway benchmark: `hangar-gateway` against a stub engine that answers at once.

    make bench-gateway                                      # the full run, about 4.5 min
    python -m tests.bench.gateway --streams 250,1000 --json /tmp/gateway.json
    python -m tests.bench.gateway --quick                   # smoke check, no docs
    python -m tests.bench.gateway --profile /tmp/gw-prof    # plus py-spy on the gateway

Real parts on this machine, built with the console's own code: a fresh
PostgreSQL database (`hangar_bench_gateway`, dropped and migrated each run),
a Redis database (15, flushed before and after), a cluster with one online
node, a deployment with `--workers` ready workers behind the route `bench`,
a consumer key (`create_consumer_key`), the snapshot published
(`apps.gateway.snapshot.publish`) and one real `hangar-gateway` process
serving it. The workers are the stub below (one process, one port and one
engine secret per worker): like a real engine it refuses a request without
`Authorization: Bearer <its secret>`, answers a non-streamed chat completion
with a fixed small JSON (with `usage`) at once, and streams `max_tokens`
chunks at `--chunk-rate` per second, then `[DONE]`. Each chunk carries the
stub's `time.monotonic()` when it was written (`sent_at`, first in the JSON;
CLOCK_MONOTONIC is one clock for every process of the machine).

In one run, each measure "direct" (straight to a worker port, with its secret)
and "gateway" (through the gateway, with the consumer key), interleaved:

1. max requests/s, non-streaming: wrk (closed loop, `--connections`, one
   thread, `--seconds` each, `--rounds` times; best round counts). Without
   wrk, an aiohttp closed-loop client stands in.
2. latency at a fixed offered load (`--rate`, 1,000/s): an open-loop client
   (asyncio protocol over `--connections` kept-alive connections; aiohttp's
   client costs too much CPU to offer 1,000/s on a shared core) that sends
   request i at t0 + i/rate whatever came back, on a free connection or as
   soon as one frees, and takes each latency from the scheduled time (so a
   stall counts for every request it delays). Added latency = gateway
   percentile - direct percentile.
3. streaming: `--streams` concurrent streams (ramped up over `--ramp` s), each
   `--chunk-rate` chunks/s; per-chunk delay = client receipt - `sent_at`, over
   the window in which every stream is open. Added = gateway - direct.

CPU is read with psutil for the gateway and the stub, from the generators'
own rusage, and for the whole machine (`other` = machine - ours: other users).
With `--pin` the gateway runs on CPU 0 and the stub and load generators on
CPU 1 (taskset), so the gateway has a core to itself as far as our own
processes go; other users' processes still float, and on a shared machine
they then take the gateway's core while it cannot move, so it is off by default.

Every step is bounded in count and time, on loopback only; every process it
starts is stopped at the end. Results print as tables; `--json PATH` writes
them all; a full run also rewrites the section "Gateway" of docs/benchmarks.md
(its hand-written "### Findings" and other sections are kept).

`--save-world FILE` keeps the stub's ports and secrets, the key and the
published snapshot; `--world FILE` replays them on a host without the console
(no Django, no PostgreSQL: Python, aiohttp, redis-py, psutil and Redis).

Subcommands used by the benchmark itself (also handy alone):
`stub --worker PORT=SECRET ...`, `open-loop`, `streams`, `closed-loop`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import os
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.bench.swarm import percentiles
from tests.support import processes

ROOT = processes.ROOT
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "Gateway"
ROUTE = "bench"
AIM_RPS = 2000.0
AIM_ADDED_P50_MS = 1.0
AIM_ADDED_P99_MS = 5.0
AIM_CHUNK_P99_MS = 5.0
AIM_STREAMS = 1000
AIM_RATE = 1000.0
# Limits on (issue 13): three limits per request cost at most this much.
AIM_LIMITS_RPS_RATIO = 0.90
AIM_LIMITS_ADDED_P50_MS = 0.5
KEPT_UP = 0.98
REQUEST = {"model": ROUTE, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}
SERVER_MODULE = "apps.gateway.proxy.server"
SNAPSHOT_KEY = "hangar:gateway:snapshot"  # apps.gateway.snapshot.SNAPSHOT_KEY, for --world
STUB_MAX_SECONDS = 1800  # the stub ends by itself even if nobody stops it


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _more_files() -> None:
    """1,000 streams through a gateway are 2,000 sockets in it: take the hard limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _run(main_coroutine) -> None:
    try:
        import uvloop

        uvloop.run(main_coroutine)
    except ImportError:
        asyncio.run(main_coroutine)


def _say(message: dict) -> None:
    print(json.dumps(message), flush=True)


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the stub upstream: an OpenAI-compatible engine that answers at once ----------------

STUB_USAGE = {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
STUB_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1767225600,
        "model": ROUTE,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "a fixed answer"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": STUB_USAGE,
    },
    separators=(",", ":"),
).encode()
_CHUNK = (
    'data: {{"sent_at":{sent:.6f},"id":"chatcmpl-bench","object":"chat.completion.chunk",'
    '"created":1767225600,"model":"bench","choices":[{{"index":0,"delta":{delta},'
    '"logprobs":null,"finish_reason":{finish}}}]}}\n\n'
)
_USAGE_CHUNK = (
    'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1767225600,'
    '"model":"bench","choices":[],"usage":%s}\n\n'
)
SENT_AT = b'data: {"sent_at":'


def _refusal(message: str, status: int, code: str | None = None):
    from aiohttp import web

    body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    return web.json_response(body, status=status)


def stub_app(secret: str, chunk_rate: float, default_chunks: int):
    """One worker: `/v1/chat/completions` behind `Authorization: Bearer <secret>`."""
    from aiohttp import web

    expected = f"Bearer {secret}".encode()
    interval = 1.0 / chunk_rate

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def chat(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        sent = request.headers.get("Authorization", "").encode("latin-1", errors="replace")
        if not hmac.compare_digest(sent, expected):
            return _refusal("This engine needs its API key.", 401, "invalid_api_key")
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _refusal("The body must be a JSON object.", 400)
        if not body.get("stream"):
            return web.Response(body=STUB_COMPLETION, content_type="application/json")
        chunks = body.get("max_tokens")
        chunks = chunks if isinstance(chunks, int) and 0 < chunks <= 100_000 else default_chunks
        include_usage = (body.get("stream_options") or {}).get("include_usage") is True
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        started = time.monotonic()
        for i in range(chunks):
            wait = started + i * interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            delta = '{"role":"assistant","content":"tok "}' if i == 0 else '{"content":"tok "}'
            text = _CHUNK.format(sent=time.monotonic(), delta=delta, finish="null")
            await response.write(text.encode())
        tail = _CHUNK.format(sent=time.monotonic(), delta="{}", finish='"stop"')
        if include_usage:
            usage = {"prompt_tokens": 5, "completion_tokens": chunks, "total_tokens": 5 + chunks}
            tail += _USAGE_CHUNK % json.dumps(usage, separators=(",", ":"))
        await response.write((tail + "data: [DONE]\n\n").encode())
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def serve_stub(workers: list[tuple[int, str]], chunk_rate: float, chunks: int, limit: float):
    from aiohttp import web

    runners = []
    for port, secret in workers:
        runner = web.AppRunner(stub_app(secret, chunk_rate, chunks), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
        runners.append(runner)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    _say({"ready": [port for port, _ in workers]})
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), limit)
    for runner in runners:
        await runner.cleanup()


# --- load generators (each its own process, printing JSON lines) ------------------------


def _headers(key: str) -> dict:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


class _Client(asyncio.Protocol):
    """One kept-alive HTTP/1.1 connection that sends a fixed request and reads
    Content-Length answers: a tenth of aiohttp's client CPU per request, so a
    Python generator can offer 1,000 requests/s on a shared core."""

    def __init__(self, request: bytes, done) -> None:
        self.request, self.done = request, done
        self.buffer = b""
        self.transport = None
        self.started: tuple[int, float, float] | None = None  # (i, scheduled, sent)

    def connection_made(self, transport) -> None:
        self.transport = transport

    def send(self, i: int, scheduled: float) -> None:
        self.started = (i, scheduled, time.monotonic())
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.started is None:
            return
        head = self.buffer[:end].lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            self.transport.close()  # not an answer this client reads (chunked)
            return
        line_end = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : line_end if line_end >= 0 else len(head)])
        if len(self.buffer) < end + 4 + length:
            return
        status = self.buffer[9:12].decode()
        self.buffer = self.buffer[end + 4 + length :]
        started, self.started = self.started, None
        self.done(self, status, *started)

    def connection_lost(self, exc) -> None:
        if self.started is not None:
            started, self.started = self.started, None
            self.done(None, "connection lost", *started)


async def open_loop(
    url: str, key: str, rate: float, seconds: float, warmup: float, connections: int
) -> None:
    """Request i is due at t0 + i/rate whatever happened before; its latency runs from
    then (waiting for a free connection included), over `connections` kept-alive ones."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    body = json.dumps(REQUEST).encode()
    request = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    total = int(rate * (warmup + seconds))
    counted_from = int(rate * warmup)
    latencies: list[float] = []
    service: list[float] = []
    lags: list[float] = []
    statuses: Counter = Counter()
    idle: list[_Client] = []
    waiting: deque[tuple[int, float]] = deque()
    finished = asyncio.Event()
    answered = 0

    def done(client, status: str, i: int, scheduled: float, sent: float) -> None:
        nonlocal answered
        now = time.monotonic()
        answered += 1
        if i >= counted_from:
            statuses[status] += 1
            latencies.append(now - scheduled)
            service.append(now - sent)
            lags.append(sent - scheduled)
        if client is not None:
            if waiting:
                client.send(*waiting.popleft())
            else:
                idle.append(client)
        if answered >= total:
            finished.set()

    loop = asyncio.get_running_loop()
    for _ in range(connections):
        _transport, client = await loop.create_connection(
            lambda: _Client(request, done), parts.hostname, parts.port
        )
        idle.append(client)
    t0 = time.monotonic() + 0.05
    interval = 1.0 / rate
    cpu_start = None
    i = 0
    while i < total:
        now = time.monotonic()
        while i < total and t0 + i * interval <= now:
            if i == counted_from:
                cpu_start = _own_cpu_seconds()
                _say({"mark": "start", "at": now})
            if idle:
                idle.pop().send(i, t0 + i * interval)
            else:
                waiting.append((i, t0 + i * interval))
            i += 1
        if i < total:
            await asyncio.sleep(max(0.0, t0 + i * interval - time.monotonic()))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(finished.wait(), 10)
    _say({"mark": "end", "at": time.monotonic()})
    cpu = _own_cpu_seconds() - (cpu_start or 0.0)
    statuses["no answer in 10 s"] += total - answered
    window = (total - counted_from) / rate
    _say(
        {
            "result": {
                "offered_per_s": rate,
                "connections": connections,
                "requests": len(latencies),
                "statuses": {k: v for k, v in statuses.items() if v},
                "latency_ms": _ms(percentiles(latencies)),
                "service_ms": _ms(percentiles(service)),
                "send_lag_ms": _ms(percentiles(lags)),
                "generator_cpu_percent": 100 * cpu / window,
            }
        }
    )


async def streams(
    url: str, key: str, count: int, chunk_rate: float, seconds: float, ramp: float
) -> None:
    """`count` streams opened over `ramp` s; delays of chunks received once all are open."""
    import aiohttp

    chunks = round(chunk_rate * (ramp + seconds))
    body = json.dumps({**REQUEST, "stream": True, "max_tokens": chunks}).encode()
    headers = _headers(key)
    delays: list[float] = []
    outcome: Counter = Counter()
    received = Counter()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=ramp + seconds + 60, sock_read=30)
    t0 = time.monotonic() + 0.1
    window = (t0 + ramp + 0.5, t0 + ramp + seconds - 0.25)

    async def one(i: int, session: aiohttp.ClientSession) -> None:
        await asyncio.sleep(max(0.0, t0 + ramp * i / count - time.monotonic()))
        done = False
        try:
            async with session.post(url, data=body, headers=headers) as response:
                if response.status != 200:
                    outcome[f"HTTP {response.status}"] += 1
                    return
                pending = b""
                async for data in response.content.iter_any():
                    now = time.monotonic()
                    events = (pending + data).split(b"\n\n")
                    pending = events.pop()
                    for event in events:
                        if event.startswith(SENT_AT):
                            received["all"] += 1
                            if window[0] <= now <= window[1]:
                                end = event.index(b",", len(SENT_AT))
                                delays.append(now - float(event[len(SENT_AT) : end]))
                        elif event == b"data: [DONE]":
                            done = True
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome[type(exc).__name__] += 1
            return
        outcome["complete" if done else "ended without [DONE]"] += 1

    async def marks() -> float:
        await asyncio.sleep(max(0.0, window[0] - time.monotonic()))
        cpu = _own_cpu_seconds()
        _say({"mark": "start", "at": time.monotonic()})
        await asyncio.sleep(max(0.0, window[1] - time.monotonic()))
        _say({"mark": "end", "at": time.monotonic()})
        return _own_cpu_seconds() - cpu

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        marker = asyncio.ensure_future(marks())
        await asyncio.gather(*(one(i, session) for i in range(count)))
        cpu = await marker
    span = window[1] - window[0]
    _say(
        {
            "result": {
                "streams": count,
                "chunk_rate": chunk_rate,
                "chunks_per_stream": chunks,
                "outcomes": dict(outcome),
                "chunks_received": received["all"],
                "window_s": span,
                "window_chunks": len(delays),
                "window_chunks_per_s": len(delays) / span,
                "delay_ms": _ms(percentiles(delays)),
                "generator_cpu_percent": 100 * cpu / span,
            }
        }
    )


async def closed_loop(url: str, key: str, connections: int, seconds: float) -> None:
    """Without wrk: `connections` clients each sending the next request on an answer."""
    import aiohttp

    body = json.dumps(REQUEST).encode()
    headers = _headers(key)
    latencies: list[float] = []
    statuses: Counter = Counter()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.monotonic() + seconds

        async def client() -> None:
            while time.monotonic() < deadline:
                sent = time.monotonic()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        statuses[str(response.status)] += 1
                except aiohttp.ClientError as exc:
                    statuses[type(exc).__name__] += 1
                latencies.append(time.monotonic() - sent)

        started, cpu = time.monotonic(), _own_cpu_seconds()
        _say({"mark": "start", "at": started})
        await asyncio.gather(*(client() for _ in range(connections)))
        took = time.monotonic() - started
        _say({"mark": "end", "at": time.monotonic()})
        cpu = _own_cpu_seconds() - cpu
    _say(
        {
            "result": {
                "requests": len(latencies),
                "seconds": took,
                "statuses": dict(statuses),
                "latency_ms": _ms(percentiles(latencies)),
                "generator_cpu_percent": 100 * cpu / took,
            }
        }
    )


def _ms(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v * 1000, 3) for k, v in values.items()}


# --- the orchestrator's parts -----------------------------------------------------------


@dataclass
class Target:
    name: str  # "direct" or "gateway"
    url: str  # the chat completions URL
    key: str


@dataclass
class World:
    stub: subprocess.Popen
    gateway: subprocess.Popen
    workers: list[tuple[int, str]]
    gateway_port: int
    admin_port: int
    key: str
    generation: int
    limited_key: str = ""

    def targets(self, limits: bool = True) -> list[Target]:
        port, secret = self.workers[0]
        path = "/v1/chat/completions"
        targets = [
            Target("direct", f"http://127.0.0.1:{port}{path}", secret),
            Target("gateway", f"http://127.0.0.1:{self.gateway_port}{path}", self.key),
        ]
        if limits and self.limited_key:
            # The same gateway, a key with three limits (each far above the load).
            url = f"http://127.0.0.1:{self.gateway_port}{path}"
            targets.append(Target("gateway+limits", url, self.limited_key))
        return targets


@dataclass
class Phase:
    """One measurement: what the generator said, and CPU over its window."""

    kind: str  # max-rps | fixed-rate | streams
    target: str
    result: dict
    cpu_percent: dict = field(default_factory=dict)  # gateway, stub, generator, other, machine
    gateway_cpu_s: float = 0.0
    load: str = ""


def _cpu(pid: int) -> float:
    import psutil

    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


class Meter:
    """CPU seconds of the gateway, the stub and the machine between two readings."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.start()

    def _read(self) -> tuple[float, float, float, float]:
        import psutil

        machine = psutil.cpu_times()
        busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        return (time.monotonic(), _cpu(self.world.gateway.pid), _cpu(self.world.stub.pid), busy)

    def start(self) -> None:
        self.began = self._read()

    def stop(self, generator_cpu_s: float) -> tuple[dict, float]:
        end = self._read()
        wall = end[0] - self.began[0]
        gateway, stub, machine = (end[i] - self.began[i] for i in (1, 2, 3))
        percent = {
            "gateway": 100 * gateway / wall,
            "stub": 100 * stub / wall,
            "generator": 100 * generator_cpu_s / wall,
            "machine": 100 * machine / wall,
        }
        ours = percent["gateway"] + percent["stub"] + percent["generator"]
        percent["other"] = max(0.0, percent["machine"] - ours)
        return {k: round(v, 1) for k, v in percent.items()}, gateway


def _pinned(argv: list[str], cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if cpu is not None else argv


def _load() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _post(url: str, key: str, body: dict) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers=_headers(key), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def start_stub(args, env: dict, workdir: Path, workers: list[tuple[int, str]]) -> subprocess.Popen:
    argv = [
        sys.executable,
        "-m",
        "tests.bench.gateway",
        "stub",
        "--chunk-rate",
        str(args.chunk_rate),
    ]
    for port, secret in workers:
        argv += ["--worker", f"{port}={secret}"]
    proc = processes.start(_pinned(argv, args.load_cpu), env, workdir / "stub.log")
    port = workers[0][0]
    processes.wait_for(
        lambda: _get_json(f"http://127.0.0.1:{port}/health")["status"] == "ok",
        what="the stub engine to answer",
        process=proc,
    )
    return proc


def create_world_rows(workers: list[tuple[int, str]]) -> tuple[str, str]:
    """Cluster, node, deployment with ready workers, route and a consumer key; the raw key."""
    from django.contrib.auth import get_user_model

    from apps.deployments.models import Deployment, Worker, WorkerState
    from apps.gateway.keys import create_consumer_key
    from apps.gateway.models import Route, RouteTarget
    from apps.inventory.models import Cluster, Node, NodeState
    from apps.registry.models import Model, ModelVersion, VersionState

    cluster = Cluster.objects.create(name="bench", description="gateway benchmark")
    node = Node.objects.create(
        cluster=cluster, hostname="bench-gpu", state=NodeState.ONLINE, worker_host="127.0.0.1"
    )
    model = Model.objects.create(name="bench")
    version = ModelVersion.objects.create(
        model=model,
        label="v1",
        path="/srv/models/bench/v1",
        format="safetensors",
        state=VersionState.READY,
        files=[{"path": "w.bin", "sha256": "a" * 64, "size": 1}],
    )
    deployment = Deployment.objects.create(
        name="bench-stub", cluster=cluster, model_version=version, engine="reference", port=9000
    )
    for slot, (port, secret) in enumerate(workers):
        Worker.objects.create(
            deployment=deployment,
            node=node,
            model_version=version,
            slot=slot,
            port=port,
            state=WorkerState.READY,
            engine_secret=secret,
        )
    route = Route.objects.create(name=ROUTE)
    RouteTarget.objects.create(route=route, deployment=deployment, weight=100)
    owner = get_user_model().objects.create_user("bench-student", password=secrets.token_hex(16))
    _key, raw = create_consumer_key(name="bench", days=1, user=owner, all_routes=True)
    # Three limits on every request of the second key: its own requests per minute, its
    # project's tokens per minute, and each member's concurrent requests.
    from apps.gateway.models import Limit, Project

    project = Project.objects.create(name="bench-dept")
    limited, limited_raw = create_consumer_key(
        name="bench limited", days=1, user=owner, all_routes=True, project=project
    )
    Limit.objects.create(scope="key", key=limited, requests_per_minute=10**9)
    Limit.objects.create(scope="project", project=project, tokens_per_minute=10**15)
    Limit.objects.create(scope="each-member", project=project, concurrent_requests=10**6)
    return raw, limited_raw


def start_gateway(args, env: dict, workdir: Path, generation: int):
    port, admin_port = processes.free_port(), processes.free_port()
    gateway_env = {
        **env,
        "HANGAR_GATEWAY_BIND": f"127.0.0.1:{port}",
        "HANGAR_GATEWAY_ADMIN_BIND": f"127.0.0.1:{admin_port}",
        # The stub has no batch capacity: no fair-share queue, so the proxy path is
        # what is measured (the queue has its own benchmark, tests/bench/fairshare.py).
        "HANGAR_GATEWAY_WORKER_CONCURRENCY": "1000000",
    }
    script = processes.BIN / "hangar-gateway"
    # Without the installed script (--world on a bare host): the same entry point.
    command = [str(script)] if script.exists() else [sys.executable, "-m", SERVER_MODULE]
    argv = _pinned(command, args.gateway_cpu)
    proc = processes.start(argv, gateway_env, workdir / "gateway.log")

    def serving() -> bool:
        health = _get_json(f"http://127.0.0.1:{admin_port}/healthz")
        return health["status"] == "ok" and (health["snapshot_generation"] or 0) >= generation

    processes.wait_for(serving, what="the gateway to serve the snapshot", process=proc)
    return proc, port, admin_port


def check_world(world: World) -> None:
    """One plain request and one stream each way, before anything is measured."""
    for target in world.targets():
        status, body, headers = _post(target.url, target.key, REQUEST)
        if status != 200 or json.loads(body)["usage"] != STUB_USAGE:
            raise SystemExit(f"{target.name}: a chat completion failed: {status} {body[:300]!r}")
        if target.name == "gateway" and headers.get("X-Hangar-Deployment") != "bench-stub":
            raise SystemExit(f"the gateway's answer did not come from the stub: {headers}")
        status, body, _ = _post(
            target.url, target.key, {**REQUEST, "stream": True, "max_tokens": 3}
        )
        if status != 200 or not body.endswith(b"data: [DONE]\n\n"):
            raise SystemExit(f"{target.name}: a stream failed: {status} {body[:300]!r}")
    port, _secret = world.workers[0]
    status, _, _ = _post(f"http://127.0.0.1:{port}/v1/chat/completions", "wrong", REQUEST)
    if status != 401:
        raise SystemExit(f"the stub accepted a request without its secret ({status})")


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = {authorization}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {{"requests":%d,"duration_us":%d,"errors":{{"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d}},"latency_ms":{{"p50":%.3f,"p99":%.3f,"max":%.3f}}}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
"""


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def max_rps(args, world: World, target: Target, workdir: Path) -> Phase:
    """Closed loop, as fast as answers come: wrk, or the aiohttp client without it."""
    meter = Meter(world)
    load = _load()
    if shutil.which("wrk"):
        script = workdir / f"wrk-{target.name}.lua"
        script.write_text(
            WRK_SCRIPT.format(
                body=_lua_string(json.dumps(REQUEST)),
                authorization=_lua_string(f"Bearer {target.key}"),
            )
        )
        argv = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds:g}s", "-s", str(script)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        meter.start()
        run = subprocess.run(
            _pinned([*argv, target.url], args.load_cpu),
            capture_output=True,
            text=True,
            timeout=args.seconds + 30,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        lines = [ln for ln in run.stdout.splitlines() if ln.startswith("WRK ")]
        if run.returncode or not lines:
            raise SystemExit(f"wrk failed ({run.returncode}):\n{run.stdout}\n{run.stderr}")
        found = json.loads(lines[-1][4:])
        generator_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        seconds = found["duration_us"] / 1e6
        result = {
            "tool": "wrk",
            "connections": args.connections,
            "requests": found["requests"],
            "seconds": seconds,
            "per_s": found["requests"] / seconds,
            "errors": found["errors"],
            "latency_ms": found["latency_ms"],
        }
        percent, gateway_cpu = meter.stop(generator_cpu)
    else:
        argv = [
            sys.executable, "-m", "tests.bench.gateway", "closed-loop", "--url", target.url,
            "--key", target.key, "--connections", str(args.connections),
            "--seconds", str(args.seconds),
        ]  # fmt: skip
        found = _generator(args, argv, workdir / f"closed-loop-{target.name}.log", meter)
        result = {"tool": "aiohttp closed loop", "connections": args.connections, **found}
        result["per_s"] = result["requests"] / result["seconds"]
        percent, gateway_cpu = meter.end_reading
    return Phase("max-rps", target.name, result, percent, gateway_cpu, load)


def _generator(args, argv, log_path: Path, meter: Meter) -> dict:
    """Run a Python generator; `meter` reads CPU between its start and end marks."""
    handle = open(log_path, "ab")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        _pinned(argv, args.load_cpu),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=handle,
        text=True,
        start_new_session=True,
    )
    result = None
    marked_start = None
    deadline = time.monotonic() + args.seconds + args.ramp + args.warmup + 120
    try:
        for line in proc.stdout:
            message = json.loads(line)
            if message.get("mark") == "start":
                meter.start()
                marked_start = _cpu(proc.pid)
            elif message.get("mark") == "end":
                meter.end_reading = meter.stop(_cpu(proc.pid) - (marked_start or 0.0))
            elif "result" in message:
                result = message["result"]
            if time.monotonic() > deadline:
                raise SystemExit(f"{argv[3]} ran past its time")
        proc.wait(30)
    finally:
        processes.stop(proc)
        handle.close()
    if result is None:
        raise SystemExit(f"{argv[3]} gave no result:\n{log_path.read_text()[-3000:]}")
    return result


def fixed_rate(args, world: World, target: Target, rate: float, workdir: Path) -> Phase:
    argv = [
        sys.executable, "-m", "tests.bench.gateway", "open-loop", "--url", target.url,
        "--key", target.key, "--rate", str(rate), "--seconds", str(args.seconds),
        "--warmup", str(args.warmup), "--connections", str(args.connections),
    ]  # fmt: skip
    meter, load = Meter(world), _load()
    result = _generator(args, argv, workdir / f"open-loop-{rate:g}-{target.name}.log", meter)
    percent, gateway_cpu = meter.end_reading
    return Phase("fixed-rate", target.name, result, percent, gateway_cpu, load)


def streaming(args, world: World, target: Target, count: int, workdir: Path) -> Phase:
    argv = [
        sys.executable, "-m", "tests.bench.gateway", "streams", "--url", target.url,
        "--key", target.key, "--streams", str(count), "--chunk-rate", str(args.chunk_rate),
        "--seconds", str(args.seconds), "--ramp", str(args.ramp),
    ]  # fmt: skip
    meter, load = Meter(world), _load()
    log = workdir / f"streams-{count}-{target.name}.log"
    result = _generator(args, argv, log, meter)
    percent, gateway_cpu = meter.end_reading
    return Phase("streams", target.name, result, percent, gateway_cpu, load)


# --- profile (py-spy), only when asked ----------------------------------------------------


def profile_gateway(args, world: World, workdir: Path) -> dict:
    """py-spy on the gateway while wrk drives it, then the frames that cost the most."""
    py_spy = shutil.which("py-spy") or str(processes.BIN / "py-spy")
    if not Path(py_spy).exists():
        return {"error": "py-spy is not installed (pip install py-spy)"}
    args.profile.mkdir(parents=True, exist_ok=True)
    raw = args.profile / "gateway.folded"
    seconds = max(5, int(args.seconds))
    # --nonblocking: py-spy reads the gateway's memory without pausing it.
    recorder = subprocess.Popen(
        [py_spy, "record", "--pid", str(world.gateway.pid), "--duration", str(seconds),
         "--rate", "200", "--nonblocking", "--format", "raw", "-o", str(raw)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.0)  # py-spy attaches
    phase = max_rps(args, world, world.targets()[1], workdir)
    _out, problem = recorder.communicate(timeout=seconds + 30)
    if not raw.exists():
        return {"error": (problem or "py-spy wrote nothing")[-2000:]}
    own: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _sep, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        frames = [_frame(f) for f in stack.split(";")]
        total += samples
        own[frames[-1]] += samples
        for name in set(frames):
            inclusive[name] += samples
    top = lambda counter: [  # noqa: E731
        {"frame": name, "percent": round(100 * n / total, 1)} for name, n in counter.most_common(20)
    ]
    return {
        "samples": total,
        "rps_while_profiled": round(phase.result["per_s"]),
        "self": top(own),
        "inclusive": top(inclusive),
        "folded": str(raw),
    }


def _frame(text: str) -> str:
    """`handle (apps/gateway/proxy/server.py:70)` -> `handle (gateway/proxy/server.py)`."""
    match = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", text)
    if not match:
        return text
    name, path = match.groups()
    for marker in ("site-packages/", "/lib/python3", str(ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


# --- report -----------------------------------------------------------------------------


def _pair(phases: list[Phase], kind: str, **match) -> dict[str, Phase]:
    """The direct and the gateway phase of one measure (with these result values)."""
    chosen: dict[str, Phase] = {}
    for p in phases:
        if p.kind != kind or any(p.result.get(k) != v for k, v in match.items()):
            continue
        if kind == "max-rps":  # the best round of each
            if p.target not in chosen or p.result["per_s"] > chosen[p.target].result["per_s"]:
                chosen[p.target] = p
        else:
            chosen[p.target] = p
    return chosen


def summarize(phases: list[Phase], args) -> dict:
    summary: dict = {}
    best = _pair(phases, "max-rps")
    if {"direct", "gateway"} <= best.keys():
        direct, gateway = best["direct"].result, best["gateway"].result
        summary["max_rps"] = {
            "direct": round(direct["per_s"]),
            "gateway": round(gateway["per_s"]),
            "ratio": round(gateway["per_s"] / direct["per_s"], 3),
            "gateway_cpu_ms_per_request": round(
                1000 * best["gateway"].gateway_cpu_s / gateway["requests"], 3
            ),
            "met": gateway["per_s"] >= AIM_RPS,
        }
    summary["fixed_rate"] = []
    for rate in args.rates:
        fixed = _pair(phases, "fixed-rate", offered_per_s=rate)
        if not {"direct", "gateway"} <= fixed.keys():
            continue
        d, g = fixed["direct"].result, fixed["gateway"].result
        added = {q: round(g["latency_ms"][q] - d["latency_ms"][q], 3) for q in ("p50", "p99")}
        summary["fixed_rate"].append(
            {
                "offered_per_s": rate,
                "direct_ms": d["latency_ms"],
                "gateway_ms": g["latency_ms"],
                "added_ms": added,
                "added_service_ms": {
                    q: round(g["service_ms"][q] - d["service_ms"][q], 3) for q in ("p50", "p99")
                },
                "gateway_cpu_ms_per_request": round(
                    1000 * fixed["gateway"].gateway_cpu_s / max(1, g["requests"]), 3
                ),
                "met": added["p50"] <= AIM_ADDED_P50_MS
                and added["p99"] <= AIM_ADDED_P99_MS
                and rate >= AIM_RATE,
            }
        )
    limited = best.get("gateway+limits")
    if limited is not None and "gateway" in best:
        off, on = best["gateway"].result, limited.result
        summary["limits"] = {
            "max_rps_off": round(off["per_s"]),
            "max_rps_on": round(on["per_s"]),
            "ratio": round(on["per_s"] / off["per_s"], 3),
            # CPU per request is steadier than throughput on a shared machine.
            "gateway_cpu_ms_per_request_off": round(
                1000 * best["gateway"].gateway_cpu_s / max(1, off["requests"]), 3
            ),
            "gateway_cpu_ms_per_request_on": round(
                1000 * limited.gateway_cpu_s / max(1, on["requests"]), 3
            ),
            "added_p50_ms": [],
        }
        for rate in args.rates:
            fixed = _pair(phases, "fixed-rate", offered_per_s=rate)
            if {"gateway", "gateway+limits"} <= fixed.keys():
                g, gl = fixed["gateway"].result, fixed["gateway+limits"].result
                summary["limits"]["added_p50_ms"].append(
                    {
                        "offered_per_s": rate,
                        "p50": round(gl["latency_ms"]["p50"] - g["latency_ms"]["p50"], 3),
                        "p99": round(gl["latency_ms"]["p99"] - g["latency_ms"]["p99"], 3),
                    }
                )
        summary["limits"]["met"] = summary["limits"]["ratio"] >= AIM_LIMITS_RPS_RATIO and all(
            a["p50"] <= AIM_LIMITS_ADDED_P50_MS for a in summary["limits"]["added_p50_ms"]
        )
    summary["streams"] = []
    for count in args.stream_counts:
        pair = _pair(phases, "streams", streams=count)
        if not {"direct", "gateway"} <= pair.keys():
            continue
        d, g = pair["direct"].result, pair["gateway"].result
        added = {q: round(g["delay_ms"][q] - d["delay_ms"][q], 3) for q in ("p50", "p99")}
        offered = count * args.chunk_rate
        kept_up = min(d["window_chunks_per_s"], g["window_chunks_per_s"]) >= KEPT_UP * offered
        summary["streams"].append(
            {
                "streams": count,
                "chunks_per_s_offered": count * args.chunk_rate,
                "direct_ms": d["delay_ms"],
                "gateway_ms": g["delay_ms"],
                "added_ms": added,
                "gateway_window_chunks_per_s": round(g["window_chunks_per_s"]),
                # Of the chunks offered in the window, the share that arrived in it: below
                # KEPT_UP, that side fell behind and its delays grow with the run's length.
                "direct_kept_up": round(d["window_chunks_per_s"] / offered, 3),
                "gateway_kept_up": round(g["window_chunks_per_s"] / offered, 3),
                "gateway_cpu_s_per_1000_chunks": round(
                    1000 * pair["gateway"].gateway_cpu_s / max(1, g["window_chunks"]), 3
                ),
                "gateway_cpu_percent": pair["gateway"].cpu_percent.get("gateway"),
                "complete": {"direct": d["outcomes"], "gateway": g["outcomes"]},
                "met": added["p99"] <= AIM_CHUNK_P99_MS and count >= AIM_STREAMS and kept_up,
            }
        )
    return summary


def _fmt(value, digits: int = 2) -> str:
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def tables(phases: list[Phase]) -> str:
    rows = [
        "| measure | target | result | p50 ms | p99 ms | max ms | CPU % gateway / stub / "
        "generator / other / machine | load avg at start |",
        "|---|---|---|---:|---:|---:|---|---|",
    ]
    for p in phases:
        r = p.result
        if p.kind == "max-rps":
            what = f"{_fmt(r['per_s'], 0)} req/s ({r['tool']}, {r['connections']} connections"
            errors = sum(r.get("errors", {}).values()) + sum(
                n for s, n in r.get("statuses", {}).items() if s != "200"
            )
            what += f", {errors} errors)"
            latency = r["latency_ms"]
        elif p.kind == "fixed-rate":
            bad = sum(n for s, n in r["statuses"].items() if s != "200")
            what = (
                f"{_fmt(r['offered_per_s'], 0)} req/s offered, {r['requests']} sent, {bad} failed"
            )
            latency = r["latency_ms"]
        else:
            complete = r["outcomes"].get("complete", 0)
            what = (
                f"{r['streams']} streams x {_fmt(r['chunk_rate'], 0)}/s: "
                f"{_fmt(r['window_chunks_per_s'], 0)} chunks/s, {complete} complete"
            )
            latency = r["delay_ms"]
        cpu = " / ".join(
            _fmt(p.cpu_percent.get(k, 0.0), 0)
            for k in ("gateway", "stub", "generator", "other", "machine")
        )
        rows.append(
            f"| {p.kind} | {p.target} | {what} | {_fmt(latency['p50'])} | "
            f"{_fmt(latency['p99'])} | {_fmt(latency['max'])} | {cpu} | {p.load} |"
        )
    return "\n".join(rows)


def verdicts(summary: dict) -> list[str]:
    lines = []
    if m := summary.get("max_rps"):
        lines.append(
            f"- Max requests/s through the gateway: {m['gateway']:,} vs {m['direct']:,} direct "
            f"(ratio {m['ratio']:.2f}); aim ≥ {AIM_RPS:,.0f}: "
            f"**{'met' if m['met'] else 'NOT met'}**"
            + ("" if m["met"] else f" (short by {AIM_RPS - m['gateway']:,.0f}/s)")
            + f". Gateway CPU {m['gateway_cpu_ms_per_request']:.3f} ms per request."
        )
    for f in summary.get("fixed_rate", []):
        a = f["added_ms"]
        scale = "" if f["offered_per_s"] >= AIM_RATE else f" (below the aim's {AIM_RATE:,.0f})"
        lines.append(
            f"- Added latency at {f['offered_per_s']:,.0f} req/s{scale}: p50 {a['p50']:+.2f} ms "
            f"(aim ≤ {AIM_ADDED_P50_MS:g}), p99 {a['p99']:+.2f} ms (aim ≤ {AIM_ADDED_P99_MS:g}): "
            f"**{'met' if f['met'] else 'NOT met'}**. Direct p50/p99 "
            f"{f['direct_ms']['p50']:.2f}/{f['direct_ms']['p99']:.2f} ms, through the gateway "
            f"{f['gateway_ms']['p50']:.2f}/{f['gateway_ms']['p99']:.2f} ms; gateway CPU "
            f"{f['gateway_cpu_ms_per_request']:.3f} ms per request."
            + (
                f" This is above the gateway's max here ({m['gateway']:,}/s): requests queue,"
                " so the figure is mostly waiting, not the gateway's added time."
                if (m := summary.get("max_rps")) and m["gateway"] < f["offered_per_s"]
                else ""
            )
        )
    if lim := summary.get("limits"):
        added = "; ".join(
            f"at {a['offered_per_s']:,.0f} req/s p50 {a['p50']:+.2f} ms, p99 {a['p99']:+.2f} ms"
            for a in lim["added_p50_ms"]
        )
        lines.append(
            f"- Limits on (three limits per request, issue 13): {lim['max_rps_on']:,} req/s vs "
            f"{lim['max_rps_off']:,} with limits off (ratio {lim['ratio']:.2f}; aim ≥ "
            f"{AIM_LIMITS_RPS_RATIO:.2f}); added latency over limits off: {added or 'not run'} "
            f"(aim p50 ≤ {AIM_LIMITS_ADDED_P50_MS:g} ms): "
            f"**{'met' if lim['met'] else 'NOT met'}**. Gateway CPU per request "
            f"{lim['gateway_cpu_ms_per_request_on']:.3f} ms with limits, "
            f"{lim['gateway_cpu_ms_per_request_off']:.3f} ms without."
        )
    for s in summary.get("streams", []):
        a = s["added_ms"]
        scale = "" if s["streams"] >= AIM_STREAMS else f" (scaled down from {AIM_STREAMS:,})"
        behind = []
        if s["direct_kept_up"] < KEPT_UP:
            behind.append(
                f"straight to the stub only {100 * s['direct_kept_up']:.0f} % of the chunks "
                "offered arrived in the window (the machine could not carry this load even "
                "without the gateway, so the difference says little)"
            )
        if s["gateway_kept_up"] < KEPT_UP:
            behind.append(
                f"through the gateway only {100 * s['gateway_kept_up']:.0f} % arrived "
                "(the gateway fell behind)"
            )
        lines.append(
            f"- {s['streams']:,} streams{scale} at {s['chunks_per_s_offered'] / s['streams']:g} "
            f"chunks/s each: added per-chunk delay p50 {a['p50']:+.2f} ms, p99 {a['p99']:+.2f} ms "
            f"(aim ≤ {AIM_CHUNK_P99_MS:g}): **{_stream_verdict(s, behind)}**"
            + (f"; {'; '.join(behind)}" if behind else "")
            + f". Direct p99 {s['direct_ms']['p99']:.2f} ms, gateway p99 "
            f"{s['gateway_ms']['p99']:.2f} ms; gateway {s['gateway_cpu_s_per_1000_chunks']:.3f} "
            f"CPU s per 1,000 chunks ({s['gateway_cpu_percent']:.0f} % of a core)."
        )
    return lines


def _stream_verdict(s: dict, behind: list[str]) -> str:
    if s["met"]:
        return "met"
    if s["streams"] < AIM_STREAMS and not behind and s["added_ms"]["p99"] <= AIM_CHUNK_P99_MS:
        return f"within the aim at this scale (the aim is at {AIM_STREAMS:,} streams)"
    return "NOT met"


def machine_text() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()[:20]
    flags = [ln for ln in lscpu if not ln.startswith("Flags:")]
    return "\n".join(
        ["    $ nproc", f"    {os.cpu_count()}", "    $ lscpu | head -20"]
        + [f"    {ln}" for ln in flags]
    )


def versions(redis_url: str) -> str:
    from importlib.metadata import version

    import redis

    server = redis.Redis.from_url(redis_url).info("server")["redis_version"]
    packages = ", ".join(f"{p} {version(p)}" for p in ("aiohttp", "uvloop"))
    wrk = (
        subprocess.run(["wrk", "-v"], capture_output=True, text=True)
        if shutil.which("wrk")
        else None
    )
    wrk_version = (wrk.stdout or wrk.stderr).split("[")[0].strip() if wrk else "no wrk"
    return f"{packages}, {wrk_version}, Redis {server}, Python {sys.version.split()[0]}"


def section(phases, summary, profile, args, command: str, took: float) -> str:
    from tests.bench.telemetry import machine

    pinning = (
        f"gateway on CPU {args.gateway_cpu}, stub and load generators on CPU {args.load_cpu} "
        "(taskset)"
        if args.gateway_cpu is not None
        else "no pinning"
    )
    lines = [
        f"## {SECTION}",
        "",
        "`hangar-gateway` (one process, uvloop) against a stub OpenAI-compatible engine",
        "that answers at once, measured against the same requests sent straight to the",
        'stub ("direct"), in one run. Real PostgreSQL rows, consumer key and published',
        "snapshot; the stub checks each worker's engine secret like a real engine. Method:",
        "`tests/bench/gateway.py`.",
        "",
        f"Machine: {machine()}; {pinning}.  ",
        f"Software: {versions(args.redis_url)}.  ",
        f"Command: `{command}` ({args.workers} workers, {args.seconds:g} s per measure; the"
        f" whole run took {took / 60:.1f} min).  ",
        f"Load average (1 / 5 / 15 min) at the start: {args.load_at_start}; at the end:"
        f" {args.load_at_end}.  ",
        f"Date: {time.strftime('%Y-%m-%d')}.",
        "",
        machine_text(),
        "",
        tables(phases),
        "",
        "max-rps: closed loop, the best round counts. fixed-rate: open loop, latency from each",
        "request's scheduled send time. streams: per-chunk delay = client receipt - the stub's",
        "send time in the chunk, over the window in which every stream is open. CPU % is of one",
        f"core (the machine has {100 * (os.cpu_count() or 1)} %); other = machine - gateway - stub"
        " - generator",
        "(other users' processes, Redis, PostgreSQL).",
        "",
        "Against the aims (issues 12 and 13):",
        "",
        *verdicts(summary),
    ]
    if profile and "self" in profile:
        lines += [
            "",
            f"py-spy on the gateway during a max-rps run ({profile['samples']} samples,"
            f" {profile['rps_while_profiled']:,} req/s while profiled), top frames by own"
            " time and by inclusive time (the loop and the module, in every sample, left out):",
            "",
            "| own % | frame | inclusive % | frame |",
            "|---:|---|---:|---|",
        ]
        # The frames every sample has (the module, the loop) say nothing: left out.
        root = profile["inclusive"][0]["percent"] if profile["inclusive"] else 100
        inclusive = [f for f in profile["inclusive"] if f["percent"] < root]
        for own, inc in zip(profile["self"][:15], inclusive[:15], strict=False):
            lines.append(
                f"| {own['percent']} | `{own['frame']}` | {inc['percent']} | `{inc['frame']}` |"
            )
    return "\n".join(lines) + "\n"


# --- main -------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.gateway", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--workers", type=int, default=2, help="ready workers (stub ports)")
    parser.add_argument("--seconds", type=float, default=10, help="measured seconds per measure")
    parser.add_argument("--warmup", type=float, default=2, help="open loop: seconds not counted")
    parser.add_argument("--rounds", type=int, default=2, help="max-rps rounds per target")
    parser.add_argument("--connections", type=int, default=64, help="max-rps connections")
    parser.add_argument(
        "--rate", default="250,1000", help="open loop: comma-separated requests/s to offer"
    )
    parser.add_argument("--streams", default="100,250,1000", help="comma-separated stream counts")
    parser.add_argument("--chunk-rate", type=float, default=20, help="chunks/s per stream")
    parser.add_argument("--ramp", type=float, default=2, help="seconds to open the streams")
    parser.add_argument("--only", choices=("max-rps", "fixed-rate", "streams"), action="append")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="gateway on CPU 0, the stub and generators on CPU 1 (taskset); on a machine "
        "other users keep busy this starves the gateway, so it is off by default",
    )
    parser.add_argument("--profile", type=Path, help="py-spy the gateway into this folder")
    parser.add_argument("--json", type=Path, help="write every result here")
    parser.add_argument("--quick", action="store_true", help="smoke check: short, small, no docs")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--database", default="hangar_bench_gateway", help="dropped, recreated")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15", help="flushed")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument(
        "--save-world",
        type=Path,
        help="write the stub's ports and secrets, the key and the "
        "published snapshot here (for --world)",
    )
    parser.add_argument(
        "--world",
        type=Path,
        help="run from a --save-world file, without the console: no "
        "Django, no PostgreSQL (a bare host with Python, aiohttp, redis-py and Redis)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.rounds, args.ramp = 2, 0.5, 1, 1
        args.streams, args.rate, args.no_docs = "50", "200", True
    args.stream_counts = sorted({int(n) for n in args.streams.split(",") if n.strip()})
    args.rates = sorted({float(n) for n in args.rate.split(",") if n.strip()})
    if args.pin and ((os.cpu_count() or 1) < 2 or not shutil.which("taskset")):
        raise SystemExit("--pin needs 2 CPUs and taskset")
    args.gateway_cpu, args.load_cpu = (0, 1) if args.pin else (None, None)
    return args


def run_benchmark(args, workdir: Path) -> tuple[list[Phase], dict | None]:
    import redis

    from tests.bench.telemetry import prepare_environment

    redis_client = redis.Redis.from_url(args.redis_url)
    if args.world:
        # A world saved by --save-world: the console's own snapshot, stored as it was
        # published, for a host without the console (no Django, no PostgreSQL).
        saved = json.loads(args.world.read_text())
        workers = [tuple(w) for w in saved["workers"]]
        env = {**os.environ, "HANGAR_REDIS_URL": args.redis_url, "PYTHONUNBUFFERED": "1"}
        env["HANGAR_GATEWAY_STALE_SECONDS"] = "3600"  # no console confirms it on that host
    else:
        print(f"preparing database {args.database} and Redis {args.redis_url} ...", flush=True)
        env = prepare_environment(args, workdir)
        env["HANGAR_LOG_LEVEL"] = "WARNING"
        workers = [(processes.free_port(), secrets.token_urlsafe(24)) for _ in range(args.workers)]
    redis_client.flushdb()
    started: list[subprocess.Popen] = []
    try:
        stub = start_stub(args, env, workdir, workers)
        started.append(stub)
        if args.world:
            key, stored = saved["key"], saved["snapshot"]
            limited_key = saved.get("limited_key", "")
            generation = json.loads(stored)["generation"]
            redis_client.set(SNAPSHOT_KEY, stored)
            redis_client.set(SNAPSHOT_KEY + ":generation-stored", generation)
            redis_client.set(SNAPSHOT_KEY + ":checked-at", time.time())
        else:
            key, limited_key = create_world_rows(workers)
            from apps.gateway import snapshot

            generation = snapshot.publish()
            if args.save_world:
                stored = redis_client.get(SNAPSHOT_KEY).decode()
                world_file = {
                    "workers": workers,
                    "key": key,
                    "limited_key": limited_key,
                    "snapshot": stored,
                }
                args.save_world.write_text(json.dumps(world_file))
                print(f"saved the world in {args.save_world}", flush=True)
        gateway, port, admin_port = start_gateway(args, env, workdir, generation)
        started.append(gateway)
        world = World(stub, gateway, workers, port, admin_port, key, generation, limited_key)
        check_world(world)
        phases: list[Phase] = []
        only = set(args.only or ("max-rps", "fixed-rate", "streams"))

        def done(phase: Phase) -> None:
            phases.append(phase)
            print(tables([phase]).splitlines()[-1], flush=True)

        print(tables([]), flush=True)
        targets = world.targets()
        if "max-rps" in only:
            for _round in range(args.rounds):
                for target in targets:
                    done(max_rps(args, world, target, workdir))
        if "fixed-rate" in only:
            for rate in args.rates:
                for target in targets:
                    done(fixed_rate(args, world, target, rate, workdir))
        if "streams" in only:
            for count in args.stream_counts:
                for target in world.targets(limits=False):
                    done(streaming(args, world, target, count, workdir))
        profile = profile_gateway(args, world, workdir) if args.profile else None
        if gateway.poll() is not None:
            raise SystemExit(
                f"the gateway exited:\n{(workdir / 'gateway.log').read_text()[-3000:]}"
            )
        return phases, profile
    finally:
        for proc in reversed(started):
            processes.stop(proc)
        with contextlib.suppress(redis.RedisError):
            redis.Redis.from_url(args.redis_url).flushdb()


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    if raw and raw[0] in SUBCOMMANDS:
        return SUBCOMMANDS[raw[0]](raw[1:])
    args = parse(raw)
    command = " ".join(["python -m tests.bench.gateway", *raw])
    signal.signal(signal.SIGTERM, _interrupt)
    _more_files()
    args.load_at_start = _load()
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="hangar-bench-gateway-"))
    failed = True
    try:
        phases, profile = run_benchmark(args, workdir)
        failed = False
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep or failed:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    took = time.monotonic() - began
    args.load_at_end = _load()
    summary = summarize(phases, args)
    print()
    print(tables(phases))
    print()
    print("\n".join(verdicts(summary)))
    if profile:
        print("\npy-spy, own time:")
        for row in profile.get("self", [])[:15]:
            print(f"  {row['percent']:5.1f} %  {row['frame']}")
        print("py-spy, inclusive:")
        for row in profile.get("inclusive", [])[:15]:
            print(f"  {row['percent']:5.1f} %  {row['frame']}")
        if "error" in profile:
            print(f"py-spy: {profile['error']}")
    print(f"took {took / 60:.1f} min; load average now {_load()}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "command": command,
                    "load_at_start": args.load_at_start,
                    "load_at_end": args.load_at_end,
                    "pinning": {"gateway": args.gateway_cpu, "load": args.load_cpu},
                    "summary": summary,
                    "phases": [asdict(p) for p in phases],
                    "profile": profile,
                },
                indent=2,
            )
        )
        print(f"wrote {args.json}")
    if not args.no_docs:
        from tests.bench.telemetry import write_docs

        write_docs(section(phases, summary, profile, args, command, took), section=SECTION)
        print(f"wrote the section {SECTION!r} of {DOCS.relative_to(ROOT)}")
    return 0


# --- subcommands --------------------------------------------------------------------------


def _stub_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.gateway stub")
    parser.add_argument("--worker", action="append", required=True, help="PORT=SECRET")
    parser.add_argument("--chunk-rate", type=float, default=20.0)
    parser.add_argument("--chunks", type=int, default=20, help="when the request has no max_tokens")
    parser.add_argument("--max-seconds", type=float, default=STUB_MAX_SECONDS)
    args = parser.parse_args(argv)
    workers = []
    for item in args.worker:
        port, _sep, secret = item.partition("=")
        if not port.isdigit() or not secret:
            parser.error(f"--worker {item!r}: expected PORT=SECRET")
        workers.append((int(port), secret))
    _more_files()
    _run(serve_stub(workers, args.chunk_rate, args.chunks, args.max_seconds))
    return 0


def _load_main(kind: str):
    def run(argv: list[str]) -> int:
        parser = argparse.ArgumentParser(prog=f"python -m tests.bench.gateway {kind}")
        parser.add_argument("--url", required=True)
        parser.add_argument("--key", required=True)
        parser.add_argument("--seconds", type=float, default=10)
        if kind == "open-loop":
            parser.add_argument("--rate", type=float, default=1000)
            parser.add_argument("--warmup", type=float, default=2)
            parser.add_argument("--connections", type=int, default=64)
        elif kind == "streams":
            parser.add_argument("--streams", type=int, default=100)
            parser.add_argument("--chunk-rate", type=float, default=20)
            parser.add_argument("--ramp", type=float, default=2)
        else:
            parser.add_argument("--connections", type=int, default=64)
        args = parser.parse_args(argv)
        if not args.url.startswith(("http://127.", "http://localhost")):
            parser.error("the load generators only talk to loopback")
        _more_files()
        if kind == "open-loop":
            _run(
                open_loop(
                    args.url, args.key, args.rate, args.seconds, args.warmup, args.connections
                )
            )
        elif kind == "streams":
            _run(
                streams(args.url, args.key, args.streams, args.chunk_rate, args.seconds, args.ramp)
            )
        else:
            _run(closed_loop(args.url, args.key, args.connections, args.seconds))
        return 0

    return run


SUBCOMMANDS = {
    "stub": _stub_main,
    "open-loop": _load_main("open-loop"),
    "streams": _load_main("streams"),
    "closed-loop": _load_main("closed-loop"),
}


if __name__ == "__main__":
    sys.exit(main())
