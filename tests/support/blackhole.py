"""Broken LDAP servers for failure-path tests.

* :class:`BlackholeServer`: listens on a free loopback port, accepts every TCP
  connection and never sends a byte (nor reads one), i.e. an LDAP server that
  hangs.  Clients must rely on their own network/operation timeouts.
* :func:`unused_port` / :func:`unused_uri`: a loopback port with nothing
  listening, i.e. an LDAP server that is down (connection refused).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading

from tests.support.slapd import free_port


def unused_port(host: str = "127.0.0.1") -> int:
    """A loopback TCP port with nothing listening on it (connects are refused)."""
    return free_port(host)


def unused_uri(host: str = "127.0.0.1") -> str:
    return f"ldap://{host}:{unused_port(host)}"


class BlackholeServer:
    """TCP server that accepts connections and never answers."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port: int | None = None
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._clients: list[socket.socket] = []

    @property
    def uri(self) -> str:
        if self.port is None:
            raise RuntimeError("blackhole server is not started")
        return f"ldap://{self.host}:{self.port}"

    @property
    def accepted(self) -> int:
        """Number of connections accepted so far (proves the client did connect)."""
        with self._lock:
            return len(self._clients)

    def start(self) -> BlackholeServer:
        if self._listener is not None:
            raise RuntimeError("blackhole server already started")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, 0))
        listener.listen(64)
        listener.setblocking(False)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="ldap-blackhole", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        assert self._listener is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                if not sel.select(timeout=0.1):
                    continue
                try:
                    conn, _addr = self._listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    return  # listener closed by stop()
                with self._lock:
                    self._clients.append(conn)  # keep it open, never read or write

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            for conn in self._clients:
                with contextlib.suppress(OSError):
                    conn.close()

    def __enter__(self) -> BlackholeServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
