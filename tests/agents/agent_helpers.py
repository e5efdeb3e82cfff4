"""Helpers for the agent's tests: no Django, real sockets.

`FakeConsole` is a real `websockets` server on 127.0.0.1, run on its own
thread and event loop so tests stay plain synchronous functions and the agent
under test (in-process or a subprocess) talks to it over TCP.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import sys
import threading
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from agents import protocol

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
CREDENTIAL = "hnc_test_credential"
WAIT_S = 30.0  # generous: only ever waited on, never asserted


class FakeConsole:
    """Accepts agents like the console does and records what they send."""

    def __init__(self, credential: str = CREDENTIAL, refuse: bool = False) -> None:
        self.credential = credential
        self.refuse = refuse
        self.port = 0
        self.messages: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
        self.authorization: list[str | None] = []
        self._connections: list[ServerConnection] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = None

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(WAIT_S)

    async def _handler(self, ws: ServerConnection) -> None:
        header = ws.request.headers.get("Authorization")
        self.authorization.append(header)
        if self.refuse or header != f"Bearer {self.credential}":
            await ws.close(protocol.CLOSE_CREDENTIAL_REFUSED, "credential refused")
            return
        self._connections.append(ws)
        number = len(self._connections)
        await ws.send(json.dumps(protocol.welcome(node_id=7)))
        async for raw in ws:
            self.messages.put((number, json.loads(raw)))

    def start(self) -> FakeConsole:
        async def start() -> None:
            self._server = await serve(self._handler, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]

        self._call(start())
        return self

    def stop(self) -> None:
        """Close the listening socket and every connection, like a console going down."""

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
                self._server = None

        self._call(stop())

    def drop_connections(self) -> None:
        async def drop() -> None:
            for ws in self._connections:
                await ws.close(1011, "console restarting")

        self._call(drop())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        return len(self._connections)

    def next_message(self, timeout: float = WAIT_S) -> tuple[int, dict[str, Any]]:
        return self.messages.get(timeout=timeout)

    def wait_for(self, type_: str, timeout: float = WAIT_S) -> tuple[int, dict[str, Any]]:
        """Skip ahead to the next message of one type."""
        while True:
            number, message = self.next_message(timeout)
            if message["type"] == type_:
                return number, message

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(WAIT_S)


def agent_env(**extra: str) -> dict[str, str]:
    """Environment for an agent subprocess: this checkout importable, no proxies."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def agent_command(*args: str) -> list[str]:
    """`hangar-agent ARGS` through `python -m agents`, the same entry point."""
    return [sys.executable, "-m", "agents", *args]


def write_credential(state_dir: Path, console_url: str, **extra: Any) -> None:
    from agents.enroll import write_credential as write

    write(
        state_dir,
        {
            "console": console_url,
            "node_id": 7,
            "credential": CREDENTIAL,
            "queue": "node.7",
            "broker_url": "redis://127.0.0.1:6379/15",
            **extra,
        },
    )
