"""Start and stop the real processes tests talk to (Daphne, Celery, agents)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    check: Callable[[], bool],
    timeout: float = 30.0,
    what: str = "condition",
    process: subprocess.Popen | None = None,
) -> None:
    """Poll `check` until it is true; fail with `what` (and the process's output)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(
                f"{what}: the process exited with {process.returncode}:\n{read_log(process)}"
            )
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise AssertionError(
        f"timed out after {timeout} s waiting for {what}"
        + (f"\n{read_log(process)}" if process is not None else "")
    )


def read_log(process: subprocess.Popen) -> str:
    path = getattr(process, "log_path", None)
    return Path(path).read_text(errors="replace")[-4000:] if path else ""


def start(
    argv: list[str], env: dict, log_path: Path, cwd: Path = ROOT, pass_fds: tuple[int, ...] = ()
) -> subprocess.Popen:
    """Start a process in its own session so stop() can end its whole group."""
    handle = open(log_path, "ab")  # noqa: SIM115 (closed with the process)
    process = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        pass_fds=pass_fds,
    )
    process.log_path = log_path
    process.log_handle = handle
    return process


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
    handle = getattr(process, "log_handle", None)
    if handle:
        handle.close()
    return process.returncode


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def console_env(**extra: str) -> dict:
    """The environment of console processes started by tests: the test database."""
    from django.conf import settings
    from django.db import connection

    db = connection.settings_dict
    env = os.environ.copy()
    if db["ENGINE"].endswith("postgresql"):
        url = (
            f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:"
            f"{db['PORT'] or 5432}/{db['NAME']}"
        )
    else:
        url = f"sqlite:///{db['NAME']}"
    env.update(
        {
            "HANGAR_DATABASE_URL": url,
            "HANGAR_REDIS_URL": settings.REDIS_URL,
            "HANGAR_DATA_DIR": str(settings.DATA_DIR),
            "PYTHONUNBUFFERED": "1",
            # As the test's settings say (tests/conftest.py turns it off by default).
            "HANGAR_REQUIRE_2FA": settings.REQUIRE_2FA,
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    env.update(extra)
    return env
