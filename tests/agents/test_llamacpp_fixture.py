"""What a real llama-server said on a real H200, read with Hangar's own code.

The fixtures in fixtures/llamacpp/ came back from one device run (recipe/device.sh):
llama.cpp 0c1e57098 built with CUDA for sm_90, a tiny random Llama model made with
transformers and converted to GGUF there, started by the agent's Supervisor from the
argument vector of Hangar's llama.cpp adapter, then queried. These tests pin that:

- the adapter still builds the argv that ran (a change to build_argv shows here);
- the agent's Prometheus parser reads the engine's real /metrics, and the engine
  table's choice for llama.cpp (no PrometheusNames: latency from health probes) is
  right because the real /metrics has no latency histogram;
- the completions and chat answers, streamed and not, have OpenAI's shape, which the
  gateway passes through (choices, delta, usage, the final [DONE]).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from agents import protocol
from agents.workers import engines, prometheus

HERE = Path(__file__).resolve().parent / "fixtures" / "llamacpp"
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


@pytest.fixture(scope="module")
def run() -> dict[str, Any]:
    return load("argv.json")


# --- the adapter ----------------------------------------------------------------


def spec_of(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "worker_id": 1,
        "deployment_id": 1,
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
    }


def test_the_argv_that_ran_is_what_build_argv_gives_today(run):
    spec = protocol.validate_worker_spec(spec_of(run))
    assert engines.build_argv(spec) == run["argv"]
    assert run["argv"][:3] == ["llama-server", "-m", f"{spec['model']['path']}/{run['gguf']}"]
    # Every engine flag that ran is in the adapter's table, and --metrics is among them.
    assert engines.validate_engine_args("llama.cpp", run["engine_args"]) == run["engine_args"]
    assert "--metrics" in run["engine_args"]


def test_the_supervisor_logged_that_argv_and_took_the_worker_to_ready_and_back(run):
    agent = load("agent.json")
    statuses = [{k: v for k, v in s.items() if k != "t"} for s in agent["statuses"]]
    for status in statuses:
        protocol.validate_worker_status(status)
    states = [s["state"] for s in statuses]
    assert states[0] == "pending" and states[-1] == "stopped"
    assert states.index("verifying") < states.index("starting") < states.index("ready")
    assert states.index("ready") < states.index("stopping")
    assert all(s["gpus"] == [0] and s["port"] == run["port"] for s in statuses)
    # The run log's first line is the agent's own record of what it started.
    first = agent["log_tail"]["lines"][0]
    assert first == f"[hangar-agent] run 1: {shlex.join(run['argv'])} (CUDA_VISIBLE_DEVICES=0)"
    assert (
        agent["snapshot_stopped"]["exit_code"] is None
        and agent["snapshot_stopped"]["cause"] is None
    )
    # Real NVML on the lease while it served: the H200, with the engine's memory in use.
    assert agent["nvml_facts"]["gpus"][0]["name"] == "NVIDIA H200"
    gpu = agent["nvml_sample_serving"]["gpus"][0]
    assert gpu["memory_used"] > 0 and not agent["nvml_sample_serving"]["problems"]
    assert agent["health"] == [200, '{"status":"ok"}']
    assert agent["props"]["build_info"].endswith(LLAMA_CPP_COMMIT)


# --- /metrics -------------------------------------------------------------------


@pytest.fixture(scope="module")
def samples() -> prometheus.Samples:
    return prometheus.parse_text((HERE / "metrics.txt").read_text())


def test_the_real_metrics_parse_with_the_agents_parser(samples):
    expected = {
        "llamacpp:prompt_tokens_total",
        "llamacpp:prompt_seconds_total",
        "llamacpp:tokens_predicted_total",
        "llamacpp:tokens_predicted_seconds_total",
        "llamacpp:n_decode_total",
        "llamacpp:prompt_tokens_seconds",
        "llamacpp:predicted_tokens_seconds",
        "llamacpp:requests_processing",
        "llamacpp:requests_deferred",
    }
    assert expected <= set(samples)
    # counter_total accepts either spelling, as it does for the other engines.
    assert prometheus.counter_total(
        samples, "llamacpp:tokens_predicted"
    ) == prometheus.counter_total(samples, "llamacpp:tokens_predicted_total")
    assert prometheus.counter_total(samples, "llamacpp:requests_processing") == 0


def test_no_latency_histogram_so_the_adapter_probes_for_latency(samples):
    """llama.cpp keeps no request histogram or request counter: the engine table's
    `metrics=None` (latency and error rate from health probes) is the right choice,
    and a PrometheusNames entry would have nothing to read."""
    assert engines.ENGINES["llama.cpp"].metrics is None
    assert not [name for name in samples if name.endswith(("_bucket", "_count", "_sum"))]
    agent = load("agent.json")
    [metrics] = agent["worker_metrics"]
    protocol.validate_worker_metrics(metrics)
    assert metrics["source"] == "probe" and metrics["error_rate"] == 0.0


def test_the_generation_counter_matches_every_usage_the_engine_reported(samples):
    completion = load("completion.json")
    timings = load("timings.json")
    stream_usage = [
        e for e in sse_events(completion["stream_sse"]) if e != "[DONE]" and "usage" in e
    ]
    chat_stream_usage = [
        e
        for e in sse_events((HERE / "chat-stream.txt").read_text())
        if e != "[DONE]" and "usage" in e
    ]
    reported = [
        completion["non_stream"]["usage"],
        *(e["usage"] for e in stream_usage),
        load("chat.json")["usage"],
        *(e["usage"] for e in chat_stream_usage),
        *(r["usage"] for r in timings["single_stream"]),
        *(r["usage"] for r in timings["concurrent_4"]["requests"]),
    ]
    warm_up = 256  # serve.py's warm-up request: max_tokens 256 with ignore_eos
    total = warm_up + sum(u["completion_tokens"] for u in reported)
    assert prometheus.counter_total(samples, "llamacpp:tokens_predicted_total") == total


# --- OpenAI's shapes ------------------------------------------------------------


def test_completion_has_openai_shape():
    body = load("completion.json")["non_stream"]
    assert body["object"] == "text_completion" and body["model"] == "tiny-llama"
    [choice] = body["choices"]
    assert isinstance(choice["text"], str) and choice["text"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length"
    check_usage(body["usage"])
    assert body["usage"]["completion_tokens"] == 32


def test_streamed_completion_ends_with_usage_then_done():
    events = sse_events(load("completion.json")["stream_sse"])
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    # llama.cpp puts usage on the chunk that carries finish_reason; OpenAI sends it in
    # an extra chunk with empty choices. The gateway must pass either through as is.
    with_usage = [c for c in chunks if "usage" in c]
    assert with_usage == [chunks[-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    check_usage(chunks[-1]["usage"])
    assert chunks[-1]["usage"]["completion_tokens"] == 8
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_chat_completion_has_openai_shape():
    body = load("chat.json")
    assert body["object"] == "chat.completion"
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] == "length"
    check_usage(body["usage"])
    assert body["usage"]["completion_tokens"] == 32
    assert body["system_fingerprint"].endswith(LLAMA_CPP_COMMIT)


def test_streamed_chat_has_openai_chunks_usage_chunk_and_done():
    events = sse_events((HERE / "chat-stream.txt").read_text())
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    # As OpenAI does with stream_options.include_usage: a last chunk with no choices.
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and [c for c in chunks if "usage" in c] == [usage_chunk]
    check_usage(usage_chunk["usage"])
    finish = chunks[-2]["choices"][0]
    assert finish["finish_reason"] == "length" and finish["delta"] == {}
    content = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert all(isinstance(piece, str) for piece in content)
    assert len(content) == usage_chunk["usage"]["completion_tokens"] == 12


# --- tokens/s -------------------------------------------------------------------


def test_timings_are_consistent_with_themselves():
    timings = load("timings.json")
    assert len(timings["single_stream"]) == 5
    for r in timings["single_stream"]:
        t = r["timings"]
        assert t["predicted_n"] == r["usage"]["completion_tokens"] == 256
        # llama.cpp's rate leaves out the first token (sampled from the prompt pass).
        assert t["predicted_per_second"] == pytest.approx(
            1000 * (t["predicted_n"] - 1) / t["predicted_ms"]
        )
        assert r["wall_tokens_per_s"] == pytest.approx(256 / r["elapsed_s"], rel=0.01)
    concurrent = timings["concurrent_4"]
    assert concurrent["completion_tokens"] == 4 * 256
    assert concurrent["aggregate_tokens_per_s"] == pytest.approx(
        concurrent["completion_tokens"] / concurrent["wall_s"], rel=0.01
    )
    # What docs/benchmarks.md quotes.
    assert round(timings["single_stream_decode_tokens_per_s_median"]) == 4702
    assert timings["single_stream_wall_tokens_per_s_median"] == 4477.1
    assert concurrent["aggregate_tokens_per_s"] == 8625.6
