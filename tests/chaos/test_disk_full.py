"""The console's data directory and a node's state directory run out of space."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time

from tests.chaos import stack
from tests.chaos.test_console_outages import recovered, warm_up
from tests.support import processes

FULL_S = stack.env_seconds("HANGAR_CHAOS_DISK_FULL_S", 10, 60)


def state_files_parse(directory) -> list[str]:
    """The JSON files the agent keeps (credential, worker records, operations) that do
    not parse: a torn write would show here."""
    broken = []
    for path in [directory / "credential.json", *directory.glob("workers/*.json")]:
        try:
            json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            broken.append(f"{path.name}: {exc}")
    operations = directory / "operations.json"
    if operations.exists():
        try:
            json.loads(operations.read_text())
        except ValueError as exc:
            broken.append(f"operations.json: {exc}")
    return broken


def test_node_state_directory_full(chaos, agent_run, record):
    """A worker started on a node whose disk is full fails with a clear error; nothing
    the agent keeps is torn; once space returns the worker starts."""
    from apps.deployments.models import Deployment, Worker
    from apps.deployments.services import create_deployment, stop_deployment

    far = chaos.agents["b"]
    disk = chaos.node_state
    with agent_run:
        warm_up(chaos)
        serving = chaos.workers_of(chaos.far_deployment)
        started = time.time()
        disk.fill()
        assert disk.available() < 64 * 1024, disk.available()
        serving_deployment = Deployment.objects.get(pk=chaos.far_deployment)
        deployment = create_deployment(
            chaos.admin,
            name="while-full",
            cluster=chaos.cluster,
            model_version=serving_deployment.model_version,
            engine="reference",
            replicas=1,
            placement={"mode": "pinned", "targets": [{"node": far.node_id, "gpus": []}]},
            port=None,
        )
        try:
            stack.wait_until(
                lambda: (
                    Worker.objects.filter(deployment=deployment, slot=0).exclude(error="").exists()
                ),
                FULL_S,  # as long as the disk stays full
                "the new worker's error",
            )
            error = Worker.objects.get(deployment=deployment, slot=0).error
        except AssertionError:
            worker = Worker.objects.filter(deployment=deployment, slot=0).first()
            error = "" if worker is None else f"(no error; state {worker.state})"
        time.sleep(max(0.0, started + FULL_S - time.time()))
        streaming = chaos.telemetry_flowing(far, started + 1)
        old_worker_alive = chaos.workers_of(chaos.far_deployment)[0][:2] == serving[0][:2]
        disk.free()
        healed = time.time()
        ready_at = None
        with contextlib.suppress(AssertionError):
            ready_at = stack.wait_until(
                lambda: Worker.objects.filter(
                    deployment=deployment, slot=0, state="ready"
                ).exists(),
                120,
                "the new worker ready once space returned",
                interval=1.0,
            )
        broken_files = state_files_parse(disk.path)
        stop_deployment(Deployment.objects.get(pk=deployment.pk))
        counts = agent_run.finish()
    clear = "space" in error.lower()
    record(
        full_s=round(healed - started, 1),
        error_shown=error,
        recovery_s=None if ready_at is None else round(ready_at - healed, 1),
        samples=counts,
        samples_lost=sum(c["lost"] for c in counts.values()),
        torn_files=broken_files,
    )
    checks = [
        record.check("the failed start says the disk is full", clear),
        record.check("telemetry kept flowing while full", streaming),
        record.check("the serving worker kept running", old_worker_alive),
        record.check("no torn state file", not broken_files),
        record.check("the worker started once space returned", ready_at is not None),
        record.check("no sample lost", counts["b"]["lost"] == 0),
    ]
    assert all(checks), record.entry


def test_console_data_directory_full(chaos, agent_run, record):
    """The console's data directory full: serving goes on, a backup fails saying why and
    leaves no partial file, and works once space returns."""
    disk = chaos.console_data
    backups = disk.path / "backups"
    backup = [str(processes.BIN / "python"), "manage.py", "backup"]
    with agent_run:
        warm_up(chaos)
        started = time.time()
        disk.fill()
        failed = subprocess.run(
            backup, cwd=processes.ROOT, env=chaos.web.env, capture_output=True, text=True
        )
        leftovers = sorted(p.name for p in backups.glob("*")) if backups.exists() else []
        time.sleep(max(0.0, started + FULL_S - time.time()))
        web_ok = stack.http_ok(f"{chaos.web_url}/healthz")
        streaming = all(chaos.telemetry_flowing(a, started + 1) for a in chaos.agents.values())
        gateway = chaos.load.between(started)
        disk.free()
        healed = time.time()
        recovery = recovered(chaos, healed)
        worked = subprocess.run(
            backup, cwd=processes.ROOT, env=chaos.web.env, capture_output=True, text=True
        )
        counts = agent_run.finish()
    message = (failed.stderr or failed.stdout).strip().splitlines()
    record(
        full_s=round(healed - started, 1),
        recovery_s=max(recovery.values()),
        error_shown=message[-1] if message else "",
        error_lines=len(message),
        partial_files=leftovers,
        requests=len(gateway),
        requests_failed=sum(1 for o in gateway if not o.ok),
        samples=counts,
        samples_lost=sum(c["lost"] for c in counts.values()),
        restarts_since_setup={p.name: p.starts - 1 for p in chaos.programs},
    )
    checks = [
        record.check("the backup failed", failed.returncode != 0),
        record.check(
            "its error says the disk is full, in one line",
            bool(message) and "space" in message[-1].lower() and "Traceback" not in failed.stderr,
        ),
        record.check("no partial backup left", not leftovers),
        record.check("web, telemetry and gateway served while full", web_ok and streaming),
        record.check("the gateway served throughout", all(o.ok for o in gateway if o.at < healed)),
        record.check("a backup works once space returns", worked.returncode == 0),
        record.check("no sample lost", sum(c["lost"] for c in counts.values()) == 0),
    ]
    assert all(checks), record.entry
