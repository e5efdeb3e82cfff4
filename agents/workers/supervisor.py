"""The supervisor: starts, watches, restarts and re-adopts a node's workers.

It lives in the agent's main process, one thread per worker (a worker's
life is mostly waiting: on its health URL, its exit, a backoff). Commands
from the console arrive through `Supervisor.handle` (called by the control
socket, agents/workers/control.py) and are applied one at a time.

Disk layout per worker, `<state-dir>/workers/<worker id>/`:

    spec.json      the WORKER_SPEC last accepted (mode 0600: it holds the engine key)
    api-key        the worker's engine key, mode 0600, for engines that read a file
    state.json     desired state, pid, process start time, run, restarts...
    runs/          one log per run and the runs index (agents/workers/runlog.py)

and for the node, `<state-dir>/verified/<model key>.json`: which model files
were verified, with their stamps (verify.VerifiedRecords), shared by every
worker of the same files. Workers of one model key verify one at a time (a
lock per key), so replicas started together hash the files once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import agents
from agents import protocol
from agents.accelerators import pin_environment
from agents.files import write_private
from agents.workers import engines, gpu_release, ports, procs, verify
from agents.workers.exits import classify_exit, read_kernel_log
from agents.workers.latency import ProbeWindow, PrometheusWindow
from agents.workers.runlog import RunLogs, read_json, write_json

log = logging.getLogger("hangar.agent.workers")
# Health checks and scrapes go to the worker on this node (probe_address):
# never through an HTTP proxy from the environment.
_LOCAL_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))

ACTIVE_STATES = frozenset(
    {"pending", "fetching", "verifying", "starting", "ready", "unhealthy", "crashloop"}
)
MUTATING_VERBS = frozenset({"start_worker", "stop_worker", "restart_worker"})
READ_VERBS = frozenset({"tail_logs", "list_workers", "list_runs"})
MAX_OPERATIONS = 1000
MAX_TAIL_LINES = protocol.MAX_TAIL_LINES
LAST_LOG_LINES = protocol.MAX_LOG_LINES


def probe_address(host: str) -> str:
    """Where the node itself reaches a worker listening on `host`: that address, or
    loopback for a wildcard bind. An engine bound to a LAN address alone
    (`--worker-host 10.20.0.7`) does not answer on 127.0.0.1."""
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 (comparing, not binding)
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


@dataclass
class SupervisorConfig:
    model_roots: list[str] = field(default_factory=lambda: ["/srv/models"])
    host: str = "127.0.0.1"  # where workers listen, and where health checks reach them
    worker_ports: tuple[int, int] = ports.DEFAULT_RANGE  # for specs with port 0 (ports.py)
    simulate: bool = False  # simulated GPUs: nothing holds them (no NVML)
    # Whose runtime the workers use: picks the variable that pins their devices
    # (agents/accelerators.py VENDORS).
    accelerator: str = "nvidia"
    health_interval_s: float = 2.0
    startup_health_interval_s: float = 0.25
    health_timeout_s: float = 2.0
    unhealthy_after: int = 3  # failed checks in a row before ready -> unhealthy
    metrics_interval_s: float = 5.0
    latency_window_s: float = 60.0
    tick_s: float = 0.25
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    crashloop_crashes: int = 5
    crashloop_window_s: float = 600.0
    fast_crash_s: float = 60.0  # a run shorter than this that crashes is a "fast" crash
    stop_grace_s: float = 20.0
    gpu_release_wait_s: float = 30.0
    log_cap_bytes: int = 10 * 2**20
    keep_runs: int = 10
    # For tests: a source of GPU compute processes instead of NVML.
    gpu_processes: Callable[[Collection[int]], list[gpu_release.GpuProcess]] | None = None


class OperationLog:
    """Results of completed commands by operation id, on disk, the last 1000."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, dict[str, Any]] = dict(read_json(path, []))

    def get(self, operation_id: str) -> dict[str, Any] | None:
        return self._entries.get(operation_id)

    def put(self, operation_id: str, result: dict[str, Any]) -> None:
        self._entries[operation_id] = result
        while len(self._entries) > MAX_OPERATIONS:
            del self._entries[next(iter(self._entries))]
        write_json(self.path, list(self._entries.items()))


def _result(operation_id: str, ok: bool, detail: str, worker: Any = None, **extra: Any):
    return {"operation_id": operation_id, "ok": ok, "detail": detail, "worker": worker, **extra}


