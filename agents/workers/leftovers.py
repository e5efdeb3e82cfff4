"""Stop the inference workers an agent left running, once the agent itself is gone.

Workers run in process groups of their own so that they survive a restart of
the agent, which re-adopts them (supervisor.py). When the whole of `make run`
ends (Ctrl-C), nothing will adopt them: `manage.py serve` calls `stop_all` after
supervisord has stopped the agent, so GPUs are not left held by a console that
no longer runs. On a GPU host under systemd nothing calls this.

Each stopped run is written down as the supervisor would (its state without a
pid, the run's end in its index), with the desired state left as it was: the
next start of the agent brings the same workers back.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from agents.workers import procs
from agents.workers.runlog import RunLogs, read_json, write_json

EVIDENCE = "stopped with the console (make run ended)"


def running_workers(state_dir: Path) -> list[dict[str, Any]]:
    """[{"worker_id", "pid", "run", "dir"}] of the workers whose recorded run is alive."""
    found = []
    for entry in sorted((Path(state_dir) / "workers").glob("*")):
        state = read_json(entry / "state.json", None)
        if not isinstance(state, dict) or not state.get("pid"):
            continue
        if procs.is_running(state["pid"], state.get("start_ticks")):
            found.append(
                {
                    "worker_id": entry.name,
                    "pid": state["pid"],
                    "run": state.get("run"),
                    "dir": entry,
                }
            )
    return found


def stop_all(state_dir: Path, grace_s: float = 20.0) -> list[dict[str, Any]]:
    """End every live worker's process group (SIGTERM, then SIGKILL after grace_s);
    returns what was stopped, for the person to be told."""
    stopped = running_workers(state_dir)
    for worker in stopped:
        state_path = worker["dir"] / "state.json"
        state = read_json(state_path, {})
        procs.end_group(worker["pid"], state.get("start_ticks"), grace_s)
        ended = time.time()
        logs = RunLogs(worker["dir"])
        entry = next((r for r in logs.index() if r.get("run") == state.get("run")), None)
        if entry is not None and entry.get("ended") is None:
            started = entry.get("started")
            entry.update(
                ended=ended,
                cause="stopped",
                evidence=EVIDENCE,
                duration=round(ended - started, 3) if started is not None else None,
            )
            logs.record(entry)
        state.update(pid=None, state="stopped", cause="stopped", evidence=EVIDENCE)
        write_json(state_path, state)
    return stopped
