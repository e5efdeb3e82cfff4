"""The websocket stream against a real `websockets` server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import random
import re
import signal
import subprocess
import threading
import time

import pytest

from agents import protocol
from agents.buffer import SampleBuffer, weight
from agents.collect import Collector
from agents.simulate import SimulatedSource
from agents.stream import (
    CredentialRefused,
    backoff_delay,
    console_list,
    run_agent,
    websocket_url,
)
from tests.agents.agent_helpers import (
    CREDENTIAL,
    REPO_ROOT,
    WAIT_S,
    FakeConsole,
    agent_command,
    agent_env,
    write_credential,
)


class AgentThread:
    """The real agent loop (simulated GPUs, fast interval and backoff) on a thread."""

    def __init__(self, console_url: str | list[str], interval: float = 0.05) -> None:
        self.buffer = SampleBuffer()
        self.collector = Collector(SimulatedSource(2, seed=1))
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._main(console_url, interval),), daemon=True
        )
        self._thread.start()
        self._ready.wait(WAIT_S)

    async def _main(self, console_url: str | list[str], interval: float) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        try:
            await run_agent(
                console_url,
                CREDENTIAL,
                self.collector,
                interval,
                self._stop,
                buffer=self.buffer,
                backoff_base=0.05,
                backoff_cap=0.2,
            )
        except BaseException as exc:
            self.error = exc

    def join(self) -> None:
        self._thread.join(WAIT_S)

    def close(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self.join()


@pytest.fixture
def start_agent():
    agents: list[AgentThread] = []

    def start(console_url: str | list[str]) -> AgentThread:
        agents.append(AgentThread(console_url))
        return agents[-1]

    yield start
    for agent in agents:
        agent.close()


def seqs_of(message: dict) -> list[int]:
    if message["type"] == "telemetry":
        return [message["sample"]["seq"]]
    return [s["seq"] for s in message["samples"]]


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


# --- pure parts ------------------------------------------------------------------


def test_backoff_grows_exponentially_is_capped_and_jittered():
    rng = random.Random(0)
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0)]:
        delays = [backoff_delay(attempt, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 100  # jittered: a fleet does not retry in step
    assert backoff_delay(10_000, rng) <= 10.0


def test_console_urls_map_to_the_agent_websocket():
    assert websocket_url("https://hangar.example.com") == "wss://hangar.example.com/ws/agent/"
    assert websocket_url("http://10.0.0.5:8000/") == "ws://10.0.0.5:8000/ws/agent/"
    assert websocket_url("https://x.example/hangar") == "wss://x.example/hangar/ws/agent/"
    with pytest.raises(ValueError, match="must start with http"):
        websocket_url("10.0.0.5:8000")


# --- against a real websocket server ----------------------------------------------


def test_the_agent_says_hello_first_then_streams_consecutive_samples(fake_console, start_agent):
    start_agent(fake_console.url)
    _number, hello = fake_console.next_message()
    assert hello["type"] == "hello" and hello["protocol"] == protocol.PROTOCOL_VERSION
    facts = protocol.validate_facts(hello["facts"])
    assert facts["simulated"] is True and len(facts["gpus"]) == 2
    seqs: list[int] = []
    while len(seqs) < 10:
        _, message = fake_console.next_message()
        protocol.validate_message(message)
        seqs += seqs_of(message)
    assert seqs == list(range(1, len(seqs) + 1))
    assert fake_console.authorization == [f"Bearer {CREDENTIAL}"]


def test_after_a_dropped_connection_the_agent_reconnects_and_says_hello_again(
    fake_console, start_agent
):
    start_agent(fake_console.url)
    last_seq = 0
    while last_seq < 3:
        _, message = fake_console.wait_for("telemetry")
        last_seq = message["sample"]["seq"]
    fake_console.drop_connections()
    while True:  # skip what was still in flight on the first connection
        number, message = fake_console.next_message()
        if number == 2:
            break
    assert message["type"] == "hello"
    _, message = fake_console.next_message()
    assert seqs_of(message)[0] > last_seq  # the sequence continues, no restart at 1


def test_samples_taken_during_an_outage_arrive_as_a_batch_after_hello(start_agent):
    console = FakeConsole().start()
    try:
        agent = start_agent(console.url)
        _, message = console.wait_for("telemetry")
        console.stop()  # console down: listener and connection gone
        wait_until(lambda: len(agent.buffer) >= 15, "15 samples buffered during the outage")
        console.start()  # back on the same port
        while True:
            number, message = console.next_message()
            if number == 2:
                break
        assert message["type"] == "hello"
        _, batch = console.next_message()
        assert batch["type"] == "batch"
        protocol.validate_message(batch)
        seqs = seqs_of(batch)
        assert len(seqs) >= 15
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # oldest first, no gap
        assert all(weight(s) == 1 for s in batch["samples"])  # short outage: nothing merged
    finally:
        console.close()


def test_console_addresses_come_as_a_list_or_comma_separated_each_once():
    assert console_list("https://a, https://b") == ["https://a", "https://b"]
    assert console_list(["https://a,https://b", "https://a", "https://c"]) == [
        "https://a",
        "https://b",
        "https://c",
    ]
    with pytest.raises(ValueError):
        console_list(" , ")


def record_until(console: FakeConsole, type_: str, seqs: list[int]) -> dict:
    """Like wait_for, keeping the sequence numbers of every sample passed on the way."""
    while True:
        _, message = console.next_message()
        if message["type"] in ("telemetry", "batch"):
            seqs.extend(seqs_of(message))
        if message["type"] == type_:
            return message


def test_when_its_console_host_goes_down_the_agent_streams_to_the_next_losing_nothing(
    start_agent,
):
    first, second = FakeConsole().start(), FakeConsole().start()
    seqs: list[int] = []
    try:
        start_agent([first.url, second.url])
        for _ in range(3):
            record_until(first, "telemetry", seqs)
        first.stop()  # the first host is lost
        record_until(second, "hello", seqs)  # the agent moved on, and says hello there
        for _ in range(3):
            record_until(second, "telemetry", seqs)
        while not first.messages.empty():  # what the first had before it went
            record_until(first, first.messages.queue[-1][1]["type"], seqs)
        assert len(seqs) == len(set(seqs))
        # Everything from the first sample to the last arrived on one host or the other.
        assert sorted(seqs) == list(range(min(seqs), max(seqs) + 1))
    finally:
        first.close()
        second.close()


def test_the_agent_goes_back_to_the_first_console_when_the_second_is_lost(start_agent):
    first, second = FakeConsole().start(), FakeConsole().start()
    try:
        start_agent([first.url, second.url])
        first.wait_for("telemetry")
        first.stop()
        second.wait_for("telemetry")
        first.start()  # back on its port
        second.stop()
        number, message = first.wait_for("hello")
        assert number == 2 and message["type"] == "hello"
    finally:
        first.close()
        second.close()


def test_a_refused_credential_stops_the_agent_without_retrying(start_agent):
    console = FakeConsole(refuse=True).start()
    try:
        agent = start_agent(console.url)
        agent.join()
        assert isinstance(agent.error, CredentialRefused)
        assert len(console.authorization) == 1
    finally:
        console.close()


# --- the real command --------------------------------------------------------------


def test_hangar_agent_run_streams_to_the_console_and_stops_on_sigterm(fake_console, tmp_path):
    write_credential(tmp_path, fake_console.url)
    agent = subprocess.Popen(
        agent_command(
            "run",
            "--simulate",
            "2",
            "--no-celery",
            "--interval",
            "0.2",
            "--state-dir",
            str(tmp_path),
        ),
        env=agent_env(),
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, hello = fake_console.next_message()
        assert hello["type"] == "hello"
        assert len(protocol.validate_facts(hello["facts"])["gpus"]) == 2
        _, message = fake_console.wait_for("telemetry")
        sample = protocol.validate_sample(message["sample"])
        assert sample["simulated"] is True and len(sample["gpus"]) == 2
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=WAIT_S)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert agent.returncode == 0, stderr
    assert stderr.strip().splitlines()[-1].endswith("stopped")
    # What the console already got is not counted as still to send (nor sent
    # again): a stop is not a lost connection (agents/unacked.py).
    assert "unacknowledged" not in stderr
    [(sweeps, unsent)] = re.findall(r"stopped after (\d+) sweeps, (\d+) not sent", stderr)
    assert int(sweeps) >= 1 and int(unsent) == 0, stderr


def test_hangar_agent_run_exits_3_with_one_line_when_the_credential_is_refused(tmp_path):
    console = FakeConsole(refuse=True).start()
    write_credential(tmp_path, console.url)
    try:
        result = subprocess.run(
            agent_command("run", "--simulate", "1", "--no-celery", "--state-dir", str(tmp_path)),
            env=agent_env(),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=WAIT_S,
        )
    finally:
        console.close()
    assert result.returncode == 3
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("hangar-agent: the console refused this node's credential")
    assert "enroll it again" in last
