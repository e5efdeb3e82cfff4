"""The live stack the chaos tests break, and the record of what each one measured.

Run with `make chaos` (tests/chaos/pytest.ini: no pytest-django, this suite sets
Django up against its own PostgreSQL and Redis). Needs root: network
namespaces, tmpfs mounts, `runuser postgres`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.chaos import stack
from tests.support import processes

RESULTS = Path(os.environ.get("HANGAR_CHAOS_RESULTS", processes.ROOT / ".chaos-results.json"))
GRACE_S = int(stack.env_seconds("HANGAR_CHAOS_GRACE_S", 5, 15))
INTERVAL_S = 0.5  # each agent's sweep: two samples a second per node


def db_retry(fn, timeout: float = 120.0):
    """Run an ORM call from the test process, reconnecting while the database is back."""
    from django.db import close_old_connections, connection

    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except Exception:
            if time.monotonic() > deadline:
                raise
            close_old_connections()
            with contextlib.suppress(Exception):
                connection.close()
            time.sleep(0.5)


@dataclass
class Agent:
    name: str
    state_dir: Path
    console: str
    log_dir: Path
    prefix: list[str] = field(default_factory=list)  # `ip netns exec NAME` for the far node
    worker_host: str = "127.0.0.1"
    env: dict = field(default_factory=dict)
    node_id: int = 0
    proc: object = None
    runs: int = 0

    def argv(self) -> list[str]:
        from django.conf import settings

        return [
            *self.prefix,
            str(processes.BIN / "hangar-agent"),
            "run",
            "--state-dir",
            str(self.state_dir),
            "--simulate",
            "2",
            "--interval",
            str(INTERVAL_S),
            "--model-root",
            settings.DEMO_MODEL_ROOT,
            "--worker-host",
            self.worker_host,
        ]

    def start(self) -> None:
        self.runs += 1
        self.proc = processes.start(
            self.argv(), self.env, self.log_dir / f"agent-{self.name}-{self.runs}.log"
        )

    def stop(self) -> None:
        if self.proc is not None:
            processes.stop(self.proc)
            self.proc = None

    def sent(self) -> int | None:
        """Samples this run numbered and sent, from its last line (agents/stream.py)."""
        log = (self.log_dir / f"agent-{self.name}-{self.runs}.log").read_text(errors="replace")
        found = re.findall(r"stopped after (\d+) sweeps, (\d+) not sent", log)
        return int(found[-1][0]) - int(found[-1][1]) if found else None


class Chaos:
    """The stack, started once for the session; each test breaks one part of it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir()
        self.namespace = stack.Namespace()
        self.console_data = stack.Tmpfs(root / "console-data")
        self.node_state = stack.Tmpfs(root / "node-b")
        self.postgres = stack.Postgres(root / "postgres")
        self.redis = stack.Redis(root / "redis-dir", ["127.0.0.1", stack.HOST_ADDRESS])
        self.programs: list[stack.Supervised] = []
        self.agents: dict[str, Agent] = {}
        self.supervisor: stack.Supervisor | None = None
        self.load: stack.GatewayLoad | None = None

    # --- bring-up -----------------------------------------------------------------
    def start(self) -> None:
        (self.root / "redis-dir").mkdir()
        (self.root / "models").mkdir()
        self.namespace.create()
        self.console_data.mount()
        self.node_state.mount()
        self.postgres.init()
        self.redis.start()
        self.web_port = processes.free_port()
        self.gateway_port, self.gateway_admin_port = processes.free_port(), processes.free_port()
        os.environ.update(
            {
                "HANGAR_DATABASE_URL": self.postgres.url,
                "HANGAR_REDIS_URL": self.redis.url,
                "HANGAR_AGENT_BROKER_URL": f"redis://{stack.HOST_ADDRESS}:{self.redis.port}/0",
                "HANGAR_DATA_DIR": str(self.console_data.path),
                "HANGAR_MODEL_ROOTS": str(self.root / "models"),
                "HANGAR_NODE_GRACE_SECONDS": str(GRACE_S),
                "HANGAR_ALLOWED_HOSTS": f"127.0.0.1,localhost,{stack.HOST_ADDRESS}",
                "HANGAR_REQUIRE_2FA": "none",
                "HANGAR_DEMO": "true",
                "HANGAR_GATEWAY_BIND": f"127.0.0.1:{self.gateway_port}",
                "HANGAR_GATEWAY_ADMIN_BIND": f"127.0.0.1:{self.gateway_admin_port}",
                "DJANGO_SETTINGS_MODULE": "console.settings",
                "PYTHONUNBUFFERED": "1",
                "PATH": f"{processes.BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            }
        )
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        self._people()
        self._console_processes()
        self._agents()
        self._deployments()

    def _people(self) -> None:
        from django.contrib.auth import get_user_model

        from apps.accounts.models import RoleBinding
        from apps.inventory.models import Cluster

        self.admin = get_user_model().objects.create_user("admin", password="chaos chaos chaos")
        RoleBinding.objects.create(role="admin", user=self.admin)
        self.cluster = Cluster.objects.create(name="chaos")

    def _console_processes(self) -> None:
        env = os.environ.copy()
        bin_ = processes.BIN
        web = f"http://127.0.0.1:{self.web_port}"
        self.web_url = web
        daphne = [str(bin_ / "daphne"), "-b", "127.0.0.1", "-p", str(self.web_port)]
        daphne += ["-e", f"tcp:port={self.web_port}:interface={stack.HOST_ADDRESS}"]
        daphne += ["console.asgi:application"]
        beat_schedule = self.console_data.path / "celerybeat-schedule"
        celery = [str(bin_ / "celery"), "-A", "console.celery"]
        self.web = stack.Supervised("web", daphne, env, self.logs)
        # fmt: off
        self.worker = stack.Supervised(
            "worker",
            [*celery, "worker", "-Q", "console", "-n", "console@chaos", "--concurrency=2", "-l",
             "info", "--without-gossip", "--without-mingle"],
            env,
            self.logs,
        )
        # fmt: on
        self.beat = stack.Supervised(
            "beat", [*celery, "beat", "-l", "info", "-s", str(beat_schedule)], env, self.logs
        )
        self.gateway = stack.Supervised("gateway", [str(bin_ / "hangar-gateway")], env, self.logs)
        self.programs = [self.web, self.worker, self.beat, self.gateway]
        for program in self.programs:
            program.start()
        stack.wait_until(lambda: stack.http_ok(f"{web}/healthz"), 60, "Daphne's /healthz")
        stack.wait_until(lambda: "ready" in self.worker.log(), 60, "the Celery worker")
        self.supervisor = stack.Supervisor(self.programs)
        self.supervisor.start()

    def _agents(self) -> None:
        from apps.inventory.services import create_enrollment_token

        near = f"http://127.0.0.1:{self.web_port}"
        far = f"http://{stack.HOST_ADDRESS}:{self.web_port}"
        self.agents["a"] = Agent("a", self.root / "node-a", near, self.logs)
        self.agents["b"] = Agent(
            "b",
            self.node_state.path,
            far,
            self.logs,
            prefix=self.namespace.prefix(),
            worker_host=stack.NODE_ADDRESS,
        )
        for agent in self.agents.values():
            agent.env = os.environ.copy()
            _token, secret = create_enrollment_token(self.cluster, self.admin)
            argv = [*agent.prefix, str(processes.BIN / "hangar-agent"), "enroll"]
            argv += ["--console", agent.console, "--token", secret]
            argv += ["--state-dir", str(agent.state_dir), "--simulate", "2"]
            stack.run(argv, timeout=60)
            credential = json.loads((agent.state_dir / "credential.json").read_text())
            agent.node_id = credential["node_id"]
            agent.start()
        for agent in self.agents.values():
            self.wait_online(agent)

    def _deployments(self) -> None:
        """The demo on node a (route and key `demo`, gateway load), a second on node b."""
        from apps.deployments.models import Worker, WorkerState
        from apps.deployments.services import create_deployment
        from apps.gateway import demo
        from apps.inventory.models import Node

        state = demo.install(Node.objects.get(pk=self.agents["a"].node_id))
        self.key = state["key"]
        self.demo_deployment = state["deployment"]
        version = Worker.objects.get(deployment_id=self.demo_deployment).model_version
        self.far_deployment = create_deployment(
            self.admin,
            name="far",
            cluster=self.cluster,
            model_version=version,
            engine="reference",
            replicas=1,
            placement={
                "mode": "pinned",
                "targets": [{"node": self.agents["b"].node_id, "gpus": []}],
            },
            port=None,
        ).pk
        for deployment in (self.demo_deployment, self.far_deployment):
            stack.wait_until(
                lambda d=deployment: Worker.objects.filter(
                    deployment_id=d, state=WorkerState.READY
                ).exists(),
                120,
                f"deployment {deployment}'s worker ready",
                interval=0.5,
            )
        self.load = stack.GatewayLoad(f"http://127.0.0.1:{self.gateway_port}", self.key).start()
        stack.wait_until(
            lambda: any(o.ok for o in self.load.outcomes), 60, "a request through the gateway"
        )

    # --- reading the stack ------------------------------------------------------------
    def node_state_of(self, agent: Agent) -> str:
        from apps.inventory.models import Node

        return db_retry(lambda: Node.objects.get(pk=agent.node_id).state)

    def wait_online(self, agent: Agent, timeout: float = 90) -> float:
        return stack.wait_until(
            lambda: self.node_state_of(agent) == "online", timeout, f"node {agent.name} online"
        )

    def latest_seq(self, agent: Agent) -> int:
        import redis

        raw = redis.Redis.from_url(self.redis.url).get(f"hangar:latest:{agent.node_id}")
        return json.loads(raw)["seq"] if raw else 0

    def stored_samples(self, agent: Agent) -> int:
        from django.db.models import Sum

        from apps.telemetry.models import NodeMetricMinute

        return db_retry(
            lambda: (
                NodeMetricMinute.objects.filter(node_id=agent.node_id).aggregate(n=Sum("samples"))[
                    "n"
                ]
                or 0
            )
        )

    def settled_samples(self, agent: Agent) -> int:
        """The stored count once it stops moving (a closed socket's last minute written)."""
        counts = [self.stored_samples(agent)]

        def steady() -> bool:
            counts.append(self.stored_samples(agent))
            return counts[-1] == counts[-2]

        stack.wait_until(steady, 30, f"node {agent.name}'s rollups settled", interval=1.5)
        return counts[-1]

    def lost_counter(self, agent: Agent) -> int:
        import redis

        value = redis.Redis.from_url(self.redis.url).hget("hangar:lost_samples", agent.node_id)
        return int(value or 0)

    def workers_of(self, deployment: int) -> list[tuple[int, int | None, str, int]]:
        """(worker id, pid, state, run) of a deployment's workers that are meant to run."""
        from apps.deployments.models import Worker

        return db_retry(
            lambda: list(
                Worker.objects.filter(deployment_id=deployment)
                .exclude(desired_state="stopped")
                .order_by("pk")
                .values_list("pk", "pid", "state", "run")
            )
        )

    def telemetry_flowing(self, agent: Agent, after: float) -> bool:
        """A sample from this agent reached Redis after `after` (its seq moved on)."""
        import redis

        seen = redis.Redis.from_url(self.redis.url).hget("hangar:last_seen", agent.node_id)
        return seen is not None and float(seen) > after

    # --- tear-down ------------------------------------------------------------------
    def close(self) -> None:
        if self.load is not None:
            self.load.stop()
        if self.supervisor is not None:
            self.supervisor.stopping.set()
            self.supervisor.join(5)
        for agent in self.agents.values():
            with contextlib.suppress(Exception):
                agent.stop()
        for program in self.programs:
            with contextlib.suppress(Exception):
                program.stop()
        self._kill_engines()
        for agent in self.agents.values():  # the engines' logs, before their disk goes
            with contextlib.suppress(OSError):
                shutil.copytree(agent.state_dir, self.logs / f"state-{agent.name}", ignore=_sockets)
        self.redis.stop()
        self.postgres.destroy()
        self.console_data.unmount()
        self.node_state.unmount()
        self.namespace.destroy()

    def _kill_engines(self) -> None:
        """Inference workers outlive their agents by design: end the ones we started
        (each in its own process group; its pid in `workers/<id>/state.json`)."""
        for agent in self.agents.values():
            for record in (agent.state_dir / "workers").glob("*/state.json"):
                with contextlib.suppress(OSError, ValueError, TypeError):
                    pid = json.loads(record.read_text()).get("pid")
                    if pid:
                        os.killpg(pid, signal.SIGKILL)


def _sockets(directory: str, names: list[str]) -> list[str]:
    return [n for n in names if n.endswith((".sock", ".chaos-filler"))]


class AgentRun:
    """Fresh agent processes for one test, so each test counts its own samples.

    On exit the agents stop (their sockets close and the console writes the
    partial minute), and for each node the samples the agent numbered are
    compared with the samples the console stored in its minute rollups.
    """

    def __init__(self, chaos: Chaos) -> None:
        self.chaos = chaos
        self.before: dict[str, int] = {}
        self.result: dict[str, dict] = {}

    def __enter__(self) -> AgentRun:
        for agent in self.chaos.agents.values():
            agent.stop()
        for name, agent in self.chaos.agents.items():
            self.before[name] = self.chaos.settled_samples(agent)
            agent.start()
        for agent in self.chaos.agents.values():
            self.chaos.wait_online(agent)
        return self

    def finish(self, settle: float = 15) -> dict[str, dict]:
        """Stop the agents and count, once the console has written what it will."""
        sent = {}
        for name, agent in self.chaos.agents.items():
            agent.stop()
            sent[name] = agent.sent()
            assert sent[name] is not None, f"agent {name} did not say what it sent"
        for name, agent in self.chaos.agents.items():
            expected = sent[name]
            with contextlib.suppress(AssertionError):  # fewer: lost, counted below
                stack.wait_until(
                    lambda a=agent, n=name, e=expected: (
                        self.chaos.stored_samples(a) - self.before[n] >= e
                    ),
                    settle,
                    f"node {name}'s rollups written",
                    interval=1.0,
                )
            self.chaos.settled_samples(agent)
            stored = self.chaos.stored_samples(agent) - self.before[name]
            self.result[name] = {
                "sent": expected,
                "stored": stored,
                "lost": max(0, expected - stored),
                "duplicates": max(0, stored - expected),
            }
        return self.result  # the agents stay stopped: the next test starts fresh ones

    def __exit__(self, *exc) -> None:
        return None


@pytest.fixture(scope="session")
def chaos():
    if os.geteuid() != 0:
        raise RuntimeError("the chaos suite needs root (network namespaces, tmpfs, runuser)")
    world = Chaos(stack.make_tempdir())
    try:
        world.start()
        yield world
    finally:
        world.close()
        keep = os.environ.get("HANGAR_CHAOS_KEEP_LOGS")
        if keep:
            shutil.copytree(world.logs, keep, dirs_exist_ok=True)
        shutil.rmtree(world.root, ignore_errors=True)


@pytest.fixture(scope="session")
def results():
    """Measurements by fault, written to RESULTS when the session ends."""
    recorded: dict[str, dict] = {}
    yield recorded
    full = os.environ.get("HANGAR_CHAOS_MODE") == "full"
    RESULTS.write_text(
        json.dumps(
            {
                "mode": os.environ.get("HANGAR_CHAOS_MODE", "short"),
                "command": "make chaos" + (" CHAOS_MODE=full" if full else ""),
                "machine": {
                    "nproc": os.cpu_count(),
                    "kernel": platform.release(),
                    "python": sys.version.split()[0],
                },
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "faults": recorded,
            },
            indent=2,
        )
        + "\n"
    )


@pytest.fixture
def record(results, request):
    """record(**measurements) for this test's fault; `held` and `broken` list what was checked."""
    entry: dict = {"test": request.node.name, "held": [], "broken": []}
    results[request.node.name] = entry

    class Recorder:
        def __init__(self) -> None:
            self.entry = entry

        def __call__(self, **values) -> None:
            entry.update(values)

        def check(self, what: str, ok: bool) -> bool:
            (entry["held"] if ok else entry["broken"]).append(what)
            return ok

    yield Recorder()
    report = getattr(request.node, "rep_call", None)
    failed = report is not None and report.failed
    entry["outcome"] = "failed" if failed or entry["broken"] else "passed"
    if failed and not entry["broken"]:  # it ended before it could judge: say where
        entry["error"] = str(report.longrepr.reprcrash.message).splitlines()[0][:300]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def agent_run(chaos):
    return AgentRun(chaos)
