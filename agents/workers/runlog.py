"""A worker's runs on disk: one log per run, and an index of how each ended.

    <worker dir>/runs/<n>.log      what run n wrote (stdout and stderr)
    <worker dir>/runs/<n>.log.1    its older part, once the log passed the cap
    <worker dir>/runs/index.json   [{run, pid, started, ended, exit_code, ...}]

The worker writes its log itself (the file is its stdout, opened O_APPEND),
so it keeps logging while the agent restarts and survives adoption. The cap
is kept by copy-and-truncate: past `cap` bytes the supervisor copies the log
to `<n>.log.1` and truncates it; thanks to O_APPEND the worker's next write
lands at the new start. Lines written between the copy and the truncation
are lost, a price logrotate's copytruncate pays too.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from agents.files import write_private

DEFAULT_CAP_BYTES = 10 * 2**20
DEFAULT_KEEP_RUNS = 10
_TAIL_READ = 256 * 1024
HIDDEN = "[engine key hidden]"


def write_json(path: Path, data: Any) -> None:
    """Atomically and private: a worker's spec carries its engine key."""
    write_private(path, json.dumps(data))


def read_json(path: Path, default: Any) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


class RunLogs:
    def __init__(
        self,
        worker_dir: Path,
        cap_bytes: int = DEFAULT_CAP_BYTES,
        keep_runs: int = DEFAULT_KEEP_RUNS,
    ) -> None:
        self.dir = worker_dir / "runs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cap_bytes = cap_bytes
        self.keep_runs = keep_runs
        # The worker's engine key: an engine that prints its settings (SGLang's
        # server_args) must not carry it into status messages and the console.
        self.secret: str | None = None
        self._lock = threading.Lock()

    def log_path(self, run: int) -> Path:
        return self.dir / f"{run}.log"

    def open_run(self, run: int) -> int:
        """A file descriptor for the new run's stdout and stderr (close it after Popen)."""
        return os.open(self.log_path(run), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)

    def note(self, run: int, text: str) -> None:
        """A line from the agent itself into a run's log (e.g. why it could not start)."""
        with open(self.log_path(run), "a") as f:
            f.write(f"[hangar-agent] {self.hide(text)}\n")

    def hide(self, text: str) -> str:
        return text.replace(self.secret, HIDDEN) if self.secret else text

    def keep_under_cap(self, run: int) -> None:
        path = self.log_path(run)
        try:
            if path.stat().st_size <= self.cap_bytes:
                return
            shutil.copyfile(path, path.with_name(path.name + ".1"))
            os.truncate(path, 0)
        except OSError:
            pass

    def tail(self, run: int, lines: int) -> list[str]:
        """The last `lines` lines of a run, from its older part too when needed."""
        out: list[str] = []
        for path in (self.log_path(run), self.dir / f"{run}.log.1"):
            out = [self.hide(line)[:1000] for line in _tail_file(path, lines - len(out))] + out
            if len(out) >= lines:
                break
        return out[-lines:] if lines > 0 else []

    # --- index ---------------------------------------------------------------

    def index(self) -> list[dict[str, Any]]:
        return read_json(self.dir / "index.json", [])

    def record(self, entry: dict[str, Any]) -> None:
        """Add or update a run's entry; drop the logs of runs past `keep_runs`."""
        with self._lock:
            runs = [r for r in self.index() if r["run"] != entry["run"]]
            runs.append(entry)
            runs.sort(key=lambda r: r["run"])
            dropped, runs = runs[: -self.keep_runs], runs[-self.keep_runs :]
            write_json(self.dir / "index.json", runs)
        for old in dropped:
            for path in (self.log_path(old["run"]), self.dir / f"{old['run']}.log.1"):
                path.unlink(missing_ok=True)


def _tail_file(path: Path, lines: int) -> list[str]:
    if lines <= 0:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - _TAIL_READ))
            data = f.read()
    except OSError:
        return []
    text = data.decode("utf-8", "replace")
    result = text.splitlines()
    if size > _TAIL_READ and result:
        result = result[1:]  # the first line is probably cut
    return result[-lines:]
