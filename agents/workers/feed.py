"""Worker statuses on their way to the websocket.

The supervisor's threads post every change; the stream sends what is
pending while a connection is up and, after each `hello`, a fresh snapshot
of every worker instead of whatever piled up while it was down.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

MAX_PENDING = 10_000  # far more than a node's changes between two sends


class StatusFeed:
    def __init__(self, snapshot: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        self.snapshot = snapshot or (lambda: [])
        self._lock = threading.Lock()
        self._pending: list[dict[str, Any]] = []
        self._notify: Callable[[], None] = lambda: None

    def set_notify(self, notify: Callable[[], None]) -> None:
        self._notify = notify

    def post(self, status: dict[str, Any]) -> None:
        with self._lock:
            self._pending.append(status)
            del self._pending[:-MAX_PENDING]
        self._notify()

    def take(self) -> list[dict[str, Any]]:
        with self._lock:
            taken, self._pending = self._pending, []
            return taken

    def clear(self) -> None:
        """Forget pending changes: a snapshot follows that supersedes them."""
        with self._lock:
            self._pending = []
