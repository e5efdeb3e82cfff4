"""`make status` / `manage.py ctl` without make run's variables, and what `make run`
does with the inference workers its agent leaves when it ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from agents.workers import leftovers, procs
from agents.workers.runlog import RunLogs, write_json
from tests.support import processes


def test_ctl_without_a_running_make_run_says_so_in_one_line(tmp_path):
    env = {"PATH": os.environ["PATH"], "HANGAR_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [str(processes.BIN / "python"), "manage.py", "ctl", "status"],
        cwd=processes.ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert f"make run is not running with the data directory {tmp_path}" in line
    assert "cannot be expanded" not in result.stderr


def worker_dir(state_dir, worker_id: int, pid: int | None, run: int = 1):
    directory = state_dir / "workers" / str(worker_id)
    directory.mkdir(parents=True)
    ticks = procs.start_ticks(pid) if pid else None
    write_json(
        directory / "state.json",
        {"desired": "running", "pid": pid, "start_ticks": ticks, "run": run, "state": "ready"},
    )
    RunLogs(directory).record({"run": run, "pid": pid, "started": time.time(), "ended": None})
    return directory


def test_the_workers_an_agent_left_are_stopped_and_written_down_as_stopped(tmp_path):
    engine = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    try:
        live = worker_dir(tmp_path, 7, engine.pid)
        worker_dir(tmp_path, 8, None)  # one that was not running

        assert [w["worker_id"] for w in leftovers.running_workers(tmp_path)] == ["7"]
        stopped = leftovers.stop_all(tmp_path, grace_s=5)

        assert [(w["worker_id"], w["pid"]) for w in stopped] == [("7", engine.pid)]
        assert engine.wait(10) is not None
        state = json.loads((live / "state.json").read_text())
        assert (state["pid"], state["state"], state["desired"]) == (None, "stopped", "running")
        [run] = RunLogs(live).index()
        assert run["cause"] == "stopped" and run["evidence"] == leftovers.EVIDENCE
        assert run["ended"] is not None
        assert leftovers.running_workers(tmp_path) == []
    finally:
        if engine.poll() is None:
            engine.kill()