class Supervisor:
    def __init__(
        self,
        state_dir: Path | str,
        config: SupervisorConfig | None = None,
        on_status: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.workers_dir = self.state_dir / "workers"
        self.workers_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.config = config or SupervisorConfig()
        self.on_status = on_status or (lambda status: None)
        self.runners: dict[int, WorkerRunner] = {}
        self.commands = threading.RLock()
        self.operations = OperationLog(self.state_dir / "operations.json")
        self._nvml: gpu_release.NvmlProcesses | None = None
        self._nvml_lock = threading.Lock()
        self.verified = verify.VerifiedRecords(self.state_dir / "verified")
        self._verification_locks: dict[str, threading.Lock] = {}
        self._verification_locks_guard = threading.Lock()

    # --- life -------------------------------------------------------------------

    def start(self) -> Supervisor:
        """Re-adopt what the state directory knows about; resume desired workers."""
        with self.commands:
            for entry in sorted(self.workers_dir.iterdir()):
                spec = read_json(entry / "spec.json", None)
                if not isinstance(spec, dict):
                    continue
                try:
                    runner = WorkerRunner(self, spec, read_json(entry / "state.json", {}))
                except (KeyError, TypeError, ValueError):
                    log.exception("worker directory %s is unreadable; skipped", entry)
                    continue
                self.runners[runner.id] = runner
                runner.resume()
        return self

    def close(self) -> None:
        """Stop supervising, leave the workers running: a new agent re-adopts them."""
        with self.commands:
            for runner in self.runners.values():
                runner.detach()
        if self._nvml is not None:
            self._nvml.close()

    # --- commands ---------------------------------------------------------------

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """One command from the console (through the control socket)."""
        verb = request.get("verb")
        operation_id = request.get("operation_id")
        if type(operation_id) is not str or not 1 <= len(operation_id) <= 64:
            return _result(str(operation_id), False, "operation_id must be a string of 1..64")
        if verb not in MUTATING_VERBS | READ_VERBS:
            return _result(operation_id, False, f"unknown command {verb!r}")
        with self.commands:
            if verb in MUTATING_VERBS:
                recorded = self.operations.get(operation_id)
                if recorded is not None:
                    return recorded
            try:
                result = getattr(self, f"_{verb}")(operation_id, request)
            except Exception as exc:  # a bug must answer, not hang the console's task
                log.exception("command %s failed", verb)
                result = _result(operation_id, False, f"the agent failed: {exc}")
            if verb in MUTATING_VERBS:
                try:
                    self.operations.put(operation_id, result)
                except OSError as exc:  # the answer still goes back; a repeat acts again
                    log.error("cannot record operation %s: %s", operation_id, exc)
            return result

    def key_file(self, worker_id: int) -> Path:
        return self.workers_dir / str(worker_id) / "api-key"

    def _worker_id(self, request: dict[str, Any]) -> int:
        worker_id = request.get("worker_id")
        if type(worker_id) is not int or worker_id < 1:
            raise ValueError("worker_id must be a positive integer")
        return worker_id

    def _start_worker(self, operation_id: str, request: dict[str, Any]) -> dict[str, Any]:
        try:
            spec = protocol.validate_worker_spec(request.get("spec"))
            engines.build_argv(spec, self.config.host, str(self.key_file(spec["worker_id"])))
        except (protocol.ProtocolError, engines.EngineArgsError) as exc:
            return _result(operation_id, False, f"invalid worker spec: {exc}")
        runner = self.runners.get(spec["worker_id"])
        if runner is not None and runner.active:
            if spec["port"] == 0:  # "any port": the one this worker chose is as good
                spec = {**spec, "port": runner.spec["port"]}
            if runner.spec == spec:
                return _result(operation_id, True, "already running", runner.snapshot())
            return _result(
                operation_id,
                False,
                f"worker {spec['worker_id']} runs with a different spec; stop it first",
                runner.snapshot(),
            )
        try:
            if runner is None:
                runner = WorkerRunner(self, spec, {})
                self.runners[runner.id] = runner
            accepted = runner.start(spec, operation_id)
        except OSError as exc:
            return self._refuse_start(operation_id, spec, runner, exc)
        return _result(operation_id, True, "accepted", accepted)

    def _refuse_start(
        self, operation_id: str, spec: dict[str, Any], runner: WorkerRunner | None, exc: OSError
    ) -> dict[str, Any]:
        """A start the node cannot keep on disk (its state directory full or unwritable).

        The answer to the task alone would be lost: nothing reads it. So the worker's
        status says why, which the console shows on the worker and which makes its
        reconcile ask again (apps/deployments/services.reconcile) until space returns.
        """
        error = (
            f"cannot start: the agent cannot write to its state directory ({exc.strerror or exc})"
        )
        log.error("worker %s: %s", spec["worker_id"], error)
        if runner is not None:
            status = runner.refuse(operation_id, error)
        else:  # not even its directory could be made
            status = WorkerRunner.status_of(
                spec, {}, state="pending", operation_id=operation_id, error=error
            )
            self.on_status(status)
        return _result(operation_id, False, error, status)

    def _stop_worker(self, operation_id: str, request: dict[str, Any]) -> dict[str, Any]:
        runner = self.runners.get(self._worker_id(request))
        if runner is None:
            return _result(operation_id, True, "no such worker on this node")
        runner.stop(operation_id)
        return _result(operation_id, True, "stopped", runner.snapshot())

    def _restart_worker(self, operation_id: str, request: dict[str, Any]) -> dict[str, Any]:
        runner = self.runners.get(self._worker_id(request))
        if runner is None:
            return _result(operation_id, False, "no such worker on this node")
        runner.stop(operation_id)
        try:
            runner.start(runner.spec, operation_id)
        except OSError as exc:
            return self._refuse_start(operation_id, runner.spec, runner, exc)
        return _result(operation_id, True, "restarted", runner.snapshot())

    def _tail_logs(self, operation_id: str, request: dict[str, Any]) -> dict[str, Any]:
        runner = self.runners.get(self._worker_id(request))
        lines = request.get("lines", 200)
        run = request.get("run")
        if type(lines) is not int or not 1 <= lines <= MAX_TAIL_LINES:
            return _result(operation_id, False, f"lines must be 1..{MAX_TAIL_LINES}")
        if runner is None:
            return _result(operation_id, False, "no such worker on this node", lines=[], run=None)
        run = runner.run if run is None else run
        if type(run) is not int or not 0 <= run <= runner.run:
            return _result(operation_id, False, f"no run {run!r}", runner.snapshot())
        return _result(
            operation_id, True, "", runner.snapshot(), lines=runner.logs.tail(run, lines), run=run
        )

    def _list_workers(self, operation_id: str, request: dict[str, Any]) -> dict[str, Any]:
        return _result(operation_id, True, "", None, workers=self.statuses())

    def _list_runs(self, operation_id: str, request: dict[str, Any]) -> dict[str, Any]:
        runner = self.runners.get(self._worker_id(request))
        if runner is None:
            return _result(operation_id, False, "no such worker on this node", runs=[])
        return _result(operation_id, True, "", runner.snapshot(), runs=runner.logs.index())

    # --- what the stream reads --------------------------------------------------

    def statuses(self) -> list[dict[str, Any]]:
        return [r.snapshot() for r in list(self.runners.values())]

    def metrics(self) -> list[dict[str, Any]]:
        """WORKER_METRICS of every ready (or unhealthy) worker, for the telemetry sample."""
        return [m for r in list(self.runners.values()) if (m := r.metrics()) is not None]

    # --- model verification -----------------------------------------------------

    def verification_lock(self, key: str) -> threading.Lock:
        """One lock per model key: the node hashes the same files once at a time."""
        with self._verification_locks_guard:
            return self._verification_locks.setdefault(key, threading.Lock())

    # --- GPUs -------------------------------------------------------------------

    def gpu_processes(self, gpus: Collection[int]) -> list[gpu_release.GpuProcess]:
        if self.config.gpu_processes is not None:
            return self.config.gpu_processes(gpus)
        if self.config.simulate:
            return gpu_release.simulated_processes(gpus)
        try:
            with self._nvml_lock:
                if self._nvml is None:
                    self._nvml = gpu_release.NvmlProcesses()
                return self._nvml(gpus)
        except Exception as exc:  # no driver, lost GPU: the check cannot be made
            log.warning("cannot list GPU processes through NVML (%s); not waiting", exc)
            return []

    def ports_in_use(self, exclude: int) -> set[int]:
        """Ports of the other workers meant to run: not to be handed out again."""
        return {
            r.spec["port"]
            for r in self.runners.values()
            if r.id != exclude and r.desired == "running" and isinstance(r.spec, dict)
        }

    def hangar_pids(self, exclude: int) -> set[int]:
        pids: set[int] = set()
        for runner in list(self.runners.values()):
            if runner.id != exclude and runner.pid is not None:
                pids.update(procs.group_members(runner.pid, runner.start_ticks))
        return pids


def _current_stamps(model: dict[str, Any], roots: list[str]) -> dict[str, list[int]] | None:
    """The model files' stamps now, None when they cannot be read (verify_model says why)."""
    try:
        return verify.file_stamps(verify.check_model_dir(model["path"], roots), model["files"])
    except (verify.VerificationError, OSError):
        return None


class WorkerRunner:
    """One worker: its spec, its current run, and the thread that watches it."""

    def __init__(self, supervisor: Supervisor, spec: dict[str, Any], saved: dict[str, Any]):
        self.sup = supervisor
        self.cfg = supervisor.config
        # A spec from before engine keys has none: the worker runs without one.
        self.spec = {**spec, "api_key": spec.get("api_key")}
        self.id: int = spec["worker_id"]
        self.dir = supervisor.workers_dir / str(self.id)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.key_file = supervisor.key_file(self.id)
        self.logs = RunLogs(self.dir, self.cfg.log_cap_bytes, self.cfg.keep_runs)
        self.logs.secret = self.spec["api_key"]
        self._status_lock = threading.Lock()
        self._persist_lock = threading.Lock()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.detaching = False
        self.desired: str = saved.get("desired", "stopped")
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = saved.get("pid")
        self.start_ticks: int | None = saved.get("start_ticks")
        self.run: int = saved.get("run", 0)
        self.restarts: int = saved.get("restarts", 0)
        self.run_started: float | None = saved.get("run_started")
        self.was_ready: bool = saved.get("was_ready", False)
        self.crashloop = False
        self.crash_times: deque[float] = deque()
        self.consecutive_crashes = 0
        self.next_start = 0.0
        self.pids_seen: set[int] = set()
        self.health_failures = 0
        self.window: PrometheusWindow | ProbeWindow = self._new_window()
        self.status: dict[str, Any] = self.status_of(spec, saved)

    # --- status -----------------------------------------------------------------

    @staticmethod
    def status_of(spec: dict[str, Any], saved: dict[str, Any], **changes: Any) -> dict[str, Any]:
        """A worker's status (protocol §4) from its spec and its saved state.json."""
        return {
            "worker_id": spec["worker_id"],
            "deployment_id": spec.get("deployment_id"),
            "state": saved.get("state", "stopped"),
            "pid": None,
            "port": spec["port"] or None,  # 0: the agent picks one when it starts
            "gpus": list(spec["gpus"]),
            "restarts": saved.get("restarts", 0),
            "run": saved.get("run", 0),
            "exit_code": saved.get("exit_code"),
            "exit_signal": saved.get("exit_signal"),
            "cause": saved.get("cause"),
            "evidence": saved.get("evidence"),
            "error": saved.get("error"),
            "progress": None,
            "last_log": [],
            "operation_id": saved.get("operation_id"),
            "ts": time.time(),
            **changes,
        }

    @property
    def active(self) -> bool:
        return self.desired == "running" and self.status["state"] in ACTIVE_STATES

    def snapshot(self) -> dict[str, Any]:
        with self._status_lock:
            status = dict(self.status)
        status["last_log"] = self.logs.tail(self.run, LAST_LOG_LINES) if self.run else []
        status["gpus"] = list(status["gpus"])
        return status

    def _set(self, **changes: Any) -> None:
        with self._status_lock:
            if all(self.status.get(k) == v for k, v in changes.items()):
                return
            self.status.update(changes)
            self.status["ts"] = time.time()
        self.sup.on_status(self.snapshot())

    def metrics(self) -> dict[str, Any] | None:
        if self.status["state"] not in ("ready", "unhealthy"):
            return None
        return self.window.summary(self.id)

    def _persist(self) -> None:
        with self._persist_lock:
            self._write_state()

    def _write_state(self) -> None:
        write_json(
            self.dir / "state.json",
            {
                "desired": self.desired,
                "pid": self.pid,
                "start_ticks": self.start_ticks,
                "run": self.run,
                "restarts": self.restarts,
                "run_started": self.run_started,
                "was_ready": self.was_ready,
                "state": self.status["state"],
                "operation_id": self.status["operation_id"],
                "exit_code": self.status["exit_code"],
                "exit_signal": self.status["exit_signal"],
                "cause": self.status["cause"],
                "evidence": self.status["evidence"],
                "error": self.status["error"],
            },
        )

    def _new_window(self) -> PrometheusWindow | ProbeWindow:
        names = engines.ENGINES[self.spec["engine"]].metrics
        if names is not None:
            return PrometheusWindow(names, self.cfg.latency_window_s)
        return ProbeWindow(self.cfg.latency_window_s)

    # --- commands (called with the supervisor's command lock held) ----------------

    def start(self, spec: dict[str, Any], operation_id: str) -> dict[str, Any]:
        """Accept the spec and begin (verify, start) in the worker's thread; the status now."""
        if self.thread is not None and self.thread.is_alive():
            raise RuntimeError(f"worker {self.id} is still being stopped; try again shortly")
        if spec["port"] == 0:
            spec = {**spec, "port": self._agent_port()}
        self.spec = spec
        self.logs.secret = spec["api_key"]
        write_json(self.dir / "spec.json", spec)
        self.desired = "running"
        self.crash_times.clear()
        self.consecutive_crashes = 0
        self.crashloop = False
        self.next_start = 0.0
        self.status.update(port=spec["port"], gpus=list(spec["gpus"]))
        self.status["deployment_id"] = spec["deployment_id"]
        self._set(
            state="pending",
            operation_id=operation_id,
            error=None,
            cause=None,
            evidence=None,
            exit_code=None,
            exit_signal=None,
            progress=None,
        )
        self._persist()
        accepted = self.snapshot()
        self._spawn(adopted=False)
        return accepted

    def refuse(self, operation_id: str, error: str) -> dict[str, Any]:
        """A start that could not be taken: not wanting to run (so the next start is
        not "already running"), pending, saying why. Returns the status."""
        self.desired = "stopped"
        self._set(state="pending", operation_id=operation_id, error=error, progress=None)
        return self.snapshot()

    def _agent_port(self) -> int:
        """The port this worker chose before, while still free; else a new free one."""
        taken = self.sup.ports_in_use(exclude=self.id)
        previous = self.spec.get("port") if isinstance(self.spec, dict) else None
        host = self.cfg.host
        if previous and previous not in taken and ports.is_free(previous, host):
            return previous
        return ports.choose(self.cfg.worker_ports, taken, host)

    def stop(self, operation_id: str) -> None:
        self.desired = "stopped"
        self._set(operation_id=operation_id)
        if self.thread is not None and self.thread.is_alive():
            if self.pid is not None:
                self._set(state="stopping")
            self.wake.set()
            self.thread.join(self.cfg.stop_grace_s + 60)
        elif self.pid is not None:  # not watched (should not happen): end it all the same
            self._end_run_on_request()
        self._set(state="stopped", pid=None, progress=None)
        self._persist()

    def detach(self) -> None:
        self.detaching = True
        self.wake.set()
        if self.thread is not None:
            self.thread.join(30)
        self._persist()

    def resume(self) -> None:
        """At agent start: adopt a live run, or carry on per the desired state."""
        alive = self.pid is not None and procs.is_running(self.pid, self.start_ticks)
        if alive:
            state = self.status["state"]
            self.status["state"] = state if state in ("ready", "unhealthy") else "starting"
            self.status["pid"] = self.pid
            if self.desired != "running":
                log.warning("worker %s runs but should not; ending it", self.id)
                self._end_run_on_request()
                self.status["state"] = "stopped"
                self._persist()
                return
            log.info("worker %s: adopted pid %s (run %s)", self.id, self.pid, self.run)
            self._spawn(adopted=True)
            return
        if self.pid is not None:  # the run ended while no agent watched it
            self._record_exit(None)
        if self.desired == "running" and self.status["state"] != "failed":
            self.status["state"] = "pending"
            self._spawn(adopted=False)
        elif self.desired != "running":
            self.status["state"] = "stopped"
        self._persist()

    def _spawn(self, adopted: bool) -> None:
        self.detaching = False
        self.thread = threading.Thread(
            target=self._main, args=(adopted,), name=f"hangar-worker-{self.id}", daemon=True
        )
        self.thread.start()

    # --- the worker's thread ------------------------------------------------------

    def _cancelled(self) -> bool:
        return self.detaching or self.desired != "running"

    def _main(self, adopted: bool) -> None:
        try:
            outcome = self._watch() if adopted else "fresh"
            while not self._cancelled():
                if outcome == "failed":  # ended for cause; a person starts it again
                    return
                if outcome == "exited" and not self._sleep_until(self.next_start):
                    continue
                if not self._prepare():
                    return
                if self._cancelled():
                    break
                outcome = self._watch() if self._launch() else "exited"
            if self.detaching:
                return
            self._end_run_on_request()
            self._set(state="stopped", pid=None, progress=None)
            self._persist()
        except Exception as exc:
            log.exception("worker %s: supervision failed", self.id)
            self._set(state="failed", error=f"the agent's supervision failed: {exc}")
            self._persist()

    def _sleep_until(self, deadline: float) -> bool:
        """Wait for a backoff; False when told to stop or detach first."""
        while not self._cancelled():
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            self.wake.wait(min(left, 1.0))
            self.wake.clear()
        return False

    def _prepare(self) -> bool:
        """Verify the model, clear the previous run away; False if the worker failed."""
        if not self._verify():
            return False
        if self._cancelled():
            return True
        self._end_previous_group()
        if self.spec["gpus"] and self.pids_seen:
            blocking = gpu_release.wait_for_release(
                self.sup.gpu_processes,
                self.spec["gpus"],
                lambda: self.sup.hangar_pids(exclude=self.id),
                timeout_s=self.cfg.gpu_release_wait_s,
                cancelled=self._cancelled,
            )
            if blocking and not self._cancelled():
                evidence = gpu_release.describe(blocking, self.pids_seen)
                self._set(
                    state="failed",
                    cause="gpu-held",
                    evidence=evidence[:1000],
                    error=f"cannot restart: {evidence}; end that process, then start the worker",
                )
                self._persist()
                return False
        return True

    def _verify(self) -> bool:
        """Hash the model's files unless this node verified the same files already."""
        model = self.spec["model"]
        key = verify.spec_model_key(model)
        # The per-worker record of earlier agents; the node-wide one replaces it.
        with contextlib.suppress(OSError):
            (self.dir / "verified.json").unlink()
        lock = self.sup.verification_lock(key)
        if not lock.acquire(timeout=0.25):  # a look-up that finds a record is quicker
            # Another worker of this node is hashing the same files: wait for
            # its record rather than reading them a second time.
            self._set(state="verifying", progress=None)
            while not lock.acquire(timeout=0.25):
                if self._cancelled():
                    return True  # the caller sees the stop request
        try:
            return self._verify_holding_lock(model, key)
        finally:
            lock.release()

    def _verify_holding_lock(self, model: dict[str, Any], key: str) -> bool:
        roots = self.cfg.model_roots
        records = self.sup.verified
        try:
            if records.lookup(key, model, roots) is not None:
                return True
            self._set(state="verifying", progress=None)
            before = _current_stamps(model, roots)
            last_emit = 0.0

            def progress(done: int, total: int, file: str) -> None:
                nonlocal last_emit
                now = time.monotonic()
                if now - last_emit >= 0.5 or done == total:
                    last_emit = now
                    self._set(progress={"done_bytes": done, "total_bytes": total, "file": file})

            model_dir = verify.verify_model(model, roots, progress, cancelled=self._cancelled)
            after = verify.file_stamps(model_dir, model["files"])
            if before != after:
                # The bytes hashed may not be the bytes on disk now (a copy still
                # running): do not start on them.
                raise verify.VerificationError(
                    f"model files under {model_dir} changed while they were verified "
                    "(still being copied?); start the worker again once they are complete"
                )
            try:
                records.write(key, model, model_dir, after)
            except OSError as exc:  # the worker may start all the same; the next one hashes
                log.warning("worker %s: cannot record the verification: %s", self.id, exc)
            return True
        except (verify.VerificationError, OSError) as exc:
            if self._cancelled():
                return True  # the caller sees the stop request
            try:
                records.forget(key)
            except OSError as forget_exc:
                log.warning("worker %s: cannot remove %s: %s", self.id, key, forget_exc)
            message = str(exc) if isinstance(exc, verify.VerificationError) else f"{exc}"
            log.warning("worker %s: model verification failed: %s", self.id, message)
            self._set(state="failed", error=message, progress=None)
            self._persist()
            return False

    def _launch(self) -> bool:
        """Start run n+1; False if it could not even start (counted as a crash)."""
        self._write_key_file()
        argv = engines.build_argv(self.spec, self.cfg.host, str(self.key_file))
        self.run += 1
        run = self.run
        env = dict(os.environ)
        for name in engines.KEY_VARIABLES:  # the agent's own never reach a worker
            env.pop(name, None)
        env.update(engines.key_environment(self.spec))
        pin = pin_environment(self.cfg.accelerator, self.spec["gpus"])
        env.update(pin)
        env["PYTHONUNBUFFERED"] = "1"  # Python engines: log lines land before a crash
        if self.spec["engine"] == "reference":
            package_root = str(Path(agents.__file__).resolve().parent.parent)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        pinned = " ".join(f"{k}={v}" for k, v in pin.items())
        self.logs.note(run, f"run {run}: {shlex.join(argv)} ({pinned})")
        fd = self.logs.open_run(run)
        self.run_started = time.time()
        self.was_ready = False
        self.health_failures = 0
        self.pids_seen = set()
        self.window = self._new_window()
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.dir,
                start_new_session=True,  # its own process group: one signal reaches all
                close_fds=True,
            )
        except OSError as exc:
            self.logs.note(run, f"cannot start: {exc}")
            self.proc = None
            self.pid = None
            self.start_ticks = None
            self.logs.record(self._run_entry())
            self._record_exit(None)
            return False
        finally:
            os.close(fd)
        self.pid = self.proc.pid
        self.start_ticks = procs.start_ticks(self.pid)
        self.logs.record(self._run_entry())
        self._set(
            state="crashloop" if self.crashloop else "starting",
            pid=self.pid,
            run=run,
            restarts=self.restarts,
            error=None,
            progress=None,
        )
        self._persist()
        log.info("worker %s: run %s started, pid %s", self.id, run, self.pid)
        return True

    def _write_key_file(self) -> None:
        """The engine key where engines that read a file find it; no file without one."""
        if self.spec["api_key"] is None:
            self.key_file.unlink(missing_ok=True)
            return
        write_private(self.key_file, self.spec["api_key"] + "\n")

    def _run_entry(self, **changes: Any) -> dict[str, Any]:
        entry = {
            "run": self.run,
            "pid": self.pid,
            "started": self.run_started,
            "ended": None,
            "exit_code": None,
            "exit_signal": None,
            "duration": None,
            "cause": None,
            "evidence": None,
        }
        for existing in self.logs.index():
            if existing["run"] == self.run:
                entry.update(existing)
        entry.update(changes)
        if entry["ended"] is not None and entry["started"] is not None:
            entry["duration"] = round(entry["ended"] - entry["started"], 3)
        return entry

    def _watch(self) -> str:
        """Watch the current run: 'exited', 'stop' (requested) or 'detach'."""
        next_health = time.monotonic()
        next_metrics = next_health + self.cfg.metrics_interval_s
        while True:
            self.wake.clear()
            if self.detaching:
                return "detach"
            if self.desired != "running":
                return "stop"
            returncode, ended = self._poll_exit()
            if ended:
                self._record_exit(returncode)
                return "exited"
            self.logs.keep_under_cap(self.run)
            now = time.monotonic()
            if now >= next_health:
                if self._check_health() == "failed":
                    return "failed"
                # Until the engine first answers, look often: readiness is what a
                # rollout waits on, and engines come up at any moment.
                starting = self.status["state"] == "starting"
                interval = (
                    self.cfg.startup_health_interval_s if starting else self.cfg.health_interval_s
                )
                next_health = time.monotonic() + interval
            if now >= next_metrics:
                next_metrics = now + self.cfg.metrics_interval_s
                if isinstance(self.window, PrometheusWindow):
                    self._scrape()
            self.wake.wait(self.cfg.tick_s)

    def _poll_exit(self) -> tuple[int | None, bool]:
        if self.pid is None:
            return None, True
        if self.proc is not None:
            returncode = self.proc.poll()
            return returncode, returncode is not None
        # Adopted: not our child (unless this process started it before a
        # supervisor restart), so its exit shows as its /proc entry going away.
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                return os.waitstatus_to_exitcode(status), True
        except ChildProcessError:
            pass
        if procs.is_running(self.pid, self.start_ticks):
            return None, False
        return None, True

    def _request(self, path: str) -> urllib.request.Request:
        """A local request to the engine; with the key, for engines that want it there too.

        The reference engine and vLLM leave /health and /metrics open, llama.cpp
        only /health; a generic engine may guard all of it.
        """
        url = f"http://{probe_address(self.cfg.host)}:{self.spec['port']}{path}"
        request = urllib.request.Request(url)
        if self.spec["api_key"] is not None:
            request.add_header("Authorization", f"Bearer {self.spec['api_key']}")
        return request

    def _check_health(self) -> str | None:
        """Probe the engine; "failed" when the worker was ended for what it listens on."""
        if self.pid is not None:
            self.pids_seen.update(procs.group_members(self.pid, self.start_ticks))
        started = time.monotonic()
        try:
            with _LOCAL_HTTP.open(
                self._request(engines.health_path(self.spec)), timeout=self.cfg.health_timeout_s
            ) as response:
                healthy = 200 <= response.status < 300
        except (OSError, urllib.error.URLError, ValueError):
            healthy = False
        seconds = time.monotonic() - started
        state = self.status["state"]
        if isinstance(self.window, ProbeWindow) and state in ("ready", "unhealthy"):
            self.window.add(time.time(), seconds if healthy else None)
        if healthy and self.pid is not None:
            listening = procs.listening_sockets(
                procs.group_members(self.pid, self.start_ticks) or [self.pid]
            )
            # Whoever answered must be this worker: during a rolling update the port's
            # previous engine may still be finishing its requests.
            healthy = any(port == self.spec["port"] for _a, port, _p, _n in listening)
            if healthy and self._fail_on_unexpected_listener(listening):
                return "failed"
        if healthy:
            self.health_failures = 0
            if state != "ready":
                self.was_ready = True
                self._set(state="ready")
                self._persist()
            return None
        self.health_failures += 1
        if state == "ready" and self.health_failures >= self.cfg.unhealthy_after:
            self._set(state="unhealthy")
            self._persist()

    def _fail_on_unexpected_listener(self, listening=None) -> bool:
        """An engine that opens more than its declared port is an open door: end it.

        Checked on every health check that answered, from the first one on, over the
        sockets of the worker's whole process tree (engines' internal ZeroMQ or RPC
        ports on 0.0.0.0 are how engine-port bypasses happen).
        """
        if self.pid is None:
            return False
        if listening is None:
            members = procs.group_members(self.pid, self.start_ticks) or [self.pid]
            listening = procs.listening_sockets(members)
        found = engines.unexpected_listeners(self.spec, self.cfg.host, listening)
        if not found:
            return False
        evidence = "listens beyond its declared port: " + ", ".join(
            f"{addr}:{port} (pid {pid} {name})" for addr, port, pid, name in found[:8]
        )
        log.error("worker %s: %s; ending it", self.id, evidence)
        proc = self.proc
        self.pids_seen |= procs.end_group(
            self.pid, self.start_ticks, self.cfg.stop_grace_s, lambda: proc and proc.poll()
        )
        self.logs.record(
            self._run_entry(ended=time.time(), cause="unexpected-listener", evidence=evidence)
        )
        self.proc = None
        self.pid = None
        self._set(
            state="failed",
            pid=None,
            cause="unexpected-listener",
            evidence=evidence[:1000],
            error=f"{evidence}; allow the port in the engine table or fix the engine's flags",
        )
        self._persist()
        return True

    def _scrape(self) -> None:
        if self.status["state"] not in ("ready", "unhealthy"):
            return
        try:
            with _LOCAL_HTTP.open(
                self._request("/metrics"), timeout=self.cfg.health_timeout_s
            ) as response:
                text = response.read(8 * 2**20).decode("utf-8", "replace")
        except (OSError, urllib.error.URLError, ValueError):
            return
        self.window.add(time.time(), text)

    def _record_exit(self, returncode: int | None) -> None:
        """The run ended on its own: clean its group, classify, schedule the restart."""
        pid = self.pid
        if pid is not None:
            self.pids_seen.add(pid)
            self.pids_seen |= procs.end_group(pid, self.start_ticks, self.cfg.stop_grace_s)
        kernel = None
        if self.pids_seen and returncode != 0:
            since = procs.boot_seconds(self.start_ticks) if self.start_ticks else None
            kernel = read_kernel_log(since)
        cause, evidence = classify_exit(
            returncode,
            self.logs.tail(self.run, 200) if self.run else [],
            was_ready=self.was_ready,
            pids=self.pids_seen,
            kernel_lines=kernel,
        )
        ended = time.time()
        code = returncode if returncode is not None and returncode >= 0 else None
        sig = -returncode if returncode is not None and returncode < 0 else None
        if self.run:
            self.logs.record(
                self._run_entry(
                    ended=ended, exit_code=code, exit_signal=sig, cause=cause, evidence=evidence
                )
            )
        log.warning("worker %s: run %s ended (%s): %s", self.id, self.run, cause, evidence)
        self.proc = None
        self._set(exit_code=code, exit_signal=sig, cause=cause, evidence=evidence[:1000], pid=None)
        self._crashed()

    def _crashed(self) -> None:
        lived = time.time() - (self.run_started or time.time())
        now = time.monotonic()
        if lived < self.cfg.fast_crash_s:
            self.crash_times.append(now)
            self.consecutive_crashes += 1
        else:
            self.consecutive_crashes = 1
        while self.crash_times and self.crash_times[0] < now - self.cfg.crashloop_window_s:
            self.crash_times.popleft()
        self.crashloop = len(self.crash_times) >= self.cfg.crashloop_crashes
        if self.crashloop:
            delay = self.cfg.backoff_cap_s
        else:
            exponent = max(0, self.consecutive_crashes - 1)
            delay = min(self.cfg.backoff_cap_s, self.cfg.backoff_base_s * 2 ** min(exponent, 30))
        self.next_start = now + delay
        self.restarts += 1
        self.pid = None
        if self.status["state"] != "failed":
            self._set(state="crashloop" if self.crashloop else "pending", restarts=self.restarts)
        self._persist()

    def _end_previous_group(self) -> None:
        """Whatever is left of the previous run's group goes before the next run."""
        if self.start_ticks is None or not self.run:
            return
        for entry in self.logs.index()[-1:]:
            if entry.get("pid"):
                self.pids_seen |= procs.end_group(
                    entry["pid"], self.start_ticks, self.cfg.stop_grace_s
                )

    def _end_run_on_request(self) -> None:
        if self.pid is None:
            return
        proc = self.proc

        def reap() -> None:
            if proc is not None:
                proc.poll()

        self.pids_seen |= procs.end_group(self.pid, self.start_ticks, self.cfg.stop_grace_s, reap)
        returncode = None
        if proc is not None:
            try:
                returncode = proc.wait(5)
            except subprocess.TimeoutExpired:
                returncode = None
        code = returncode if returncode is not None and returncode >= 0 else None
        sig = -returncode if returncode is not None and returncode < 0 else None
        self.logs.record(
            self._run_entry(
                ended=time.time(),
                exit_code=code,
                exit_signal=sig,
                cause="stopped",
                evidence="stopped on request",
            )
        )
        self.proc = None
        self.pid = None
        self._set(pid=None)
