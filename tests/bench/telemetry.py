"""Telemetry ingest and fan-out benchmark: simulated agents -> Daphne -> a browser.

    make bench-telemetry                                    # 100, 500, 1000 nodes
    python -m tests.bench.telemetry --nodes 100,500,1000 --seconds 30
    python -m tests.bench.telemetry --quick                 # smoke check, no docs

Everything is real and on this machine: a fresh PostgreSQL database
(`hangar_bench`, dropped and migrated each run), Redis database 5 (flushed
before each step), one Daphne serving console.asgi, the simulated agents
(tests/bench/swarm.py, one asyncio process per 500 nodes) and one logged-in
browser subscribed to everything.

For each node count the agents connect and say hello, then send one sample
per node per second (8 simulated GPUs each, send time in sample["ts"]). After
a warm-up, a window of `--seconds` is measured:

- ingested/s: samples the console stored, from the seq of each node's
  `hangar:latest:<node>` key at the start and end of the window;
- delivered/s: samples the browser received in the window;
- latency p50/p99/max: browser arrival time - sample["ts"], for samples sent
  in the window (same clock: one machine);
- lost: samples sent (per node, seq 1..last) that the browser never received,
  counted over the whole step after a drain; also the console's own gap
  counter (`hangar:lost_samples`);
- Daphne CPU % (of one core) and RSS, Redis CPU %, and the whole machine's.

With `--slow-command`, an administrator's `POST /api/v1/nodes/<id>/collect-facts/`
to one node (whose simulated agent runs no command worker, so the ask waits its
whole 30 s) is in flight from the start of the measured window: a request that
waits on a node must not move the stream's latency.

Results print as a table; a full run also rewrites the section "Telemetry
ingest and fan-out" of docs/benchmarks.md (other sections are kept).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import queue
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import psutil

from tests.bench.swarm import percentiles
from tests.support import processes

ROOT = processes.ROOT
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "Telemetry ingest and fan-out"
TARGET_NODES = 1000
TARGET_P99_MS = 500.0
NODES_PER_AGENT_PROCESS = 500
ASGI_APP = "console.asgi:application"


# --- child processes -------------------------------------------------------------


class Client:
    """A swarm process (agents or browser) spoken to in JSON lines."""

    def __init__(self, argv: list[str], env: dict, log_path: Path):
        self.log_path = log_path
        self.log_handle = open(log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log_handle,
            start_new_session=True,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def expect(self, what: str, timeout: float) -> dict:
        """The next message, or a clear failure naming `what` with the log's tail."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}") from None
            if line is None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise SystemExit(f"{what}: the process exited:\n{tail}")
            with contextlib.suppress(json.JSONDecodeError):
                return json.loads(line)

    def tell(self, message: dict) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()

    def stop(self, grace: float = 30.0) -> None:
        """Ask politely (close stdin), then end its process group."""
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(grace)
        processes.stop(self.process)
        self.log_handle.close()


class Processes:
    """Every process the benchmark starts, stopped on exit whatever happened."""

    def __init__(self) -> None:
        self.daphnes: list[subprocess.Popen] = []
        self.clients: list[Client] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()

    def stop_all(self) -> None:
        for client in self.clients:
            client.stop(grace=2)
        for daphne in self.daphnes:
            processes.stop(daphne)
        self.clients, self.daphnes = [], []


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


# --- environment, database, fixtures ---------------------------------------------


def prepare_environment(args: argparse.Namespace, workdir: Path) -> dict:
    """Point this process at the bench database and Redis, then set Django up."""
    redis_db = urlparse(args.redis_url).path.strip("/") or "0"
    if redis_db == "0":
        raise SystemExit(
            f"--redis-url {args.redis_url} is Redis database 0, which the benchmark would "
            "flush; name another database, e.g. redis://127.0.0.1:6379/5"
        )
    server = args.postgres.rstrip("/")
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "console.settings",
            "HANGAR_DATABASE_URL": f"{server}/{args.database}",
            "HANGAR_REDIS_URL": args.redis_url,
            "HANGAR_DATA_DIR": str(workdir),
            "HANGAR_SECRET_KEY": secrets.token_urlsafe(48),
            "HANGAR_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "HANGAR_LOG_LEVEL": "WARNING",
        }
    )
    recreate_database(server, args.database)
    import django

    django.setup()
    env = processes.console_env(HANGAR_ALLOWED_HOSTS="127.0.0.1,localhost")
    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if migrate.returncode:
        raise SystemExit(f"manage.py migrate failed on {args.database}:\n{migrate.stderr[-3000:]}")
    return env


