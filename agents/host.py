"""Host facts and load through psutil and /etc/os-release."""

from __future__ import annotations

import ipaddress
import os
import platform
import socket
import time
from pathlib import Path
from typing import Any

import psutil


def os_pretty_name(path: Path = Path("/etc/os-release")) -> str | None:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "PRETTY_NAME":
            return value.strip().strip("\"'") or None
    return None


def addresses() -> list[str]:
    """Non-loopback, non-link-local IP addresses of this host."""
    found: list[str] = []
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                ip = ipaddress.ip_address(entry.address.split("%", 1)[0])
            except ValueError:
                continue
            if ip.is_loopback or ip.is_link_local:
                continue
            if str(ip) not in found:
                found.append(str(ip))
    return found


def facts() -> dict[str, Any]:
    """The host part of FACTS."""
    return {
        "hostname": socket.gethostname(),
        "os": os_pretty_name(),
        "kernel": platform.release() or None,
        "cpu_count": os.cpu_count(),
        "memory_total": psutil.virtual_memory().total,
        "addresses": addresses(),
    }


# Host memory and disk change slowly next to a 1 Hz sweep, and psutil's
# virtual_memory() + cpu_percent() were a third of a sweep's CPU on an H200
# (issue 16): memory and disk are re-read this often, CPU load every sweep
# from one read of /proc/stat.
HOST_SLOW_INTERVAL_S = 5.0
_PROC_STAT = "/proc/stat"


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs, from the first line of /proc/stat."""
    try:
        with open(_PROC_STAT, "rb") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values)
    return total - idle, total


class HostSampler:
    """The `host` part of a SAMPLE.

    cpu_percent is measured between consecutive calls, so a sweep never sleeps
    to measure CPU load. Where /proc/stat cannot be read, psutil does it.
    """

    def __init__(self, disk_path: str = "/", slow_interval_s: float = HOST_SLOW_INTERVAL_S) -> None:
        self.disk_path = disk_path
        self.slow_interval_s = slow_interval_s
        self._slow: dict[str, Any] | None = None
        self._slow_at = 0.0
        self._cpu = _cpu_times()
        if self._cpu is None:
            psutil.cpu_percent(interval=None)  # prime psutil's baseline instead

    def _cpu_percent(self) -> float:
        now = _cpu_times() if self._cpu is not None else None
        if now is None:
            return min(100.0, psutil.cpu_percent(interval=None))
        busy, total = now[0] - self._cpu[0], now[1] - self._cpu[1]
        self._cpu = now
        return 0.0 if total <= 0 else round(min(100.0, max(0.0, 100.0 * busy / total)), 1)

    def _memory_and_disk(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._slow is None or now - self._slow_at >= self.slow_interval_s:
            memory = psutil.virtual_memory()
            disk = psutil.disk_usage(self.disk_path)
            self._slow = {
                # "used" as total - available: what a person means by used memory.
                "memory_used": memory.total - memory.available,
                "memory_total": memory.total,
                "disk_used": disk.used,
                "disk_total": disk.total,
            }
            self._slow_at = now
        return self._slow

    def sample(self) -> dict[str, Any]:
        return {"cpu_percent": self._cpu_percent(), **self._memory_and_disk()}
