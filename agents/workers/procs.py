"""Processes by /proc: start times, process groups, and ending a group.

A pid alone is not an identity (pids are reused), so a worker is recorded as
(pid, start time in clock ticks since boot, field 22 of /proc/<pid>/stat),
and a group's members must have started no earlier than its leader.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from dataclasses import dataclass

import psutil

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    state: str
    pgid: int
    start_ticks: int

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X")  # a zombie has exited; only its entry is left


def read_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    rest = raw[raw.rfind(")") + 2 :].split()
    try:
        return ProcStat(pid, rest[0], int(rest[2]), int(rest[19]))
    except (IndexError, ValueError):
        return None


def start_ticks(pid: int) -> int | None:
    stat = read_stat(pid)
    return None if stat is None else stat.start_ticks


def is_running(pid: int, expected_start: int | None) -> bool:
    """True while `pid` is the very process recorded (not a reused pid, not a zombie)."""
    stat = read_stat(pid)
    if stat is None or not stat.alive:
        return False
    return expected_start is None or stat.start_ticks == expected_start


def process_name(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() or None
    except OSError:
        return None


def group_members(pgid: int, not_before: int | None = None) -> list[int]:
    """Live processes of process group `pgid` that started at or after `not_before` ticks."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        stat = read_stat(int(entry.name))
        if stat is None or stat.pgid != pgid or not stat.alive:
            continue
        if not_before is not None and stat.start_ticks < not_before:
            continue
        members.append(stat.pid)
    return members


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def end_group(
    pgid: int,
    not_before: int | None,
    grace_s: float,
    reap: object = None,
    poll_s: float = 0.05,
) -> set[int]:
    """SIGTERM the group, wait up to `grace_s`, SIGKILL what is left; wait for it.

    Returns the pids that were seen in the group (for the NVML check and the
    exit classification). `reap` is called while waiting so our own child
    does not linger as a zombie (a zombie counts as gone anyway).
    """
    seen: set[int] = set()
    members = group_members(pgid, not_before)
    seen.update(members)
    if not members:
        return seen
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while members and time.monotonic() < deadline:
        time.sleep(poll_s)
        if callable(reap):
            reap()
        members = group_members(pgid, not_before)
        seen.update(members)
    if members:
        _signal_group(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while members and time.monotonic() < deadline:
            time.sleep(poll_s)
            if callable(reap):
                reap()
            members = group_members(pgid, not_before)
    return seen


def boot_seconds(ticks: int) -> float:
    return ticks / CLOCK_TICKS


def listening_sockets(pids: list[int]) -> list[tuple[str, int, int, str]]:
    """(address, port, pid, name) of every TCP listener and bound UDP socket of `pids`
    and their descendants."""
    tree: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            process = psutil.Process(pid)
            tree[pid] = process
            for child in process.children(recursive=True):
                tree[child.pid] = child
        except psutil.Error:
            continue
    found = []
    for pid, process in tree.items():
        try:
            name = process.name()
            sockets = process.net_connections(kind="inet")
        except psutil.Error:
            continue
        for conn in sockets:
            listening = conn.status == psutil.CONN_LISTEN
            bound_udp = conn.type == socket.SOCK_DGRAM and not conn.raddr
            if (listening or bound_udp) and conn.laddr:
                found.append((conn.laddr.ip, conn.laddr.port, pid, name))
    return sorted(set(found))