def recreate_database(server: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    if not re.fullmatch(r"[a-z_][a-z0-9_]*_bench[a-z0-9_]*|hangar_bench", name):
        raise SystemExit(f"--database {name!r}: the benchmark drops it, so its name must say bench")
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


@dataclass
class Fixtures:
    cluster_id: int
    nodes: list[tuple[int, str]]  # (node id, credential)
    session_key: str
    admin_token: str


def create_fixtures(node_count: int) -> Fixtures:
    """A cluster of nodes with credentials and a viewer with a session, via Django."""
    from django.contrib.auth import (
        BACKEND_SESSION_KEY,
        HASH_SESSION_KEY,
        SESSION_KEY,
        get_user_model,
    )
    from django.contrib.sessions.backends.db import SessionStore

    from apps.accounts.models import RoleBinding
    from apps.inventory.models import Cluster, Node
    from apps.inventory.services import CREDENTIAL_PREFIX, sha256

    cluster = Cluster.objects.create(name="bench", description="telemetry benchmark")
    credentials = [CREDENTIAL_PREFIX + secrets.token_urlsafe(32) for _ in range(node_count)]
    # Rows with a credential hash, as enroll_node leaves them; the facts come
    # with each agent's hello, as they do in production.
    nodes = Node.objects.bulk_create(
        Node(cluster=cluster, hostname=f"bench-{i:04d}", credential_hash=sha256(c))
        for i, c in enumerate(credentials)
    )
    user = get_user_model().objects.create_user("bench-viewer", password=secrets.token_hex(16))
    RoleBinding.objects.create(role="viewer", user=user)
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    from apps.accounts.tokens import create_api_token

    admin = get_user_model().objects.create_user("bench-admin", password=secrets.token_hex(16))
    RoleBinding.objects.create(role="admin", user=admin)
    _token, admin_token = create_api_token(admin, "bench", 1)
    return Fixtures(
        cluster.pk,
        [(n.pk, c) for n, c in zip(nodes, credentials, strict=True)],
        session.session_key,
        admin_token,
    )


# --- one step --------------------------------------------------------------------


@dataclass
class Step:
    nodes: int
    gpus: int
    seconds: float
    agent_processes: int
    sent: int = 0
    received: int = 0
    lost: int = 0
    duplicates: int = 0
    console_gaps: int = 0
    ingested_per_s: float = 0.0
    delivered_per_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    daphne_cpu: float = 0.0
    daphne_cpu_peak: float = 0.0
    daphne_rss_mib: float = 0.0
    redis_cpu: float = 0.0
    postgres_cpu: float = 0.0
    clients_cpu: float = 0.0
    machine_cpu: float = 0.0
    other_cpu: float = 0.0
    send_lag_p99_ms: float = 0.0
    slow_command: str = ""  # with --slow-command: how the collect-facts request ended
    problems: list[str] = field(default_factory=list)


def _cpu_seconds(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.Error:  # ended, or not ours to read
        return 0.0
    return times.user + times.system


class Probe:
    """CPU and memory over the measured window: Daphne, Redis, PostgreSQL, the
    benchmark's own clients, and the machine (whatever else runs shows as other)."""

    def __init__(self, daphne_pids: list[int], client_pids: list[int], redis_client):
        self.daphnes = [psutil.Process(pid) for pid in daphne_pids]
        self.clients = [psutil.Process(pid) for pid in client_pids]
        self.redis = redis_client
        self.peak_cpu = 0.0
        self.peak_rss = 0

    def _redis_cpu(self) -> float:
        info = self.redis.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    @staticmethod
    def _postgres() -> dict[int, float]:
        return {
            p.pid: _cpu_seconds(p)
            for p in psutil.process_iter(["name"])
            if (p.info["name"] or "").startswith("postgres")
        }

    @staticmethod
    def _machine() -> tuple[float, float]:
        times = psutil.cpu_times()
        idle = times.idle + getattr(times, "iowait", 0.0)
        return sum(times) - idle, sum(times)

    def _snapshot(self) -> dict:
        return {
            "wall": time.monotonic(),
            "daphne": sum(_cpu_seconds(d) for d in self.daphnes),
            "clients": sum(_cpu_seconds(c) for c in self.clients),
            "redis": self._redis_cpu(),
            "postgres": self._postgres(),
            "machine": self._machine(),
        }

    def start(self) -> None:
        self.first = self._snapshot()
        for daphne in self.daphnes:
            daphne.cpu_percent(None)

    def _rss(self) -> int:
        return sum(d.memory_info().rss for d in self.daphnes)

    def tick(self) -> None:
        self.peak_cpu = max(self.peak_cpu, sum(d.cpu_percent(None) for d in self.daphnes))
        self.peak_rss = max(self.peak_rss, self._rss())

    def finish(self, step: Step) -> None:
        first, last = self.first, self._snapshot()
        elapsed = last["wall"] - first["wall"]

        def percent(key: str) -> float:
            return 100 * (last[key] - first[key]) / elapsed

        step.daphne_cpu = percent("daphne")
        step.daphne_cpu_peak = self.peak_cpu
        step.daphne_rss_mib = max(self.peak_rss, self._rss()) / 2**20
        step.clients_cpu = percent("clients")
        step.redis_cpu = percent("redis")
        postgres = sum(t - first["postgres"].get(pid, 0.0) for pid, t in last["postgres"].items())
        step.postgres_cpu = 100 * postgres / elapsed
        busy = last["machine"][0] - first["machine"][0]
        total = last["machine"][1] - first["machine"][1]
        step.machine_cpu = 100 * psutil.cpu_count() * busy / total
        step.other_cpu = max(
            0.0,
            step.machine_cpu
            - step.daphne_cpu
            - step.clients_cpu
            - step.redis_cpu
            - step.postgres_cpu,
        )


def latest_seqs(redis_client, node_ids: list[int]) -> dict[int, int]:
    from apps.telemetry import live

    raw = redis_client.mget([live.latest_key(n) for n in node_ids])
    return {n: json.loads(v)["seq"] for n, v in zip(node_ids, raw, strict=True) if v}


def swarm(role: str, **options) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tests.bench.swarm",
        role,
        *(f"--{name.replace('_', '-')}={value}" for name, value in options.items()),
    ]


def start_daphne(
    env: dict, workdir: Path, procs: Processes, label: str, count: int = 1
) -> tuple[list[subprocess.Popen], int]:
    """`count` Daphne processes on one port: with more than one they share a
    listening socket passed as a file descriptor, as supervisord's
    fcgi-program does under `make run` (deploy/supervisord.conf)."""
    port = processes.free_port()
    listener = None
    if count == 1:
        where = ["-b", "127.0.0.1", "-p", str(port)]
    else:
        listener = socket.create_server(("127.0.0.1", port), backlog=2048)
        where = ["--fd", str(listener.fileno())]
    daphnes = []
    for k in range(count):
        daphne = processes.start(
            [str(processes.BIN / "daphne"), *where, ASGI_APP],
            env,
            workdir / f"daphne-{label}-{k}.log",
            pass_fds=(listener.fileno(),) if listener else (),
        )
        procs.daphnes.append(daphne)
        daphnes.append(daphne)
    if listener is not None:
        listener.close()  # the Daphnes hold it now
    processes.wait_for(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).status == 200,
        timeout=60,
        what="Daphne to answer /healthz",
        process=daphnes[0],
    )
    return daphnes, port


