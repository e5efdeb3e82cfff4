"""Worker commands end to end: Celery on Redis DB 15 -> the agent's Celery process ->
its control socket -> the supervisor in the agent's main process -> `worker`
messages on the websocket. And the agent restarting under a running worker."""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.request

import pytest
from celery import Celery

from agents import protocol
from agents.workers import procs
from tests.agents.agent_helpers import REPO_ROOT, WAIT_S, agent_command, agent_env, write_credential
from tests.agents.worker_helpers import fake_spec, free_port, kill_group, make_model, op

BROKER = "redis://127.0.0.1:6379/15"


class Node:
    def __init__(self, tmp_path, console) -> None:
        self.node_id = 800_000 + os.getpid() % 100_000
        self.state_dir = tmp_path / "s"
        self.root = tmp_path / "models"
        self.model = make_model(self.root, size=2**20)
        self.console = console
        write_credential(
            self.state_dir,
            console.url,
            node_id=self.node_id,
            queue=f"node.{self.node_id}",
            broker_url=BROKER,
        )
        self.client = Celery("console-side", broker=BROKER, backend=BROKER)
        self.agent: subprocess.Popen | None = None

    def start_agent(self) -> None:
        argv = agent_command(
            "run", "--simulate", "2", "--state-dir", str(self.state_dir),
            "--model-root", str(self.root),
        )  # fmt: skip
        self.agent = subprocess.Popen(argv, env=agent_env(), cwd=REPO_ROOT, stderr=subprocess.PIPE)

    def stop_agent(self) -> None:
        self.agent.send_signal(signal.SIGTERM)
        self.agent.communicate(timeout=WAIT_S)

    def call(self, task: str, **kwargs) -> dict:
        result = self.client.send_task(
            f"hangar.agent.{task}", kwargs=kwargs, queue=f"node.{self.node_id}"
        )
        return result.get(timeout=90)

    def worker_message(self, **match) -> dict:
        """The next `worker` message whose status has all of `match`."""
        while True:
            _, message = self.console.wait_for(protocol.WORKER, timeout=60)
            status = protocol.validate_message(message)["worker"]
            if all(status[k] == v for k, v in match.items()):
                return status


@pytest.fixture
def node(tmp_path, fake_console):
    n = Node(tmp_path, fake_console)
    yield n
    if n.agent is not None and n.agent.poll() is None:
        n.agent.kill()
        n.agent.communicate(timeout=WAIT_S)
    state = n.state_dir / "workers" / "1" / "state.json"
    if state.exists():
        import json

        kill_group(json.loads(state.read_text()).get("pid"))
    n.client.close()


def test_start_list_tail_and_stop_a_worker_through_celery(node):
    node.start_agent()
    spec = fake_spec(node.model)
    operation = op()
    accepted = node.call("start_worker", operation_id=operation, spec=spec)
    assert accepted["ok"] and accepted["operation_id"] == operation
    assert protocol.validate_worker_status(accepted["worker"])["state"] == "pending"
    ready = node.worker_message(state="ready")
    assert ready["operation_id"] == operation and ready["run"] == 1
    with urllib.request.urlopen(f"http://127.0.0.1:{spec['port']}/health", timeout=5) as r:
        assert r.status == 200

    # A redelivered start (same id) is answered from the record.
    assert node.call("start_worker", operation_id=operation, spec=spec) == accepted
    listed = node.call("list_workers", operation_id=op())
    assert [w["pid"] for w in listed["workers"]] == [ready["pid"]]
    tail = node.call("tail_logs", operation_id=op(), worker_id=1, lines=50)
    assert tail["run"] == 1 and any("CUDA_VISIBLE_DEVICES=0,1" in x for x in tail["lines"])
    runs = node.call("list_runs", operation_id=op(), worker_id=1)
    assert runs["runs"][0]["run"] == 1 and runs["runs"][0]["ended"] is None

    stopped = node.call("stop_worker", operation_id=op(), worker_id=1)
    assert stopped["ok"] and stopped["worker"]["state"] == "stopped"
    assert not procs.is_running(ready["pid"], None)
    node.stop_agent()


def test_an_agent_restart_readopts_the_running_worker_and_reports_it_after_hello(node):
    node.start_agent()
    node.call("start_worker", operation_id=op(), spec=fake_spec(node.model))
    ready = node.worker_message(state="ready")
    node.stop_agent()  # SIGTERM: the agent goes, the worker stays
    assert procs.is_running(ready["pid"], None)

    node.start_agent()
    node.console.wait_for(protocol.HELLO)
    adopted = node.worker_message(worker_id=1)  # every worker follows each hello
    assert adopted["pid"] == ready["pid"] and adopted["run"] == 1
    listed = node.call("list_workers", operation_id=op())
    assert listed["workers"][0]["pid"] == ready["pid"]
    assert node.call("stop_worker", operation_id=op(), worker_id=1)["ok"]
    node.stop_agent()


def test_worker_latency_rides_in_the_telemetry_sample(node):
    node.start_agent()
    node.call("start_worker", operation_id=op(), spec=fake_spec(node.model))
    node.worker_message(state="ready")
    while True:
        _, message = node.console.wait_for(protocol.TELEMETRY, timeout=60)
        workers = protocol.validate_message(message)["sample"]["workers"]
        if workers and workers[0]["p50_ms"] is not None:
            break
    assert workers[0]["worker_id"] == 1 and workers[0]["source"] == "probe"
    node.call("stop_worker", operation_id=op(), worker_id=1)
    node.stop_agent()


def test_the_reference_engine_runs_as_a_worker_with_prometheus_latency(node):
    node.start_agent()
    spec = fake_spec(node.model, engine="reference", command=None, health_path=None)
    spec.update(engine_args=["--backend", "stand-in"], port=free_port())
    assert node.call("start_worker", operation_id=op(), spec=spec)["ok"]
    node.worker_message(state="ready")
    while True:
        for _ in range(5):
            with urllib.request.urlopen(f"http://127.0.0.1:{spec['port']}/v1/models", timeout=5):
                pass
        _, message = node.console.wait_for(protocol.TELEMETRY, timeout=60)
        workers = protocol.validate_message(message)["sample"]["workers"]
        if workers and workers[0]["rps"]:
            break
    assert workers[0]["source"] == "prometheus" and workers[0]["error_rate"] == 0.0
    node.call("stop_worker", operation_id=op(), worker_id=1)
    node.stop_agent()
