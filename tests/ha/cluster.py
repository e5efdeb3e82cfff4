"""A PostgreSQL pair under Patroni with etcd, each a host (network namespace) of the LAN.

etcd is 10.77.0.20, the members 10.77.0.21 and .22 (tests/ha/netns.py), each with
its PostgreSQL on 5432 and Patroni's REST API on 8008; the test and the console
processes reach them from the root namespace, through the bridge.

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

from tests.ha.netns import SUBNET, Lan
from tests.support import processes
from tests.support.servers import PG_BIN, Servers

PATRONI = processes.ROOT / ".ha-venv" / "bin" / "patroni"
SCOPE = "hangar-ha"
PG_PORT, API_PORT, ETCD_PORT = 5432, 8008, 2379


class PatroniCluster:
    def __init__(self, servers: Servers, lan: Lan, members: int = 2) -> None:
        self.servers, self.lan = servers, lan
        if os.geteuid() == 0:
            shutil.chown(servers.root, "postgres", "postgres")
        etcd_host = lan.host("etcd", 20)
        client = f"http://{etcd_host.address}:{ETCD_PORT}"
        peer = f"http://{etcd_host.address}:{ETCD_PORT + 1}"
        self.etcd_address = f"{etcd_host.address}:{ETCD_PORT}"
        self.etcd = servers.start(
            "etcd",
            etcd_host.argv(
                [
                    "/usr/bin/etcd",
                    "--name=etcd1",
                    f"--data-dir={servers.root / 'etcd'}",
                    f"--listen-client-urls={client}",
                    f"--advertise-client-urls={client}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=etcd1={peer}",
                ]
            ),
        )
        processes.wait_for(
            lambda: _get(f"{client}/health")[0] == 200, what="etcd", process=self.etcd
        )
        self.members = [self._member(f"pg{i}", 21 + i) for i in range(members)]

    def _member(self, name: str, number: int) -> dict:
        host = self.lan.host(name, number)
        address = host.address
        root = self.servers.root
        # Each member's own socket directory (the namespaces share the file system),
        # outside its data directory (pg_basebackup would copy the socket's lock file).
        sockets = root / f"{name}-sockets"
        sockets.mkdir()
        if os.geteuid() == 0:
            shutil.chown(sockets, "postgres", "postgres")
        config = {
            "scope": SCOPE,
            "name": name,
            "restapi": {
                "listen": f"{address}:{API_PORT}",
                "connect_address": f"{address}:{API_PORT}",
            },
            "etcd3": {"hosts": self.etcd_address},
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
                    f"host replication all {SUBNET}.0/24 trust",
                    f"host all all {SUBNET}.0/24 trust",
                ],
            },
            "postgresql": {
                "listen": f"{address}:{PG_PORT}",
                "connect_address": f"{address}:{PG_PORT}",
                "data_dir": str(root / name),
                "bin_dir": str(PG_BIN),
                "pgpass": str(root / f"{name}.pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres", "password": "postgres"},
                    "replication": {"username": "postgres", "password": "postgres"},
                },
                "parameters": {"unix_socket_directories": str(sockets)},
            },
        }
        path = root / f"{name}.yml"
        path.write_text(json.dumps(config))  # JSON is YAML
        # `ip netns exec` needs root; PostgreSQL refuses it: runuser inside the namespace.
        argv = ["runuser", "-u", "postgres", "--", str(PATRONI), str(path)]
        proc = self.servers.start(name, host.argv(argv))
        return {"name": name, "host": host, "address": address, "pg": PG_PORT,
                "api": f"{address}:{API_PORT}", "proc": proc, "data": root / name}  # fmt: skip

    def role(self, member: dict) -> str:
        """'primary', 'replica' or '' (down), as the member's REST API says."""
        if member["proc"].poll() is not None:
            return ""
        for role in ("primary", "replica"):
            if _get(f"http://{member['api']}/{role}")[0] == 200:
                return role
        return ""

    def primary(self) -> dict | None:
        found = [m for m in self.members if self.role(m) == "primary"]
        return found[0] if len(found) == 1 else None

    def wait_ready(self, timeout: float = 180) -> None:
        """One primary and a streaming synchronous standby."""

        def ready() -> bool:
            roles = sorted(self.role(m) for m in self.members)
            sync = any(_get(f"http://{m['api']}/sync")[0] == 200 for m in self.members)
            return roles == ["primary"] + ["replica"] * (len(self.members) - 1) and sync

        processes.wait_for(ready, timeout=timeout, what="a Patroni primary and sync standby")

    def database_url(self, name: str) -> str:
        hosts = ",".join(f"{m['address']}:{m['pg']}" for m in self.members)
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