class SlowCommand(threading.Thread):
    """One collect-facts request to a node that never answers: it waits 30 s."""

    def __init__(self, port: int, token: str, node_id: int):
        super().__init__(daemon=True)
        self.request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/nodes/{node_id}/collect-facts/",
            method="POST",
            headers={"Authorization": f"Bearer {token}"},
        )
        self.outcome = "still waiting"
        self.finished_at: float | None = None

    def run(self) -> None:
        began = time.time()
        try:
            with urllib.request.urlopen(self.request, timeout=120) as response:
                status = response.status
        except urllib.error.HTTPError as error:
            status = error.code
        except OSError as error:
            status = f"failed: {error}"
        self.finished_at = time.time()
        self.outcome = f"HTTP {status} after {self.finished_at - began:.1f} s"


def profile(pid: int, args: argparse.Namespace, node_count: int, workdir: Path):
    """py-spy on Daphne for the measured window: collapsed stacks, for flame graphs."""
    args.profile.mkdir(parents=True, exist_ok=True)
    options = {
        "pid": pid,
        "duration": int(args.seconds),
        "rate": 50,
        "format": "raw",
        "output": args.profile / f"daphne-{node_count}.txt",
    }
    return processes.start(
        [
            str(processes.BIN / "py-spy"),
            "record",
            "--nonblocking",
            *(f"--{name}={value}" for name, value in options.items()),
        ],
        os.environ.copy(),
        workdir / f"py-spy-{node_count}.log",
    )


