"""llama-server behind Hangar's gateway, read back from what the device run recorded.

The files in fixtures/llamacpp/gateway/ come from recipe/device-gateway.sh (the
serve step is recipe/gateway.py): the agent's Supervisor starts llama-server from a
WORKER_SPEC with an `api_key` (the adapter passes --api-key-file), then
redis-server and `python3 -m apps.gateway.proxy.server` start, the script writes the
snapshot the console would publish, and every request goes through the gateway
with a consumer key. These tests pin that:

- the engine refused a request to its port without the key (and with a wrong one),
  answered one with it, and the key never reached the command line;
- the gateway's answers have OpenAI's shape; its streamed chat and completion end
  with [DONE] and carry usage; its refusals are OpenAI-shaped errors;
- the gateway's /metrics counted the requests, first chunks and tokens per route and
  deployment, and reported the same numbers to Redis for the console;
- the tokens/s it recorded agree with themselves.

The fixtures are committed; to check a fresh run's $OUT before committing it:
HANGAR_LLAMACPP_GATEWAY_FIXTURES=DIR.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
from pathlib import Path
from typing import Any

import pytest

from agents import protocol
from agents.workers import engines, prometheus
from apps.gateway.proxy.state import Snapshot

HERE = Path(
    os.environ.get("HANGAR_LLAMACPP_GATEWAY_FIXTURES")
    or Path(__file__).resolve().parent / "fixtures" / "llamacpp" / "gateway"
)
LLAMA_CPP_COMMIT = "0c1e57098"


def load(name: str) -> Any:
    return json.loads((HERE / name).read_text())


def sse_events(text: str) -> list[Any]:
    """The `data:` payloads of a server-sent event stream, in order ([DONE] kept)."""
    events = []
    for line in text.splitlines():
        if not line.startswith("data: "):
            assert not line.strip(), f"unexpected line in the stream: {line!r}"
            continue
        payload = line[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def check_usage(usage: dict[str, Any]) -> None:
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert type(usage[key]) is int and usage[key] >= 0, key
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def check_error(body: dict[str, Any], code: str) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code and body["error"]["message"]


@pytest.fixture(scope="module")
def run() -> dict[str, Any]:
    record = load("gateway.json")
    assert "error" not in record, record.get("error")
    return record


@pytest.fixture(scope="module")
def timings() -> dict[str, Any]:
    return load("timings.json")


@pytest.fixture(scope="module")
def samples():
    return prometheus.parse_text((HERE / "gateway-metrics.txt").read_text())


# --- the engine secret ----------------------------------------------------------


def test_the_argv_passes_a_key_file_and_never_the_key(run):
    spec = protocol.validate_worker_spec(
        {
            "worker_id": 1,
            "deployment_id": run["deployment"]["id"],
            "engine": "llama.cpp",
            "engine_args": run["engine_args"],
            "model": {
                "version_id": 1,
                "path": f"{run['model_root']}/tiny-llama/v1",
                "files": [
                    {"path": run["gguf"], "sha256": run["gguf_sha256"], "size": run["gguf_size"]}
                ],
            },
            "gpus": [0],
            "port": run["port"],
            "health_path": None,
            "command": None,
            "api_key": "k" * 43,  # any key: the argv names only its file
        }
    )
    key_file = run["argv"][run["argv"].index("--api-key-file") + 1]
    assert engines.build_argv(spec, api_key_file=key_file) == run["argv"]
    assert run["secret_on_command_line"] is False
    assert run["key_file_mode"] == "0o600"
    assert "<engine-secret>" not in " ".join(run["argv"])


def test_the_worker_reached_ready_with_its_key(run):
    states = run["statuses"]
    assert states[0] == "pending" and states[-1] == "stopped"
    assert states.index("starting") < states.index("ready") < states.index("stopping")
    assert run["worker_ready"]["state"] == "ready"


def test_the_engine_refused_requests_without_its_key(run):
    direct = run["direct"]
    assert direct["no_key"]["status"] == 401
    assert direct["wrong_key"]["status"] == 401
    assert direct["models_no_key_status"] == 401
    # llama-server answers a refusal in OpenAI's error shape too.
    assert direct["no_key"]["answer"]["error"]["type"] == "authentication_error"
    # With the key: an answer. /health stays open (the supervisor probes it).
    assert direct["engine_secret"]["status"] == 200
    assert direct["engine_secret"]["answer"]["object"] == "text_completion"
    assert direct["health_no_key"][0] == 200


# --- the gateway: OpenAI's shapes -------------------------------------------------


def test_the_snapshot_written_is_what_the_gateway_parses(run):
    written = run["snapshot_written"]
    [(marker, key)] = written["keys"].items()
    assert marker == "sha256(<consumer-key>)"
    raw = json.dumps({**written, "keys": {hashlib.sha256(b"x").hexdigest(): key}})
    snapshot = Snapshot.parse(raw.encode())
    assert list(snapshot.routes) == [run["route"]]
    [worker] = snapshot.deployments[str(run["deployment"]["id"])]["workers"]
    assert worker["secret"] == "<engine-secret>"  # scrubbed in the fixture
    assert worker["url"] == f"http://127.0.0.1:{run['port']}"


def test_health_says_ok_with_the_snapshot(run):
    for name in ("healthz", "healthz_after"):
        assert run[name]["status"] == 200
        body = run[name]["body"]
        assert body["status"] == "ok" and body["redis"] == "ok"
        assert body["snapshot_generation"] == 1 and body["routes"] == 1
        assert 0 <= body["snapshot_age_s"] < body["stale_after_s"]


def test_models_lists_the_route(run):
    models = run["gateway"]["models"]
    assert models["status"] == 200
    assert models["body"]["object"] == "list"
    assert [m["id"] for m in models["body"]["data"]] == [run["route"]]
    assert all(m["object"] == "model" and m["owned_by"] == "hangar" for m in models["body"]["data"])


def test_the_gateway_refuses_without_a_valid_key(run):
    via = run["gateway"]
    assert via["completion_no_key"]["status"] == 401
    check_error(via["completion_no_key"]["body"], "missing_api_key")
    assert via["completion_bad_key"]["status"] == 401
    check_error(via["completion_bad_key"]["body"], "invalid_api_key")


def test_completion_through_the_gateway_has_openai_shape(run):
    answer = run["gateway"]["completion"]
    assert answer["status"] == 200
    assert answer["deployment_header"] == run["deployment"]["name"]
    body = answer["body"]
    assert body["object"] == "text_completion" and body["model"] == "tiny-llama"
    [choice] = body["choices"]
    assert isinstance(choice["text"], str) and choice["text"]
    assert choice["index"] == 0 and choice["finish_reason"] in ("length", "stop")
    check_usage(body["usage"])
    assert 0 < body["usage"]["completion_tokens"] <= 32


def test_streamed_completion_through_the_gateway_ends_with_usage_then_done(run):
    assert run["gateway"]["completion_stream_status"] == 200
    events = sse_events((HERE / "completion-stream.txt").read_text())
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    chunks = events[:-1]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    # llama.cpp puts usage on the chunk with finish_reason; the gateway passes it on.
    [with_usage] = [c for c in chunks if c.get("usage")]
    check_usage(with_usage["usage"])
    assert 0 < with_usage["usage"]["completion_tokens"] <= 8


def test_chat_through_the_gateway_has_openai_shape(run):
    answer = run["gateway"]["chat"]
    assert answer["status"] == 200
    assert answer["deployment_header"] == run["deployment"]["name"]
    body = answer["body"]
    assert body["object"] == "chat.completion"
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("length", "stop")
    check_usage(body["usage"])
    assert 0 < body["usage"]["completion_tokens"] <= 32
    assert body["system_fingerprint"].endswith(LLAMA_CPP_COMMIT)


def test_streamed_chat_through_the_gateway_ends_with_done_and_carries_usage(run):
    assert run["gateway"]["chat_stream_status"] == 200
    events = sse_events((HERE / "chat-stream.txt").read_text())
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and [c for c in chunks if "usage" in c] == [usage_chunk]
    check_usage(usage_chunk["usage"])
    assert 0 < usage_chunk["usage"]["completion_tokens"] <= 12
    assert chunks[-2]["choices"][0]["finish_reason"] in ("length", "stop")


# --- the gateway's metrics --------------------------------------------------------


def gateway_runs(timings: dict[str, Any]) -> list[dict[str, Any]]:
    return timings["runs"]["gateway_plain"] + timings["runs"]["gateway_stream"]


def stream_usage(name: str) -> dict[str, Any]:
    [usage] = [e["usage"] for e in sse_events((HERE / name).read_text())[:-1] if e.get("usage")]
    return usage


def tokens_via_gateway(run: dict[str, Any], timings: dict[str, Any]) -> int:
    """Every completion token the gateway passed on: the four answers, the warm-up, the runs."""
    tokens = run["gateway"]["completion"]["body"]["usage"]["completion_tokens"]
    tokens += run["gateway"]["chat"]["body"]["usage"]["completion_tokens"]
    tokens += stream_usage("completion-stream.txt")["completion_tokens"]
    tokens += stream_usage("chat-stream.txt")["completion_tokens"]
    tokens += timings["request"]["max_tokens"]  # the warm-up (ignore_eos)
    return tokens + sum(r["completion_tokens"] for r in gateway_runs(timings))


def test_metrics_counted_every_request_per_route_and_deployment(run, timings, samples):
    where = {"route": run["route"], "deployment": str(run["deployment"]["id"])}
    # completion, its stream, chat, its stream, the warm-up, then the measured runs.
    answered = 4 + 1 + len(gateway_runs(timings))
    requests = prometheus.counter_total(samples, "hangar_gateway_requests_total", where)
    assert requests == answered
    assert (
        prometheus.counter_total(samples, "hangar_gateway_requests_total", {**where, "code": "2xx"})
        == answered
    )
    latency = prometheus.counter_total(samples, "hangar_gateway_request_seconds_count", where)
    assert latency == answered
    streams = 2 + len(timings["runs"]["gateway_stream"])
    assert prometheus.counter_total(samples, "hangar_gateway_first_token_seconds_count", where) == (
        streams
    )
    # Every completion token the gateway passed on, streamed or not, from usage.
    assert prometheus.counter_total(
        samples, "hangar_gateway_tokens_total", {**where, "kind": "completion"}
    ) == tokens_via_gateway(run, timings)
    assert (
        prometheus.counter_total(
            samples, "hangar_gateway_tokens_total", {**where, "kind": "prompt"}
        )
        > 0
    )
    assert prometheus.counter_total(samples, "hangar_gateway_in_flight", where) == 0
    # The two refusals, by reason; /v1/models is not a request to a deployment.
    for reason in ("no-key", "invalid-key"):
        assert (
            prometheus.counter_total(samples, "hangar_gateway_refused_total", {"reason": reason})
            == 1
        )
    assert prometheus.counter_total(samples, "hangar_gateway_redis_up") == 1
    assert prometheus.counter_total(samples, "hangar_gateway_upstream_retries_total") == 0


def test_the_report_to_the_console_matches_metrics(run, samples):
    report = run["gateway_report_to_console"]
    [entry] = report["entries"]
    assert entry["route"] == run["route"] and entry["deployment"] == str(run["deployment"]["id"])
    where = {"route": run["route"]}
    assert entry["requests"]["2xx"] == prometheus.counter_total(
        samples, "hangar_gateway_requests_total", where
    )
    assert entry["tokens"]["completion"] == prometheus.counter_total(
        samples, "hangar_gateway_tokens_total", {**where, "kind": "completion"}
    )


def test_the_gateway_and_the_engine_counted_the_same_tokens(run, timings):
    engine = prometheus.parse_text((HERE / "engine-metrics.txt").read_text())
    predicted = prometheus.counter_total(engine, "llamacpp:tokens_predicted_total")
    # The engine also generated the direct requests and the three key probes' answer.
    direct = timings["request"]["max_tokens"] + sum(
        r["completion_tokens"]
        for r in timings["runs"]["direct_plain"] + timings["runs"]["direct_stream"]
    )
    direct += run["direct"]["engine_secret"]["answer"]["usage"]["completion_tokens"]
    assert predicted == direct + tokens_via_gateway(run, timings)


# --- tokens/s -------------------------------------------------------------------


def test_timings_agree_with_themselves(timings):
    n = timings["request"]["max_tokens"]
    for name, runs in timings["runs"].items():
        assert len(runs) == timings["repetitions"], name
        for r in runs:
            assert r["status"] == 200 and r["completion_tokens"] == n, name
            assert r["tokens_per_s"] == pytest.approx(n / r["seconds"], rel=0.01)
            if name.endswith("stream"):
                assert r["ends_with_done"] and 0 < r["first_chunk_s"] <= r["seconds"]
        median = statistics.median(r["tokens_per_s"] for r in runs)
        assert timings["median_tokens_per_s"][name] == pytest.approx(median)
    for mode in ("plain", "stream"):
        medians = timings["median_tokens_per_s"]
        ratio = medians[f"gateway_{mode}"] / medians[f"direct_{mode}"]
        assert timings["gateway_over_direct"][mode] == pytest.approx(ratio, abs=1e-4)


def test_the_numbers_docs_benchmarks_quotes(timings):
    assert timings["median_tokens_per_s"] == {
        "direct_plain": 4409.6,
        "direct_stream": 4279.4,
        "gateway_plain": 4246.7,
        "gateway_stream": 4449.4,
    }
    assert timings["gateway_over_direct"] == {"plain": 0.9631, "stream": 1.0397}
