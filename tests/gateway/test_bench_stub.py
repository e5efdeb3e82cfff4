"""The benchmark's stub engine (tests/bench/gateway.py) answers like an OpenAI server.

`make bench-gateway` measures the gateway against this stub; if the stub stopped
answering like an engine, the benchmark would measure something else unnoticed.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from tests.gateway.conftest import http
from tests.support import processes

SECRET = "stub-secret-" + "x" * 16
CHAT = {"model": "bench", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def stub(tmp_path) -> str:
    """A real stub process with one worker port; its chat completions URL."""
    port = processes.free_port()
    argv = [sys.executable, "-m", "tests.bench.gateway", "stub", "--worker", f"{port}={SECRET}"]
    argv += ["--chunk-rate", "200", "--max-seconds", "120"]
    proc = processes.start(argv, os.environ.copy(), tmp_path / "stub.log")
    processes.wait_for(
        lambda: http("GET", f"http://127.0.0.1:{port}/health")[1]["status"] == "ok",
        what="the stub to answer",
        process=proc,
    )
    yield f"http://127.0.0.1:{port}/v1/chat/completions"
    processes.stop(proc)


def _events(raw: str) -> list[str]:
    return [event for event in raw.split("\n\n") if event]


def test_a_chat_completion_has_openais_shape_and_usage(stub):
    status, body, headers = http("POST", stub, CHAT, SECRET)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_a_stream_sends_max_tokens_chunks_with_their_send_time_then_done(stub):
    request = {**CHAT, "stream": True, "max_tokens": 5, "stream_options": {"include_usage": True}}
    status, raw, headers = http("POST", stub, request, SECRET)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = _events(raw)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    tokens = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(tokens) == 5
    assert tokens[0]["choices"][0]["delta"]["role"] == "assistant"
    sent = [c["sent_at"] for c in tokens]
    assert sent == sorted(sent)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5


def test_a_stream_without_include_usage_has_no_usage_chunk(stub):
    status, raw, _ = http("POST", stub, {**CHAT, "stream": True, "max_tokens": 2}, SECRET)
    assert status == 200
    events = _events(raw)
    assert events[-1] == "data: [DONE]"
    assert all("usage" not in json.loads(e.removeprefix("data: ")) for e in events[:-1])


@pytest.mark.parametrize("key", [None, "not-the-secret"])
def test_a_request_without_the_workers_secret_is_refused(stub, key):
    status, body, _ = http("POST", stub, CHAT, key)
    assert status == 401
    assert body["error"]["code"] == "invalid_api_key" and body["error"]["message"]