def run_step(
    args: argparse.Namespace, env: dict, fixtures: Fixtures, node_count: int, workdir: Path
) -> Step:
    import redis

    from apps.telemetry import live

    step = Step(
        node_count,
        args.gpus,
        args.seconds,
        args.agent_processes or math.ceil(node_count / NODES_PER_AGENT_PROCESS),
    )
    redis_client = redis.Redis.from_url(args.redis_url)
    redis_client.flushdb()
    with Processes() as procs:
        daphnes, port = start_daphne(env, workdir, procs, str(node_count), count=args.web_processes)
        daphne = daphnes[0]

        browser_out = workdir / f"browser-{node_count}.json"
        browser = Client(
            swarm("browser", port=port, session=fixtures.session_key, out=browser_out),
            env,
            workdir / f"browser-{node_count}.log",
        )
        procs.clients.append(browser)
        browser.expect("the browser to subscribe", 60)

        chosen = fixtures.nodes[:node_count]
        loaders = []
        for k in range(step.agent_processes):
            mine = [
                {"id": node_id, "credential": credential, "phase": i / node_count}
                for i, (node_id, credential) in enumerate(chosen)
                if i % step.agent_processes == k
            ]
            path = workdir / f"agents-{node_count}-{k}.json"
            path.write_text(json.dumps(mine))
            path.chmod(0o600)
            loaders.append(
                Client(
                    swarm("agents", port=port, credentials=path, gpus=args.gpus),
                    env,
                    workdir / f"agents-{node_count}-{k}.log",
                )
            )
        procs.clients.extend(loaders)
        connect_timeout = 60 + node_count * 0.2
        connected = 0
        for loader in loaders:
            ready = loader.expect("the agents to connect", connect_timeout)
            connected += ready["connected"]
            step.problems += ready["problems"]
        if connected != node_count:
            raise SystemExit(f"only {connected} of {node_count} agents connected: {step.problems}")
        # Every hello handled (the console marks the node seen after storing facts).
        processes.wait_for(
            lambda: redis_client.hlen(live.LAST_SEEN) >= node_count,
            timeout=connect_timeout,
            what=f"the console to take {node_count} hellos",
            process=daphne,
        )

        start = time.time() + 1.0
        window = (start + args.warmup, start + args.warmup + args.seconds)
        for loader in loaders:
            loader.tell({"start": start, "stop": window[1]})
        probe = Probe(
            [d.pid for d in daphnes], [c.process.pid for c in [browser, *loaders]], redis_client
        )
        node_ids = [n for n, _ in chosen]
        time.sleep(max(0.0, window[0] - time.time()))
        seqs_before = latest_seqs(redis_client, node_ids)
        probe.start()
        slow = None
        if args.slow_command:
            slow = SlowCommand(port, fixtures.admin_token, node_ids[0])
            slow.start()
        if args.profile:
            procs.daphnes.append(profile(daphne.pid, args, node_count, workdir))
        while time.time() < window[1]:
            time.sleep(min(1.0, max(0.0, window[1] - time.time())))
            probe.tick()
        seqs_after = latest_seqs(redis_client, node_ids)
        probe.finish(step)
        if slow is not None:
            slow.join(60)
            step.slow_command = slow.outcome
            if slow.finished_at is not None and slow.finished_at < window[1]:
                step.problems.append("the slow command ended before the measured window did")
        ingested = sum(seq - seqs_before.get(node, 0) for node, seq in seqs_after.items())
        step.ingested_per_s = ingested / args.seconds

        sent: dict[int, int] = {}
        lag_p99 = 0.0
        for loader in loaders:
            result = loader.expect("the agents to finish sending", 120)
            sent.update({int(node): seq for node, seq in result["sent"].items()})
            lag_p99 = max(lag_p99, result["send_lag"]["p99"])
            step.problems += result["unexpected"] + result["closed_early"]
            if result["send_failures"]:
                step.problems.append(f"{result['send_failures']} sends failed")
        step.send_lag_p99_ms = lag_p99 * 1000

        browser.tell({"idle": 3, "deadline": 120})
        browser.expect("the browser to drain", 150)
        seen = json.loads(browser_out.read_text())
        samples = seen["samples"]
        unique = {(node, seq) for node, seq, _, _ in samples}
        step.sent = sum(sent.values())
        step.received = sum(1 for node, seq in unique if seq <= sent.get(node, 0))
        step.lost = step.sent - step.received
        step.duplicates = len(samples) - len(unique)
        step.delivered_per_s = (
            sum(1 for *_, arrived in samples if window[0] <= arrived < window[1]) / args.seconds
        )
        latencies = [
            (arrived - ts) * 1000 for _, _, ts, arrived in samples if window[0] <= ts < window[1]
        ]
        step.latency_ms = percentiles(latencies)
        step.console_gaps = sum(int(v) for v in redis_client.hvals(live.LOST))
        if seen["closed"]:
            step.problems.append(f"browser socket closed: {seen['closed']}")
        if seen["other"].get("error"):
            step.problems.append(f"browser got {seen['other']['error']} error messages")

        for loader in loaders:
            loader.tell({"exit": True})
    return step


