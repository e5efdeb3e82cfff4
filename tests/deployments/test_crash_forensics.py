"""A worker that keeps crashing: every run keeps its log and a named cause, and no
process it left behind survives the restart (issue: crash forensics)."""

from __future__ import annotations

import os
import sys
import textwrap

from apps.deployments.models import Worker
from apps.registry.models import Model
from tests.deployments.test_end_to_end import register
from tests.support import processes

CRASHER = textwrap.dedent("""
    import pathlib, subprocess, sys, time
    counter = pathlib.Path(sys.argv[2])
    run = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(run))
    print(f"crasher run {run} listening on {sys.argv[1]}", flush=True)
    # A child that ignores SIGTERM: the agent must kill the whole group before restarting.
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    with open(sys.argv[3], "a") as pids:
        pids.write(f"{child.pid}\\n")
    time.sleep(0.5)
    if run == 2:
        print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", flush=True)
    sys.exit(3)
""")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is gone for our purpose
        return stat.read().split(") ")[1][0] != "Z"


def test_three_crashes_give_three_runs_with_logs_causes_and_no_leftovers(
    model_root, console_worker, agent, admin_api, cluster, tmp_path
):
    script = tmp_path / "crasher.py"
    script.write_text(CRASHER)
    counter, child_pids = tmp_path / "runs", tmp_path / "children"
    version = register(admin_api, Model.objects.create(name="crasher"), "v1", model_root)
    created = admin_api.post(
        "/api/v1/deployments/",
        {
            "name": "crashy",
            "cluster": cluster.pk,
            "model_version": version.pk,
            "engine": "generic",
            "engine_args": [],
            "health_path": "/health",
            "replicas": 1,
            "port": processes.free_port(),
            "command": [sys.executable, str(script), "{port}", str(counter), str(child_pids)],
            "placement": {"mode": "auto", "gpus_per_replica": 1, "min_free_gib": 0},
        },
        format="json",
    )
    assert created.status_code == 201, created.json()
    worker_id = created.json()["workers"][0]["id"]

    def ended_runs():
        response = admin_api.get(f"/api/v1/workers/{worker_id}/runs/")
        runs = response.json()["runs"] if response.status_code == 200 else []
        ended = [r for r in runs if r["ended"] is not None]
        return ended if len(ended) >= 3 else None

    processes.wait_for(ended_runs, timeout=90, what="three crashed runs", process=agent["proc"])
    runs = ended_runs()[:3]
    assert [r["run"] for r in runs] == [1, 2, 3]
    assert [r["exit_code"] for r in runs] == [3, 3, 3]
    assert [r["cause"] for r in runs] == ["exited", "gpu-oom", "exited"]
    assert "CUDA out of memory" in runs[1]["evidence"]
    for run in (1, 2, 3):
        log = admin_api.get(f"/api/v1/workers/{worker_id}/runs/{run}/log/")
        assert log.status_code == 200
        assert f"crasher run {run} listening" in log.content.decode()
    assert (
        "CUDA out of memory"
        not in admin_api.get(f"/api/v1/workers/{worker_id}/runs/1/log/").content.decode()
    )

    worker = Worker.objects.get(pk=worker_id)
    assert worker.restarts >= 3 and worker.cause in ("exited", "gpu-oom")
    stop = admin_api.post(f"/api/v1/deployments/{created.json()['id']}/stop/")
    assert stop.status_code == 200
    processes.wait_for(
        lambda: Worker.objects.get(pk=worker_id).state == "stopped",
        timeout=60,
        what="the worker stopped",
    )
    leftovers = [int(p) for p in child_pids.read_text().split() if alive(int(p))]
    assert leftovers == []
