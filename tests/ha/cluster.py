"""A PostgreSQL pair under Patroni with etcd, on loopback ports of the test's own.

etcd 3.4 (/usr/bin/etcd) is the DCS; two Patroni members each run a PostgreSQL
15 (`synchronous_mode: true`, so a commit the console was told about is on the
standby before the primary answers). Patroni and PostgreSQL run as `postgres`
(PostgreSQL refuses root) from `.ha-venv`, a virtual environment of the system's
python3 that `make ha` fills with the `ha` extra of pyproject.toml.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import urllib.error
import urllib.request
from pathlib import Path

from tests.support import processes
from tests.support.servers import PG_BIN, Servers

PATRONI = processes.ROOT / ".ha-venv" / "bin" / "patroni"
SCOPE = "hangar-ha"


class PatroniCluster:
    def __init__(self, servers: Servers, members: int = 2) -> None:
        self.servers = servers
        if os.geteuid() == 0:
            shutil.chown(servers.root, "postgres", "postgres")
        self.etcd_port = processes.free_port()
        peer = processes.free_port()
        self.etcd = servers.start(
            "etcd",
            [
                "/usr/bin/etcd",
                "--name=etcd1",
                f"--data-dir={servers.root / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=etcd1=http://127.0.0.1:{peer}",
            ],
        )
        processes.wait_for(
            lambda: _get(f"http://127.0.0.1:{self.etcd_port}/health")[0] == 200,
            what="etcd",
            process=self.etcd,
        )
        self.members = [self._member(f"pg{i}") for i in range(members)]

    def _member(self, name: str) -> dict:
        pg, api = processes.free_port(), processes.free_port()
        root = self.servers.root
        config = {
            "scope": SCOPE,
            "name": name,
            "restapi": {"listen": f"127.0.0.1:{api}", "connect_address": f"127.0.0.1:{api}"},
            "etcd3": {"hosts": f"127.0.0.1:{self.etcd_port}"},
            "bootstrap": {
                "dcs": {
                    # The smallest TTL Patroni takes; a lost primary's key expires in it.
                    "ttl": 20,
                    "loop_wait": 1,
                    "retry_timeout": 5,
                    "maximum_lag_on_failover": 1048576,
                    "synchronous_mode": True,
                    "postgresql": {"parameters": {"fsync": "off", "wal_level": "replica"}},
                },
                "pg_hba": [
                    "local all all trust",
                    "host replication all 127.0.0.1/32 trust",
                    "host all all 127.0.0.1/32 trust",
                ],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{pg}",
                "connect_address": f"127.0.0.1:{pg}",
                "data_dir": str(root / name),
                "bin_dir": str(PG_BIN),
                "pgpass": str(root / f"{name}.pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres", "password": "postgres"},
                    "replication": {"username": "postgres", "password": "postgres"},
                },
                "parameters": {"unix_socket_directories": str(root)},
            },
        }
        path = root / f"{name}.yml"
        path.write_text(json.dumps(config))  # JSON is YAML
        proc = self.servers.start(name, [str(PATRONI), str(path)], user="postgres")
        return {"name": name, "pg": pg, "api": api, "proc": proc, "data": root / name}

    def role(self, member: dict) -> str:
        """'primary', 'replica' or '' (down), as the member's REST API says."""
        if member["proc"].poll() is not None:
            return ""
        for role in ("primary", "replica"):
            if _get(f"http://127.0.0.1:{member['api']}/{role}")[0] == 200:
                return role
        return ""

    def primary(self) -> dict | None:
        found = [m for m in self.members if self.role(m) == "primary"]
        return found[0] if len(found) == 1 else None

    def wait_ready(self, timeout: float = 180) -> None:
        """One primary and a streaming synchronous standby."""

        def ready() -> bool:
            roles = sorted(self.role(m) for m in self.members)
            sync = any(_get(f"http://127.0.0.1:{m['api']}/sync")[0] == 200 for m in self.members)
            return roles == ["primary"] + ["replica"] * (len(self.members) - 1) and sync

        processes.wait_for(ready, timeout=timeout, what="a Patroni primary and sync standby")

    def database_url(self, name: str) -> str:
        hosts = ",".join(f"127.0.0.1:{m['pg']}" for m in self.members)
        return f"postgres://postgres:postgres@{hosts}/{name}?target_session_attrs=read-write"

    def kill(self, member: dict) -> None:
        """The host is gone: Patroni and its PostgreSQL end at once, without a word."""
        pid_file = member["data"] / "postmaster.pid"
        postmaster = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        processes.stop(member["proc"], signal.SIGKILL)
        # Only if that pid is still this member's postmaster (a stale file's pid may be reused).
        cmdline = Path(f"/proc/{postmaster}/cmdline") if postmaster else None
        if cmdline and cmdline.exists() and str(member["data"]) in cmdline.read_text():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(postmaster), signal.SIGKILL)

    def close(self) -> None:
        """Patroni starts PostgreSQL in a session of its own: each is ended here."""
        for member in self.members:
            self.kill(member)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""