# --- report ----------------------------------------------------------------------

COLUMNS = (
    ("nodes", "nodes"),
    ("sent", "sent"),
    ("received", "received"),
    ("lost", "lost"),
    ("ingested/s", "ingested_per_s"),
    ("delivered/s", "delivered_per_s"),
    ("p50 ms", "p50"),
    ("p99 ms", "p99"),
    ("max ms", "max"),
    ("Daphne CPU %", "daphne_cpu"),
    ("Daphne CPU ms/sample", "daphne_ms_per_sample"),
    ("Daphne RSS MiB", "daphne_rss_mib"),
    ("Redis CPU %", "redis_cpu"),
    ("PostgreSQL CPU %", "postgres_cpu"),
    ("agents+browser CPU %", "clients_cpu"),
    ("other CPU %", "other_cpu"),
    ("machine CPU %", "machine_cpu"),
)


def row(step: Step) -> list[str]:
    values = {**step.__dict__, **step.latency_ms}
    # CPU per stored sample: what one Daphne can sustain, even on a busy machine.
    values["daphne_ms_per_sample"] = 10 * step.daphne_cpu / max(step.ingested_per_s, 1e-9)
    cells = []
    for _, key in COLUMNS:
        value = values[key]
        if isinstance(value, float):
            cells.append(f"{value:.2f}" if key == "daphne_ms_per_sample" else f"{value:.0f}")
        else:
            cells.append(str(value))
    return cells


