"""Real Redis, Sentinel and PostgreSQL servers of a test's own, on free loopback ports.

Used by the quick connection tests (tests/core/test_redis_sentinel.py,
tests/core/test_database_hosts.py) and by the HA harness (tests/ha/). Each server
runs in a temporary directory and is stopped, with its directory, by `close()`.
PostgreSQL refuses to run as root, so it runs as `postgres` when we are root.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.support import processes

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class Servers:
    """Every server a test started; `close()` stops them all and removes their files."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="hangar-servers-"))
        os.chmod(self.root, 0o755)
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, argv: list[str], user: str | None = None) -> subprocess.Popen:
        if user and os.geteuid() == 0:
            argv = ["runuser", "-u", user, "--", *argv]
        proc = processes.start(argv, os.environ.copy(), self.root / f"{name}.log")
        proc.name = name
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- Redis and Sentinel ---------------------------------------------------------

    def redis(self, name: str, replica_of: int | None = None) -> RedisServer:
        port = processes.free_port()
        argv = [
            shutil.which("redis-server"),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.root),
            "--dbfilename",
            f"{name}.rdb",
        ]
        if replica_of:
            argv += ["--replicaof", "127.0.0.1", str(replica_of)]
        server = RedisServer(name, port, self.start(name, argv))
        processes.wait_for(server.client().ping, what=f"Redis {name}", process=server.proc)
        return server

    def sentinel(self, name: str, master: str, master_port: int, quorum: int = 1) -> RedisServer:
        port = processes.free_port()
        config = self.root / f"{name}.conf"
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {self.root}\n"
            f"sentinel monitor {master} 127.0.0.1 {master_port} {quorum}\n"
            f"sentinel down-after-milliseconds {master} 1000\n"
            f"sentinel failover-timeout {master} 5000\n"
            f"sentinel parallel-syncs {master} 1\n"
        )
        server = RedisServer(
            name, port, self.start(name, [shutil.which("redis-sentinel"), str(config)])
        )
        processes.wait_for(server.client().ping, what=f"Sentinel {name}", process=server.proc)
        return server

    # --- PostgreSQL --------------------------------------------------------------------

    def postgres_primary(self, name: str) -> PostgresServer:
        data = self._pg_dir(name)
        self._as_postgres(
            [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
        )
        with open(data / "postgresql.conf", "a") as conf:
            conf.write("wal_level = replica\nmax_wal_senders = 5\nfsync = off\n")
        with open(data / "pg_hba.conf", "a") as hba:
            hba.write("host replication all 127.0.0.1/32 trust\n")
        return self._postgres(name, data)

    def postgres_standby(self, name: str, primary: PostgresServer) -> PostgresServer:
        data = self._pg_dir(name)
        self._as_postgres(
            [
                str(PG_BIN / "pg_basebackup"),
                "-h",
                "127.0.0.1",
                "-p",
                str(primary.port),
                "-U",
                "postgres",
                "-D",
                str(data),
                "-R",  # standby.signal and primary_conninfo
                "-X",
                "stream",
            ]
        )
        return self._postgres(name, data)

    def _pg_dir(self, name: str) -> Path:
        data = self.root / name
        data.mkdir(mode=0o700)
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
        return data

    def _as_postgres(self, argv: list[str]) -> None:
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=True, capture_output=True, timeout=120)

    def _postgres(self, name: str, data: Path) -> PostgresServer:
        port = processes.free_port()
        argv = [
            str(PG_BIN / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={data}",
        ]
        server = PostgresServer(name, port, self.start(name, argv, user="postgres"))
        processes.wait_for(server.accepts, what=f"PostgreSQL {name}", process=server.proc)
        return server

    def close(self) -> None:
        for proc in reversed(self.procs):
            processes.stop(proc, signal.SIGKILL if proc.poll() is None else signal.SIGTERM)
        shutil.rmtree(self.root, ignore_errors=True)


class RedisServer:
    def __init__(self, name: str, port: int, proc: subprocess.Popen) -> None:
        self.name, self.port, self.proc = name, port, proc

    def client(self, **options) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2, **options)

    def kill(self) -> None:
        processes.stop(self.proc, signal.SIGKILL)


class PostgresServer:
    def __init__(self, name: str, port: int, proc: subprocess.Popen) -> None:
        self.name, self.port, self.proc = name, port, proc

    def accepts(self) -> bool:
        result = subprocess.run(
            [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
            capture_output=True,
        )
        return result.returncode == 0


def wait_seconds(check, timeout: float, what: str) -> float:
    """Poll until `check()` is true; how long it took (a measurement, never asserted)."""
    started = time.monotonic()
    processes.wait_for(check, timeout=timeout, what=what)
    return time.monotonic() - started
