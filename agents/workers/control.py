"""The local channel between the Celery process and the supervisor.

The Celery worker is a child process of the agent (so a hung task cannot
stall telemetry, and it is restarted on its own), but workers must be
supervised by exactly one process: the agent's main process, which outlives
Celery restarts and owns the state directory. So the Celery tasks forward
each command over a Unix socket, `<state-dir>/supervisor.sock` (mode 0600 in
a 0700 directory: only the agent's user can connect), one JSON request and
one JSON answer per connection.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("hangar.agent.workers")

SOCKET_NAME = "supervisor.sock"
MAX_REQUEST = 64 * 2**20  # a spec with thousands of files is a few MB
CALL_TIMEOUT_S = 180.0  # a stop waits for the worker's grace period


def socket_path(state_dir: Path | str) -> Path:
    return Path(state_dir) / SOCKET_NAME


def _read_all(sock: socket.socket, limit: int) -> bytes:
    chunks = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise ValueError("message too large")
        chunks.append(chunk)
    return b"".join(chunks)


class ControlServer:
    """Serves `handler(request) -> answer` on the socket, one thread per connection."""

    def __init__(self, state_dir: Path | str, handler: Callable[[dict], dict]) -> None:
        self.path = socket_path(state_dir)
        if len(os.fsencode(self.path)) > 100:
            raise ValueError(
                f"the state directory path is too long for a Unix socket ({self.path}); "
                "use a shorter --state-dir"
            )

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                try:
                    request = json.loads(_read_all(self.request, MAX_REQUEST))
                    if not isinstance(request, dict):
                        raise ValueError("a request is a JSON object")
                    answer = handler(request)
                except Exception as exc:
                    log.exception("bad request on the control socket")
                    answer = {"ok": False, "detail": f"bad request: {exc}", "worker": None}
                with contextlib.suppress(OSError):
                    self.request.sendall(json.dumps(answer).encode())

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by an agent that did not shut down cleanly
        self.server = Server(str(self.path), Handler)
        os.chmod(self.path, 0o600)
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="hangar-control", daemon=True
        )

    def start(self) -> ControlServer:
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def call(state_dir: Path | str, request: dict[str, Any], timeout: float = CALL_TIMEOUT_S) -> dict:
    """Send one command to the supervisor; an answer with ok=false if it is not there."""
    path = socket_path(state_dir)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps(request).encode())
            sock.shutdown(socket.SHUT_WR)
            return json.loads(_read_all(sock, MAX_REQUEST))
    except (OSError, ValueError) as exc:
        return {
            "operation_id": request.get("operation_id"),
            "ok": False,
            "detail": f"the agent's worker supervisor is not reachable ({exc}); "
            "is `hangar-agent run` running on this node?",
            "worker": None,
        }
