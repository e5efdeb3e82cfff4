"""Ports for workers whose deployment pins none: the agent picks a free one.

The console cannot know what else listens on a node (a Jupyter, another
service); the agent can try. A worker spec with `port` 0 (protocol §4) gets
the lowest port of the agent's range (`hangar-agent run --worker-ports`,
default 20000-20999) that none of its other workers holds and that binds on the
worker's address now; the chosen port is kept with the worker (its spec on
disk), reported in its status, and reused when the worker starts again while
it is still free.
"""

from __future__ import annotations

import socket
from collections.abc import Collection

DEFAULT_RANGE = (20000, 20999)


class NoFreePort(Exception):
    """Every port of the range is taken."""


def parse_range(text: str) -> tuple[int, int]:
    """`20000-20999` -> (20000, 20999); ValueError with a reason otherwise."""
    low, sep, high = text.partition("-")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise ValueError(f"{text!r} is not a port range like 20000-20999")
    first, last = int(low), int(high)
    if not 1024 <= first <= last <= 65535:
        raise ValueError(f"{text!r}: ports go from 1024 to 65535, the first not above the last")
    return first, last


def is_free(port: int, host: str) -> bool:
    """Nothing listens on `port` at `host` (nor on every address, for 127.0.0.1).

    The probe sets SO_REUSEADDR as the engines' servers do, so connections of a
    worker that just stopped, still in TIME_WAIT, do not make its port look taken."""
    for address in {host, "0.0.0.0"}:  # noqa: S104 (a probe, closed at once)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError:
                return False
    return True


def choose(port_range: tuple[int, int], taken: Collection[int], host: str) -> int:
    first, last = port_range
    for port in range(first, last + 1):
        if port not in taken and is_free(port, host):
            return port
    raise NoFreePort(f"no free port in {first}-{last} (hangar-agent run --worker-ports)")
