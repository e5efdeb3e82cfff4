"""Commands from the console: a Celery worker for this node's queue only.

Run by `hangar-agent run` as a child process:

    python -m agents.tasks --state-dir DIR [--simulate N]

The broker is the one named at enrollment (credential.json), reached as this
node's own broker identity, under its own key prefix. The worker
consumes `node.<id>` and nothing else: remote control (which would add a
broadcast queue), gossip and mingle are off, since a fleet of a thousand
agents chatting with each other on the console's Redis helps nobody.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import sys
import time
import zlib
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Queue

from agents import __version__
from agents.collect import Collector, open_source
from agents.enroll import EnrollError, read_credential
from agents.workers import control

PING = "hangar.agent.ping"
COLLECT_FACTS = "hangar.agent.collect_facts"
START_WORKER = "hangar.agent.start_worker"
STOP_WORKER = "hangar.agent.stop_worker"
RESTART_WORKER = "hangar.agent.restart_worker"
TAIL_LOGS = "hangar.agent.tail_logs"
LIST_WORKERS = "hangar.agent.list_workers"
LIST_RUNS = "hangar.agent.list_runs"
PREFLIGHT = "hangar.agent.preflight"


def simulation_seed() -> int:
    """Same seed in the stream and the worker, so simulated GPU uuids agree."""
    return zlib.crc32(socket.gethostname().encode())


def make_app(
    credential: dict[str, Any], simulate: int = 0, state_dir: Path | None = None
) -> Celery:
    app = Celery("hangar-agent", broker=credential["broker_url"], backend=credential["broker_url"])
    queue = credential["queue"]
    # Every key and channel this worker touches lives under the node's own prefix,
    # the only part of Redis its broker identity may reach (docs/agent.md).
    scoped = {"global_keyprefix": credential.get("broker_key_prefix", "")}
    app.conf.update(
        broker_transport_options=scoped,
        result_backend_transport_options=scoped,
        task_queues=[Queue(queue)],
        task_default_queue=queue,
        # A command in flight when the agent restarts is redelivered, and the
        # node takes one command at a time.
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        worker_enable_remote_control=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        # What arrives on the queue is data: never unpickle it.
        accept_content=["json"],
        result_accept_content=["json"],
        task_serializer="json",
        result_serializer="json",
        result_expires=3600,
    )
    node_id = credential["node_id"]

    @app.task(name=PING)
    def ping() -> dict[str, Any]:
        return {"node_id": node_id, "agent_version": __version__, "ts": time.time()}

    @app.task(name=COLLECT_FACTS)
    def collect_facts() -> dict[str, Any]:
        collector = Collector(open_source(simulate, seed=simulation_seed()))
        try:
            return collector.facts()
        finally:
            collector.close()

    @app.task(name=PREFLIGHT)
    def preflight(
        model_roots: list[str], expected_gpus: int | None = None, min_cuda: str | None = None
    ) -> dict[str, Any]:
        return run_preflight_here(simulate, model_roots, expected_gpus, min_cuda)

    # Worker commands are supervised in the agent's main process: forward them
    # over its control socket (docs/agent.md, "Workers").
    def forward(verb: str, operation_id: str, **args: Any) -> dict[str, Any]:
        if state_dir is None:
            detail = "this command worker was started without a state directory"
            return {"operation_id": operation_id, "ok": False, "detail": detail, "worker": None}
        return control.call(state_dir, {"verb": verb, "operation_id": operation_id, **args})

    @app.task(name=START_WORKER)
    def start_worker(operation_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        return forward("start_worker", operation_id, spec=spec)

    @app.task(name=STOP_WORKER)
    def stop_worker(operation_id: str, worker_id: int) -> dict[str, Any]:
        return forward("stop_worker", operation_id, worker_id=worker_id)

    @app.task(name=RESTART_WORKER)
    def restart_worker(operation_id: str, worker_id: int) -> dict[str, Any]:
        return forward("restart_worker", operation_id, worker_id=worker_id)

    @app.task(name=TAIL_LOGS)
    def tail_logs(
        operation_id: str, worker_id: int, lines: int = 200, run: int | None = None
    ) -> dict[str, Any]:
        return forward("tail_logs", operation_id, worker_id=worker_id, lines=lines, run=run)

    @app.task(name=LIST_WORKERS)
    def list_workers(operation_id: str) -> dict[str, Any]:
        return forward("list_workers", operation_id)

    @app.task(name=LIST_RUNS)
    def list_runs(operation_id: str, worker_id: int) -> dict[str, Any]:
        return forward("list_runs", operation_id, worker_id=worker_id)

    return app


def run_preflight_here(
    simulate: int, model_roots: list[str], expected_gpus: int | None, min_cuda: str | None
) -> dict[str, Any]:
    """The preflight checks on this host (agents/preflight.py), with fresh facts and
    one health read; the console sends only numbers and its own model roots."""
    from agents.preflight import run_preflight

    source = open_source(simulate, seed=simulation_seed())
    try:
        facts = Collector(source).facts()
        reads = source.health() if hasattr(source, "health") else []
    finally:
        source.close()
    return run_preflight(facts, reads, model_roots, expected_gpus, min_cuda)


def worker_argv(queue: str, node_id: Any) -> list[str]:
    return [
        "worker",
        "--pool=solo",  # no pool children: one process to stop, nothing to orphan
        "--concurrency=1",
        f"--queues={queue}",
        f"--hostname=hangar-agent-{node_id}@{socket.gethostname()}",
        "--without-gossip",
        "--without-mingle",
        "--loglevel=INFO",
    ]


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM us if the agent that started us dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    with_libc = ctypes.CDLL(None, use_errno=True)
    with_libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before prctl took effect
        raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agents.tasks")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--simulate", type=int, default=0)
    parser.add_argument("--with-parent", action="store_true", help="exit when the parent exits")
    args = parser.parse_args(argv)
    if args.with_parent:
        _die_with_parent()
    try:
        credential = read_credential(args.state_dir)
    except EnrollError as exc:
        print(f"hangar-agent worker: {exc}", file=sys.stderr)
        return 1
    app = make_app(credential, args.simulate, args.state_dir)
    app.worker_main(worker_argv(credential["queue"], credential["node_id"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