def table(steps: list[Step]) -> str:
    header = [title for title, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    lines += ["| " + " | ".join(row(s)) + " |" for s in steps]
    return "\n".join(lines)


def verdict(steps: list[Step]) -> str:
    at_target = [s for s in steps if s.nodes >= TARGET_NODES]
    if not at_target:
        return f"Target ({TARGET_NODES} nodes) not measured in this run."
    s = at_target[-1]
    met = (
        s.lost == 0
        and s.console_gaps == 0
        and s.latency_ms["p99"] < TARGET_P99_MS
        and s.delivered_per_s >= 0.98 * s.nodes
    )
    return (
        f"Target ({TARGET_NODES} nodes x {s.gpus} GPUs at 1 Hz sustained, p99 < "
        f"{TARGET_P99_MS:.0f} ms, nothing lost): **{'met' if met else 'NOT met'}** "
        f"at {s.nodes} nodes (p99 {s.latency_ms['p99']:.0f} ms, {s.lost} lost, "
        f"{s.delivered_per_s:.0f} delivered/s)."
    )


def machine() -> str:
    """CPU model, cores and RAM as /proc tells them."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    memory_kb = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    return ", ".join(
        [
            model.group(1).strip() if model else "unknown CPU",
            f"{os.cpu_count()} cores",
            f"{int(memory_kb.group(1)) / 2**20:.1f} GiB RAM" if memory_kb else "RAM unknown",
            f"Linux {platform.release()}",
            f"Python {platform.python_version()}",
        ]
    )


def versions(redis_url: str) -> str:
    from importlib.metadata import version

    import redis

    server = redis.Redis.from_url(redis_url).info("server")["redis_version"]
    packages = ", ".join(
        f"{p} {version(p)}" for p in ("Django", "channels", "channels-redis", "daphne", "Twisted")
    )
    return f"{packages}, Redis {server}"


def section(steps: list[Step], args: argparse.Namespace, command: str, took: float) -> str:
    notes = [f"- {s.nodes} nodes: {p}" for s in steps for p in s.problems[:5]]
    return "\n".join(
        [
            f"## {SECTION}",
            "",
            f"What {args.web_processes} Daphne process(es) on one port sustain: N simulated"
            " agents (8 simulated GPUs each, one",
            "sample per node per second) stream to `/ws/agent/`; one logged-in browser",
            "subscribed to everything on `/ws/telemetry/` measures latency from the",
            "agent's `sample.ts` to its own receipt, and counts every (node, seq) sent",
            "against what arrived. PostgreSQL, Redis, Daphne, agents and browser share",
            "the machine. Method and column meanings: `tests/bench/telemetry.py`.",
            "",
            f"Machine: {machine()}.  ",
            f"Software: {versions(args.redis_url)}.  ",
            f"Command: `{command}` ({args.warmup:.0f} s warm-up, {args.seconds:.0f} s measured"
            f" per step; the whole run took {took / 60:.1f} min).  ",
            f"Date: {time.strftime('%Y-%m-%d')}.",
            "",
            table(steps),
            "",
            "ingested/s: samples stored by the console per second (from the seq in each",
            "node's `hangar:latest` key); delivered/s: samples the browser received per",
            "second; latency: browser receipt - `sample.ts`; lost: sent but never",
            "received by the browser, after a drain. CPU % is of one core (a 2-core",
            "machine has 200 %); each Daphne is one Python process, so about 100 % per",
            "process is its ceiling. Daphne columns add up every Daphne process.",
            "Daphne CPU ms/sample = Daphne's CPU time per ingested sample.",
            "other CPU %: processes that are not part of the benchmark (noise).",
            "",
            verdict(steps),
            *(["", "Problems seen:", "", *notes] if notes else []),
            "",
        ]
    )


def write_docs(text: str, path: Path = DOCS, section: str = SECTION) -> None:
    """Replace a section's results, keep its hand-written "### Findings" and
    every other section (up to the next `## `)."""
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^### Findings|^## |\Z)", re.M | re.S)
    if pattern.search(current):
        updated = pattern.sub(lambda _: text + "\n", current, count=1)
    else:
        updated = current.rstrip("\n") + "\n\n" + text
    path.write_text(updated.rstrip("\n") + "\n")


# --- main ------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.telemetry", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--nodes", default="100,500,1000", help="comma-separated node counts")
    parser.add_argument("--seconds", type=float, default=30, help="measured seconds per step")
    parser.add_argument("--warmup", type=float, default=10, help="seconds before measuring")
    parser.add_argument("--gpus", type=int, default=8, help="simulated GPUs per node")
    parser.add_argument(
        "--agent-processes", type=int, default=0, help=f"0: one per {NODES_PER_AGENT_PROCESS} nodes"
    )
    parser.add_argument(
        "--web-processes",
        type=int,
        default=1,
        help="Daphne processes sharing the port (HANGAR_WEB_PROCESSES under make run)",
    )
    parser.add_argument(
        "--slow-command",
        action="store_true",
        help="one 30 s collect-facts request in flight during each measured window",
    )
    parser.add_argument("--quick", action="store_true", help="smoke check: 20 nodes, 5 s")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--database", default="hangar_bench", help="dropped and recreated")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/5", help="flushed")
    parser.add_argument(
        "--profile",
        type=Path,
        help="record Daphne with py-spy into this folder (pip install py-spy)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    if args.quick:
        args.nodes, args.seconds, args.warmup, args.no_docs = "20", 5, 2, True
    args.node_counts = sorted({int(n) for n in args.nodes.split(",") if n.strip()})
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    command = " ".join(
        ["python -m tests.bench.telemetry", *(sys.argv[1:] if argv is None else argv)]
    )
    signal.signal(signal.SIGTERM, _interrupt)
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="hangar-bench-"))
    steps: list[Step] = []
    try:
        print(f"preparing database {args.database} and Redis {args.redis_url} ...", flush=True)
        env = prepare_environment(args, workdir)
        fixtures = create_fixtures(max(args.node_counts))
        for count in args.node_counts:
            print(
                f"{count} nodes: connecting, {args.warmup:.0f} s warm-up, "
                f"{args.seconds:.0f} s measured ...",
                flush=True,
            )
            steps.append(run_step(args, env, fixtures, count, workdir))
            print(table(steps[-1:]), flush=True)
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep or not steps:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    took = time.monotonic() - began
    print()
    print(table(steps))
    print(verdict(steps))
    for s in steps:
        if s.slow_command:
            print(f"  {s.nodes} nodes: the collect-facts request ended {s.slow_command}")
        for problem in s.problems[:10]:
            print(f"  {s.nodes} nodes: {problem}")
    print(f"took {took / 60:.1f} min")
    if not args.no_docs:
        write_docs(section(steps, args, command, took))
        print(f"wrote the section {SECTION!r} of {DOCS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
