"""A whole Hangar on one machine, made of real parts the chaos suite can break.

Everything here is the suite's own: a throwaway PostgreSQL in a temporary
directory on a free port, a Redis on a free port (the shared servers on 5432 and
6379 are never touched), the console's processes (Daphne, Celery worker and
beat, `hangar-gateway`) restarted as supervisord would, two agents with
simulated GPUs (one in its own network namespace, reached over a veth pair), a
reference-engine deployment behind a route and a key, and the console's data
directory and that node's state directory on small tmpfs mounts.

This module imports no Django at import time: the suite points Django at its
own PostgreSQL and Redis first (`Stack.start`), then sets it up.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import processes

# The newest PostgreSQL installed (Debian's layout: /usr/lib/postgresql/<version>/bin).
PG_BIN = max(
    Path("/usr/lib/postgresql").glob("*/bin"),
    key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    default=Path("/usr/lib/postgresql/15/bin"),
)
HOST_ADDRESS = "10.231.7.1"  # the console's end of the veth pair
NODE_ADDRESS = "10.231.7.2"  # the partitioned node's end, in its namespace
TMPFS_SIZE = "48m"


def env_seconds(name: str, short: float, full: float) -> float:
    """A duration from the environment, else the mode's (HANGAR_CHAOS_MODE=short|full)."""
    if os.environ.get(name):
        return float(os.environ[name])
    return full if os.environ.get("HANGAR_CHAOS_MODE", "short") == "full" else short


def run(argv: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kwargs)


def wait_until(check, timeout: float, what: str, interval: float = 0.2) -> float:
    """Poll `check` until true; returns when it became true (time.time())."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return time.time()
        except Exception as exc:  # a part still down: keep polling
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} ({last_error!r})")


# --- the suite's own servers ------------------------------------------------------


class Postgres:
    """A PostgreSQL cluster of our own, in `directory`, owned by user postgres."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data = directory / "pgdata"
        self.socket_dir = directory / "pgsock"
        self.port = processes.free_port()
        self.log = directory / "postgres.log"

    def _as_postgres(self, *argv: str) -> subprocess.CompletedProcess:
        return run(["runuser", "-u", "postgres", "--", *argv])

    def init(self) -> None:
        for path in (self.directory, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.directory, "postgres")
        shutil.chown(self.socket_dir, "postgres")
        self._as_postgres(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-N"
        )
        self.log.touch()
        shutil.chown(self.log, "postgres")
        self.start()
        self._as_postgres(
            str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "hangar"
        )

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/hangar"

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.socket_dir} "
            "-c fsync=off -c max_connections=200"
        )
        self._as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
            "-w", "start",
        )  # fmt: skip

    def stop(self) -> None:
        """Down as a crash or a failover takes it: fast, every session cut off."""
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def is_up(self) -> bool:
        return (
            run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)], False)
        ).returncode == 0

    def destroy(self) -> None:
        if self.data.exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                self.stop()


class Redis:
    """A Redis of our own, without persistence (as CI's and the embedded one run)."""

    def __init__(self, directory: Path, addresses: list[str]) -> None:
        self.directory = directory
        self.port = processes.free_port()
        self.addresses = addresses
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", *self.addresses]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        argv += ["--protected-mode", "no"]
        self.proc = processes.start(argv, os.environ.copy(), self.directory / "redis.log")
        processes.wait_for(self.is_up, what="our Redis", process=self.proc)

    def is_up(self) -> bool:
        return run(["redis-cli", "-p", str(self.port), "ping"], False).stdout.strip() == "PONG"

    def stop(self) -> None:
        if self.proc is not None:
            processes.stop(self.proc, signal.SIGKILL)
            self.proc = None


