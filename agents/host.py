"""Host facts and load through psutil and /etc/os-release."""

from __future__ import annotations

import ipaddress
import os
import platform
import socket
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


class HostSampler:
    """The `host` part of a SAMPLE.

    cpu_percent is measured between consecutive calls (psutil keeps the last
    reading), so a sweep never sleeps to measure CPU load.
    """

    def __init__(self, disk_path: str = "/") -> None:
        self.disk_path = disk_path
        psutil.cpu_percent(interval=None)  # prime the baseline

    def sample(self) -> dict[str, Any]:
        memory = psutil.virtual_memory()
        disk = psutil.disk_usage(self.disk_path)
        return {
            "cpu_percent": min(100.0, psutil.cpu_percent(interval=None)),
            # "used" as total - available: what a person means by used memory.
            "memory_used": memory.total - memory.available,
            "memory_total": memory.total,
            "disk_used": disk.used,
            "disk_total": disk.total,
        }
