"""Hosts of the HA layout as network namespaces on one LAN (a bridge in the root namespace).

`Lan()` makes a bridge with 10.77.0.1/24 in the root namespace; `lan.host(name, n)`
makes a namespace with its own loopback and an `eth0` (one end of a veth pair, the
other end on the bridge) holding 10.77.0.n/24. A process of that host is started
through `host.argv([...])` (`ip netns exec NS ...`, an argv list, never a shell
string). `host.cut()` sets the host's `eth0` down inside its namespace: packets are
dropped without a reset, as when a host's cable is pulled or the host loses power;
connections to it hang until their timeouts. `lan.forward(port)` lets the hosts
reach a server of the root namespace that listens on loopback only (the shared test
PostgreSQL and Redis) at 10.77.0.1:port, through socat.

`close()` ends every process left in the namespaces, deletes them (their veths go
with them) and the bridge; the fixtures call it in their finalizers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.support import processes

SUBNET = "10.77.0"
GATEWAY = f"{SUBNET}.1"


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result


class Host:
    def __init__(self, lan: Lan, name: str, number: int) -> None:
        self.lan, self.name = lan, name
        self.netns = f"{lan.prefix}-{name}"
        self.address = f"{SUBNET}.{number}"
        self.veth = f"{lan.prefix}v{number}"  # the root namespace's end, on the bridge

    def create(self) -> None:
        lan = self.lan
        ip("netns", "add", self.netns)
        ip("link", "add", self.veth, "type", "veth", "peer", "name", f"{self.veth}p")
        ip("link", "set", f"{self.veth}p", "netns", self.netns)
        ip("link", "set", self.veth, "master", lan.bridge, "up")
        ip("link", "set", "lo", "up", netns=self.netns)
        ip("link", "set", f"{self.veth}p", "name", "eth0", netns=self.netns)
        ip("addr", "add", f"{self.address}/24", "dev", "eth0", netns=self.netns)
        ip("link", "set", "eth0", "up", netns=self.netns)

    def argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def cut(self) -> None:
        """The host's link goes down: no reset, no FIN; its peers' packets are dropped."""
        ip("link", "set", "eth0", "down", netns=self.netns)

    def pids(self) -> list[int]:
        out = ip("netns", "pids", self.netns, check=False).stdout
        return [int(pid) for pid in out.split()]

    def kill_all(self) -> None:
        """Every process still in this namespace (only the test's own are there)."""
        for _ in range(3):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)


class Lan:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.prefix = f"hha{os.getpid() % 100000}"
        self.bridge = f"{self.prefix}br"
        self.hosts: list[Host] = []
        self.forwarders: list[subprocess.Popen] = []
        ip("link", "del", self.bridge, check=False)  # left by a run of this pid that was killed
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{GATEWAY}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def host(self, name: str, number: int) -> Host:
        host = Host(self, name, number)
        self.hosts.append(host)  # before it is made: close() removes a half-made one too
        host.create()
        return host

    def forward(self, port: int) -> str:
        """127.0.0.1:port of the root namespace, reachable from the hosts; its address."""
        proc = processes.start(
            ["socat", f"TCP-LISTEN:{port},bind={GATEWAY},fork,reuseaddr",
             f"TCP:127.0.0.1:{port}"],
            os.environ.copy(),
            self.root / f"socat-{port}.log",
        )  # fmt: skip
        self.forwarders.append(proc)
        processes.wait_for(lambda: _listening(GATEWAY, port), what=f"socat on {port}", process=proc)
        return f"{GATEWAY}:{port}"

    def close(self) -> None:
        for proc in self.forwarders:
            processes.stop(proc, signal.SIGKILL)
        for host in self.hosts:
            host.kill_all()
            # The pair goes with either end; a namespace may outlive `del` for a while.
            ip("link", "del", host.veth, check=False)
            ip("netns", "del", host.netns, check=False)
        ip("link", "del", self.bridge, check=False)


def _listening(address: str, port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((address, port)) == 0
