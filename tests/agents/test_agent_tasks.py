"""Commands over Celery: a real worker on the node's queue, on the local Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
import pytest
from celery import Celery

from agents import __version__
from agents.protocol import validate_facts
from tests.agents.agent_helpers import (
    REPO_ROOT,
    WAIT_S,
    agent_command,
    agent_env,
    write_credential,
)

BROKER = "redis://127.0.0.1:6379/15"


@pytest.fixture
def node(tmp_path, fake_console):
    """A `hangar-agent run --simulate 2` with its worker, on a queue of its own."""
    node_id = 900_000 + os.getpid() % 100_000
    write_credential(
        tmp_path, fake_console.url, node_id=node_id, queue=f"node.{node_id}", broker_url=BROKER
    )
    agent = subprocess.Popen(
        agent_command("run", "--simulate", "2", "--state-dir", str(tmp_path)),
        env=agent_env(),
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = Celery("console-side", broker=BROKER, backend=BROKER)
    yield node_id, agent, client
    if agent.poll() is None:
        agent.kill()
    agent.communicate(timeout=WAIT_S)
    client.close()


def call(client: Celery, node_id: int, task: str) -> dict:
    result = client.send_task(task, queue=f"node.{node_id}")
    return result.get(timeout=60)


def wait_gone(pids: list[int]) -> list[int]:
    deadline = time.monotonic() + WAIT_S
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [
            p
            for p in pids
            if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        ]
    return alive


def test_ping_and_collect_facts_answer_on_the_nodes_queue(node):
    node_id, _agent, client = node
    pong = call(client, node_id, "hangar.agent.ping")
    assert pong["node_id"] == node_id and pong["agent_version"] == __version__
    facts = validate_facts(call(client, node_id, "hangar.agent.collect_facts"))
    assert facts["simulated"] is True and len(facts["gpus"]) == 2


def test_sigterm_stops_the_agent_and_its_worker_with_no_orphan(node):
    node_id, agent, client = node
    call(client, node_id, "hangar.agent.ping")  # the worker is up
    children = [c.pid for c in psutil.Process(agent.pid).children(recursive=True)]
    assert children  # the worker runs as a child process
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(WAIT_S) == 0
    assert wait_gone(children) == []


def test_the_worker_exits_by_itself_if_the_agent_is_killed(node):
    node_id, agent, client = node
    call(client, node_id, "hangar.agent.ping")
    children = [c.pid for c in psutil.Process(agent.pid).children(recursive=True)]
    agent.kill()  # SIGKILL: no chance to clean up; the kernel tells the worker
    agent.wait(WAIT_S)
    assert wait_gone(children) == []
