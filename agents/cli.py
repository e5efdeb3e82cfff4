"""`hangar-agent` command line: enroll once, then run.

Exit codes: 0 stopped on request, 1 runtime error (console unreachable at
enrollment, no credential...), 2 bad arguments, 3 the console refused this
node's credential (a systemd unit should not restart on 3: see docs/agent.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

from agents import __version__
from agents.workers import ports

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CREDENTIAL_REFUSED = 3
WORKER_RESTART_DELAY_S = 10.0
WORKER_STOP_TIMEOUT_S = 10.0

log = logging.getLogger("hangar.agent")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and still exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# agents/accelerators.py VENDORS; kept literal so --help needs no import.
ACCELERATOR_CHOICES = ("nvidia", "ascend", "amd")


def default_state_dir() -> Path:
    if os.environ.get("HANGAR_AGENT_STATE_DIR"):
        return Path(os.environ["HANGAR_AGENT_STATE_DIR"])
    if os.geteuid() == 0:
        return Path("/var/lib/hangar-agent")
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "hangar-agent"


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError("must be between 0.1 and 3600 seconds")
    return value


def _gpu_count(text: str) -> int:
    from agents.protocol import MAX_GPUS

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= MAX_GPUS:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_GPUS}")
    return value


def _port_range(text: str) -> tuple[int, int]:
    try:
        return ports.parse_range(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _model_root(text: str) -> str:
    if not os.path.isabs(text):
        raise argparse.ArgumentTypeError(f"{text!r} must be an absolute path")
    return os.path.normpath(text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hangar-agent", description="Hangar node agent.")
    parser.add_argument("--version", action="version", version=f"hangar-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    state_help = (
        "where credential.json lives (default: $HANGAR_AGENT_STATE_DIR, else "
        "/var/lib/hangar-agent as root, else ~/.local/state/hangar-agent)"
    )
    simulate_help = "report N simulated GPUs instead of reading NVML"

    enroll = commands.add_parser("enroll", help="trade an enrollment token for a credential")
    enroll.add_argument("--console", required=True, help="console address, https://...")
    enroll.add_argument("--token", required=True, help="one-time enrollment token")
    enroll.add_argument("--state-dir", type=Path, help=state_help)
    enroll.add_argument("--simulate", type=_gpu_count, default=0, metavar="N", help=simulate_help)
    accelerator_help = "whose devices to read: nvidia (NVML), ascend (npu-smi), amd (amdsmi)"
    enroll.add_argument(
        "--accelerator", choices=ACCELERATOR_CHOICES, default="nvidia", help=accelerator_help
    )

    status = commands.add_parser(
        "status", help="the running agent's link to the console and how full its buffer is"
    )
    status.add_argument("--state-dir", type=Path, help=state_help)
    status.add_argument("--json", action="store_true", help="print health.json as it is")

    run = commands.add_parser("run", help="stream telemetry and take commands")
    run.add_argument("--state-dir", type=Path, help=state_help)
    run.add_argument("--interval", type=_interval, default=1.0, help="seconds between sweeps")
    run.add_argument(
        "--health-interval",
        type=_interval,
        default=10.0,
        help="seconds between GPU health reads (ECC, remapped rows, PCIe, NVLink; docs/health.md)",
    )
    run.add_argument("--simulate", type=_gpu_count, default=0, metavar="N", help=simulate_help)
    run.add_argument(
        "--accelerator", choices=ACCELERATOR_CHOICES, default="nvidia", help=accelerator_help
    )
    run.add_argument("--no-celery", action="store_true", help="do not start the command worker")
    run.add_argument(
        "--console",
        action="append",
        metavar="URL",
        help=(
            "a console host's address (repeatable or comma-separated), tried in turn when "
            "one is lost; default: the address enrolled with (docs/ha.md)"
        ),
    )
    run.add_argument(
        "--model-root",
        action="append",
        type=_model_root,
        metavar="DIR",
        help="a directory model files may come from (repeatable; default /srv/models)",
    )
    run.add_argument(
        "--worker-ports",
        type=_port_range,
        default=ports.DEFAULT_RANGE,
        metavar="FIRST-LAST",
        help="ports for workers whose deployment pins none (default 20000-20999)",
    )
    run.add_argument(
        "--worker-host",
        default="127.0.0.1",
        help="address inference workers listen on (default 127.0.0.1)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.state_dir = args.state_dir or default_state_dir()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    if args.command == "enroll":
        return _enroll(args)
    if args.command == "status":
        return _status(args)
    return _run(args)


def _fail(message: str, code: int = EXIT_ERROR) -> int:
    print(f"hangar-agent: {message}", file=sys.stderr)
    return code


def _enroll(args: argparse.Namespace) -> int:
    from agents.collect import Collector, open_source
    from agents.enroll import BadConsoleURL, EnrollError, check_console_url, enroll
    from agents.tasks import simulation_seed

    try:
        check_console_url(args.console)
    except BadConsoleURL as exc:
        return _fail(f"error: {exc}", EXIT_USAGE)
    collector = Collector(
        open_source(args.simulate, seed=simulation_seed(), accelerator=args.accelerator)
    )
    try:
        facts = collector.facts()
    finally:
        collector.close()
    try:
        path = enroll(args.console, args.token, args.state_dir, facts)
    except EnrollError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot write the credential into {args.state_dir}: {exc.strerror}")
    print(f"enrolled; credential written to {path}")
    return 0


# health.json is rewritten every 5 s (agents/stream.py); older means no agent runs.
HEALTH_STALE_S = 30.0


def _status(args: argparse.Namespace) -> int:
    """0: connected to the console; 1: not (or no agent running): for scripts and monitors."""
    import json
    import time

    from agents.stream import HEALTH_FILE, describe_fill

    path = args.state_dir / HEALTH_FILE
    try:
        health = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return _fail(f"no health at {path} ({exc}); is `hangar-agent run` running?")
    if args.json:
        print(json.dumps(health, indent=2))
    age = time.time() - health["updated_at"]
    if age > HEALTH_STALE_S:
        return _fail(f"{path} is {age:.0f} s old: the agent is not running")
    if health["connected"]:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(health["connected_since"]))
        line = f"connected to {health['console']} since {since}"
    else:
        away = time.time() - (health["unreachable_since"] or time.time())
        line = f"cannot reach {health['console']} for {away:.0f} s; retrying"
    if not args.json:
        print(f"{line}\n{describe_fill(health['buffer'])}")
    return 0 if health["connected"] else EXIT_ERROR


def _start_worker(args: argparse.Namespace) -> subprocess.Popen[bytes]:
    # An argument vector, never a shell: nothing here is interpreted twice.
    argv = [sys.executable, "-m", "agents.tasks", "--state-dir", str(args.state_dir)]
    argv += ["--simulate", str(args.simulate), "--with-parent"]
    return subprocess.Popen(argv)


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is not None:
        return
    worker.terminate()  # Celery's warm shutdown: finish the task in hand, then exit
    try:
        worker.wait(WORKER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def _run(args: argparse.Namespace) -> int:
    from agents.collect import Collector, open_source
    from agents.enroll import EnrollError, read_credential
    from agents.stream import (
        HEALTH_FILE,
        CredentialRefused,
        console_list,
        run_agent,
        websocket_url,
    )
    from agents.tasks import simulation_seed

    try:
        credential = read_credential(args.state_dir)
        consoles = console_list(args.console or credential["console"])
        for address in consoles:
            websocket_url(address)
    except (EnrollError, ValueError) as exc:
        return _fail(str(exc))
    from agents.workers.control import ControlServer
    from agents.workers.feed import StatusFeed
    from agents.workers.supervisor import Supervisor, SupervisorConfig

    # Inference workers are supervised here, in the main process: they must
    # have one supervisor, and this process outlives Celery worker restarts.
    feed = StatusFeed()
    config = SupervisorConfig(
        model_roots=args.model_root or ["/srv/models"],
        host=args.worker_host,
        worker_ports=args.worker_ports,
        simulate=bool(args.simulate),
        accelerator=args.accelerator,
    )
    try:
        supervisor = Supervisor(args.state_dir, config, on_status=feed.post).start()
    except OSError as exc:
        return _fail(f"cannot start the worker supervisor in {args.state_dir}: {exc}")
    try:
        control = ControlServer(args.state_dir, supervisor.handle).start()
    except (OSError, ValueError) as exc:
        # Telemetry matters more than commands: run on, and say why commands fail.
        log.error("worker commands are unavailable: %s", exc)
        control = None
    feed.snapshot = supervisor.statuses
    collector = Collector(
        open_source(args.simulate, seed=simulation_seed(), accelerator=args.accelerator),
        workers_metrics=supervisor.metrics,
        worker_host=args.worker_host,
        health_interval_s=args.health_interval,
    )
    worker = None if args.no_celery else _start_worker(args)

    async def supervise() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        watcher = asyncio.create_task(_watch_worker(args, stop)) if worker else None
        try:
            await run_agent(
                consoles,
                credential["credential"],
                collector,
                args.interval,
                stop,
                workers=feed,
                health_path=args.state_dir / HEALTH_FILE,
            )
        finally:
            if watcher:
                watcher.cancel()

    async def _watch_worker(args: argparse.Namespace, stop: asyncio.Event) -> None:
        nonlocal worker
        while not stop.is_set():
            await asyncio.sleep(1)
            if worker is not None and worker.poll() is not None:
                log.error("command worker exited (%s); restarting it", worker.returncode)
                await asyncio.sleep(WORKER_RESTART_DELAY_S)
                if not stop.is_set():
                    worker = _start_worker(args)

    log.info("hangar-agent %s starting (state dir %s)", __version__, args.state_dir)
    try:
        asyncio.run(supervise())
    except CredentialRefused as exc:
        return _fail(
            f"the console refused this node's credential ({exc}); "
            "the node was removed or its credential revoked: enroll it again",
            EXIT_CREDENTIAL_REFUSED,
        )
    finally:
        if worker is not None:
            _stop_worker(worker)
        if control is not None:
            control.close()
        supervisor.close()  # the workers keep running; the next agent re-adopts them
    log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