class Namespace:
    """A network namespace joined to the host by a veth pair: a node we can cut off."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.name = f"hangar-chaos-{tag}"
        self.host_end, self.node_end = f"hcx{tag}", f"hcn{tag}"

    def create(self) -> None:
        run(["ip", "netns", "add", self.name])
        run(["ip", "link", "add", self.host_end, "type", "veth", "peer", "name", self.node_end])
        run(["ip", "link", "set", self.node_end, "netns", self.name])
        run(["ip", "addr", "add", f"{HOST_ADDRESS}/30", "dev", self.host_end])
        run(["ip", "link", "set", self.host_end, "up"])
        inside = ["ip", "netns", "exec", self.name]
        run([*inside, "ip", "addr", "add", f"{NODE_ADDRESS}/30", "dev", self.node_end])
        run([*inside, "ip", "link", "set", self.node_end, "up"])
        run([*inside, "ip", "link", "set", "lo", "up"])

    def cut(self) -> None:
        """The node's end goes down: the host keeps its address, the node loses the link."""
        run(["ip", "netns", "exec", self.name, "ip", "link", "set", self.node_end, "down"])

    def heal(self) -> None:
        run(["ip", "netns", "exec", self.name, "ip", "link", "set", self.node_end, "up"])

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def destroy(self) -> None:
        run(["ip", "link", "del", self.host_end], check=False)
        run(["ip", "netns", "del", self.name], check=False)


class Tmpfs:
    """A small tmpfs at `path`: a disk we can fill."""

    def __init__(self, path: Path, size: str = TMPFS_SIZE) -> None:
        self.path, self.size = path, size
        self.filler = path / ".chaos-filler"

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        run(["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755", "tmpfs", str(self.path)])

    def fill(self) -> None:
        """Write until the filesystem says no space is left (unbuffered: nothing is
        left to flush when the file is closed)."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (1 << 20, 4096, 1):
                block = b"\0" * size
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, block)
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def available(self) -> int:
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize

    def unmount(self) -> None:
        run(["umount", "-l", str(self.path)], check=False)


# --- processes, supervised ----------------------------------------------------------


@dataclass
class Supervised:
    """One console process, restarted when it exits, as supervisord's autorestart does."""

    name: str
    argv: list[str]
    env: dict
    log_dir: Path
    ready: object = None  # callable: is it up?
    autorestart: bool = True
    proc: subprocess.Popen | None = None
    starts: int = 0
    held: bool = False  # a test holds it down

    def start(self) -> None:
        self.starts += 1
        self.proc = processes.start(self.argv, self.env, self.log_dir / f"{self.name}.log")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the whole process group (a Celery worker's children too)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None:
            processes.stop(self.proc)

    def log(self) -> str:
        return (self.log_dir / f"{self.name}.log").read_text(errors="replace")


class Supervisor(threading.Thread):
    """Restarts exited processes after a second, like supervisord (startretries aside)."""

    def __init__(self, programs: list[Supervised]) -> None:
        super().__init__(name="chaos-supervisor", daemon=True)
        self.programs = programs
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            for program in self.programs:
                if program.autorestart and not program.held and not program.alive():
                    time.sleep(1.0)
                    if not program.held and not self.stopping.is_set():
                        program.start()


# --- the gateway's load -------------------------------------------------------------


@dataclass
class Outcome:
    at: float
    ok: bool
    detail: str


@dataclass
class GatewayLoad:
    """A client sending one chat completion after another through the gateway."""

    url: str
    key: str
    pause: float = 0.1
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gateway-load", daemon=True)

    def start(self) -> GatewayLoad:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _one(self) -> Outcome:
        body = json.dumps(
            {"model": "demo", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
        ).encode()
        request = urllib.request.Request(
            f"{self.url}/v1/chat/completions",
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
        )
        started = time.time()
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                answer = json.loads(response.read())
            ok = bool(answer.get("choices"))
            return Outcome(started, ok, "" if ok else "no choices")
        except urllib.error.HTTPError as exc:
            return Outcome(started, False, f"HTTP {exc.code}")
        except Exception as exc:
            return Outcome(started, False, type(exc).__name__)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.outcomes.append(self._one())
            self._stop.wait(self.pause)

    def between(self, start: float, end: float | None = None) -> list[Outcome]:
        return [o for o in list(self.outcomes) if o.at >= start and (end is None or o.at <= end)]

    def first_success_after(self, moment: float) -> float | None:
        return next((o.at for o in list(self.outcomes) if o.at >= moment and o.ok), None)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except Exception:
        return False


def make_tempdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="hangar-chaos-"))
    path.chmod(0o755)
    return path
