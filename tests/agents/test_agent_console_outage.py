"""A console outage longer than the buffer: the agent runs on, says how full it is, loses nothing.

The real `hangar-agent run` (8 simulated GPUs) against a console that goes away
for more sweeps than the buffer holds (600): at 1 s a sweep that is a
ten-minute outage; here the sweeps come every 0.1 s (the least `run` takes), so it
takes about 70 s.
"""

from __future__ import annotations

import json
import subprocess
import time

from agents import protocol
from agents.buffer import DEFAULT_CAPACITY, weight
from tests.agents.agent_helpers import (
    REPO_ROOT,
    WAIT_S,
    FakeConsole,
    agent_command,
    agent_env,
    write_credential,
)

OUTAGE_WAIT_S = 240.0  # generous: waited on, never asserted


def status(state_dir) -> tuple[int, dict]:
    done = subprocess.run(
        agent_command("status", "--json", "--state-dir", str(state_dir)),
        env=agent_env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {}


def wait_until(condition, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except (KeyError, ValueError):
            pass  # health.json not written yet
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.2)


def test_an_outage_longer_than_the_buffer_is_survived_shown_and_accounted_for(tmp_path):
    console = FakeConsole().start()
    write_credential(tmp_path, console.url)
    log_path = tmp_path / "agent.log"
    with open(log_path, "w") as log:
        agent = subprocess.Popen(
            agent_command(
                *("run", "--simulate", "8", "--no-celery", "--interval", "0.1"),
                *("--state-dir", str(tmp_path)),
            ),
            env=agent_env(),
            cwd=REPO_ROOT,
            stderr=log,
        )
    try:
        console.wait_for("telemetry")
        wait_until(lambda: status(tmp_path)[0] == 0, "status to say connected")
        console.stop()
        # Past the capacity: older samples merge, memory stays bounded, the agent runs on.
        wait_until(
            lambda: status(tmp_path)[1]["buffer"]["sweeps"] > DEFAULT_CAPACITY + 100,
            "more sweeps buffered than the buffer holds",
            timeout=OUTAGE_WAIT_S,
        )
        code, health = status(tmp_path)
        assert code == 1 and not health["connected"]
        assert health["pid"] == agent.pid and agent.poll() is None
        fill = health["buffer"]
        assert fill["samples"] == fill["capacity"] == DEFAULT_CAPACITY
        assert fill["percent"] == 100 and fill["merged_total"] > 0
        assert "% full" in log_path.read_text()  # the log says how full, too

        console.start()
        while console.next_message()[1]["type"] != "hello":
            pass
        replayed = []
        while len(replayed) < DEFAULT_CAPACITY:
            message = console.next_message()[1]
            if message["type"] == "batch":
                protocol.validate_message(message)
                replayed += message["samples"]
        wait_until(lambda: status(tmp_path)[0] == 0, "status to say connected again")
    finally:
        agent.terminate()
        agent.wait(WAIT_S)
        console.close()
    seqs = [s["seq"] for s in replayed]
    assert seqs == sorted(seqs)
    # Folded, never dropped: from the first replayed sweep on, each one is in a sample.
    first = replayed[0]["seq"] - weight(replayed[0]) + 1
    assert sum(weight(s) for s in replayed) == replayed[-1]["seq"] - first + 1
    assert max(weight(s) for s in replayed) > 1
    assert all(weight(s) == 1 for s in replayed[-DEFAULT_CAPACITY // 2 :])  # newest exact
