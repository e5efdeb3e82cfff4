"""The pure parts of workers: engines, Prometheus, latency, exits, GPU release, protocol."""

from __future__ import annotations

import copy
import math

import pytest

from agents import protocol
from agents.protocol import ProtocolError
from agents.workers import engines, exits, gpu_release, latency, prometheus, verify
from agents.workers.engines import ENGINES, EngineArgsError, build_argv, validate_engine_args
from agents.workers.runlog import RunLogs
from agents.workers.supervisor import OperationLog

# --- engines ---------------------------------------------------------------------


def spec(engine: str, args: list[str] | None = None, **extra) -> dict:
    base = {
        "worker_id": 41,
        "deployment_id": 7,
        "engine": engine,
        "engine_args": args or [],
        "model": {
            "version_id": 3,
            "path": "/srv/models/qwen/v1",
            "files": [
                {"path": "model-00002-of-00002.gguf", "sha256": "a" * 64, "size": 1},
                {"path": "model-00001-of-00002.gguf", "sha256": "b" * 64, "size": 1},
            ],
        },
        "gpus": [0, 1],
        "port": 8101,
        "health_path": None,
        "command": None,
        "api_key": None,
    }
    base.update(extra)
    return base


def test_the_allowlists_are_importable_data_for_the_console():
    assert set(ENGINES) == {"vllm", "sglang", "llama.cpp", "generic", "reference"}
    assert ENGINES["vllm"].flags["--tensor-parallel-size"] == ("int", 1, 64)
    assert "--trust-remote-code" in ENGINES["vllm"].refused
    assert set(ENGINES) == protocol.ENGINES


def test_vllm_argv_is_serve_model_host_port_then_the_allowed_flags():
    argv = build_argv(
        spec("vllm", ["--max-model-len", "8192", "--dtype=bfloat16", "--enforce-eager"])
    )
    assert argv == [
        "vllm", "serve", "/srv/models/qwen/v1", "--host", "127.0.0.1", "--port", "8101",
        "--max-model-len", "8192", "--dtype", "bfloat16", "--enforce-eager",
    ]  # fmt: skip


def test_sglang_llama_cpp_reference_and_generic_argv():
    assert build_argv(spec("sglang"))[1:5] == [
        "-m",
        "sglang.launch_server",
        "--model-path",
        "/srv/models/qwen/v1",
    ]
    llama = build_argv(spec("llama.cpp", ["--ctx-size", "4096"]))
    assert llama[:3] == ["llama-server", "-m", "/srv/models/qwen/v1/model-00001-of-00002.gguf"]
    reference = build_argv(spec("reference"), host="0.0.0.0")
    assert reference[1:] == [
        "-m", "agents.reference_engine", "--model", "/srv/models/qwen/v1",
        "--host", "0.0.0.0", "--port", "8101",
    ]  # fmt: skip
    generic = spec("generic", command=["/opt/srv", "--listen", "{host}:{port}", "{model_path}"])
    assert build_argv(generic) == ["/opt/srv", "--listen", "127.0.0.1:8101", "/srv/models/qwen/v1"]


@pytest.mark.parametrize(
    ("engine", "args", "message"),
    [
        ("vllm", ["--trust-remote-code"], "runs Python code shipped with the model"),
        ("sglang", ["--trust-remote-code"], "never allows it"),
        ("vllm", ["--port", "9000"], "the agent sets it"),
        ("vllm", ["--max-model-len"], "needs a value"),
        ("vllm", ["--max-model-len", "lots"], "needs a number"),
        ("vllm", ["--gpu-memory-utilization", "1.5"], "outside"),
        ("vllm", ["--dtype", "int3"], "must be one of"),
        ("vllm", ["--served-model-name", "a b"], "is not allowed"),
        ("vllm", ["--served-model-name", "../../etc"], "is not allowed"),
        ("vllm", ["--enforce-eager=1"], "takes no value"),
        ("vllm", ["--load-format", "x"], "is not an allowed vllm flag"),
        ("vllm", ["8192"], "is not a flag"),
        ("generic", ["--anything"], "takes no engine_args"),
        ("nope", [], "unknown engine"),
    ],
)
def test_engine_args_outside_the_table_are_refused_with_a_reason(engine, args, message):
    with pytest.raises(EngineArgsError, match=message.replace("(", r"\(")):
        validate_engine_args(engine, args)


KEY = "Zq3-_x" * 7 + "A"  # 43 URL-safe characters, like secrets.token_urlsafe(32)
KEY_FILE = "/var/lib/hangar-agent/workers/41/api-key"


def test_a_spec_from_before_engine_keys_is_valid_and_has_no_key():
    old = spec("vllm")
    del old["api_key"]
    assert protocol.validate_worker_spec(old)["api_key"] is None
    assert "--api-key" not in build_argv(old) and engines.key_environment(old) == {}


def test_engines_that_read_a_file_get_its_path_never_the_key():
    for engine in ("reference", "llama.cpp"):
        argv = build_argv(spec(engine, api_key=KEY), api_key_file=KEY_FILE)
        assert argv[argv.index("--api-key-file") + 1] == KEY_FILE
        assert KEY not in " ".join(argv)
        assert engines.key_environment(spec(engine, api_key=KEY)) == {}


def test_vllm_gets_the_key_in_its_environment_not_its_argv():
    keyed = spec("vllm", api_key=KEY)
    assert KEY not in " ".join(build_argv(keyed, api_key_file=KEY_FILE))
    assert engines.key_environment(keyed) == {"VLLM_API_KEY": KEY}


def test_sglang_gets_the_key_on_its_command_line_its_one_way():
    argv = build_argv(spec("sglang", api_key=KEY), api_key_file=KEY_FILE)
    assert argv[argv.index("--api-key") + 1] == KEY
    assert engines.key_environment(spec("sglang", api_key=KEY)) == {}


def test_a_generic_engine_gets_the_key_in_its_environment_and_the_file_placeholder():
    command = ["/opt/srv", "--port", "{port}", "--key-file={api_key_file}"]
    keyed = spec("generic", command=command, health_path="/h", api_key=KEY)
    assert build_argv(keyed, api_key_file=KEY_FILE)[-1] == f"--key-file={KEY_FILE}"
    assert engines.key_environment(keyed) == {"HANGAR_ENGINE_API_KEY": KEY}
    unkeyed = spec("generic", command=command, health_path="/h")
    with pytest.raises(EngineArgsError, match="has no API key"):
        build_argv(unkeyed, api_key_file=KEY_FILE)


@pytest.mark.parametrize(
    ("engine", "flag"),
    [
        ("vllm", "--api-key"),
        ("sglang", "--api-key"),
        ("llama.cpp", "--api-key"),
        ("llama.cpp", "--api-key-file"),
        ("reference", "--api-key-file"),
    ],
)
def test_a_deployment_cannot_set_an_engine_key_of_its_own(engine, flag):
    with pytest.raises(EngineArgsError, match="its own secret"):
        validate_engine_args(engine, [flag, "/tmp/k"])


def test_a_llama_cpp_model_without_gguf_cannot_build():
    s = spec("llama.cpp")
    s["model"]["files"] = [{"path": "model.safetensors", "sha256": "a" * 64, "size": 1}]
    with pytest.raises(EngineArgsError, match="gguf"):
        build_argv(s)


def test_health_path_comes_from_the_engine_or_the_spec():
    assert engines.health_path(spec("vllm")) == "/health"
    assert engines.health_path(spec("generic", health_path="/ready", command=["x"])) == "/ready"


# --- Prometheus ------------------------------------------------------------------

VLLM_METRICS = """\
# HELP vllm:e2e_request_latency_seconds Histogram of end to end request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{le="0.1",model_name="m"} {b1}
vllm:e2e_request_latency_seconds_bucket{le="0.5",model_name="m"} {b2}
vllm:e2e_request_latency_seconds_bucket{le="1.0",model_name="m"} {b3}
vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="m"} {b3}
vllm:e2e_request_latency_seconds_count{model_name="m"} {b3}
vllm:e2e_request_latency_seconds_sum{model_name="m"} 12.5
vllm:request_success_total{finished_reason="stop",model_name="m"} {ok}
vllm:request_success_total{finished_reason="abort",model_name="m"} {aborted}
"""


def vllm_text(b1, b2, b3, ok, aborted) -> str:
    return (
        VLLM_METRICS.replace("{b1}", str(b1))
        .replace("{b2}", str(b2))
        .replace("{b3}", str(b3))
        .replace("{ok}", str(ok))
        .replace("{aborted}", str(aborted))
    )


def test_parse_text_reads_names_labels_and_values():
    samples = prometheus.parse_text(vllm_text(1, 2, 3, 4, 5) + 'x{a="q\\"uote"} NaN\nbad line\n')
    buckets = prometheus.histogram_buckets(samples, "vllm:e2e_request_latency_seconds")
    assert buckets == {0.1: 1.0, 0.5: 2.0, 1.0: 3.0, math.inf: 3.0}
    assert prometheus.counter_total(samples, "vllm:request_success") == 9.0
    assert (
        prometheus.counter_total(
            samples, "vllm:request_success_total", {"finished_reason": "abort"}
        )
        == 5
    )
    assert samples["x"][0][0] == (("a", 'q"uote'),)


def test_histogram_quantile_interpolates_like_prometheus():
    buckets = {0.1: 50.0, 0.5: 90.0, 1.0: 100.0, math.inf: 100.0}
    assert prometheus.histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert prometheus.histogram_quantile(0.7, buckets) == pytest.approx(0.3)
    assert prometheus.histogram_quantile(0.95, buckets) == pytest.approx(0.75)
    assert prometheus.histogram_quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None
    # Above every finite bound: the highest finite bound, as Prometheus answers.
    assert prometheus.histogram_quantile(0.99, {0.1: 1.0, math.inf: 10.0}) == 0.1


def test_prometheus_window_uses_bucket_deltas_not_totals():
    window = latency.PrometheusWindow(ENGINES["vllm"].metrics, window_s=60)
    window.add(1000.0, vllm_text(1000, 1000, 1000, 1000, 0))  # old, all fast
    window.add(1010.0, vllm_text(1000, 1010, 1020, 1018, 2))  # 20 new, all slower
    m = window.summary(41)
    assert m["source"] == "prometheus" and m["worker_id"] == 41
    assert 100 < m["p50_ms"] <= 500 and 500 < m["p99_ms"] <= 1000
    assert m["rps"] == pytest.approx(2.0)
    assert m["error_rate"] == pytest.approx(0.1)
    protocol.validate_worker_metrics(m)


def test_prometheus_window_forgets_scrapes_older_than_the_window_and_counter_resets():
    window = latency.PrometheusWindow(ENGINES["vllm"].metrics, window_s=10)
    for i in range(10):
        window.add(1000.0 + i * 5, vllm_text(i, i, i, i, 0))
    assert window.scrapes[0].ts >= 1045.0 - 10 - 5
    window.add(1100.0, vllm_text(0, 0, 0, 0, 0))  # the engine restarted
    assert len(window.scrapes) == 1
    assert window.summary(1)["p50_ms"] is None


def test_reference_engine_metrics_use_its_request_and_error_counters():
    text = """\
hangar_reference_request_latency_seconds_bucket{endpoint="/v1/embeddings",le="0.01"} {n}
hangar_reference_request_latency_seconds_bucket{endpoint="/v1/embeddings",le="+Inf"} {n}
hangar_reference_requests_total{endpoint="/v1/embeddings"} {n}
hangar_reference_request_errors_total{endpoint="/v1/embeddings"} {e}
"""
    window = latency.PrometheusWindow(ENGINES["reference"].metrics)
    window.add(0.0 + 2e9, text.replace("{n}", "0").replace("{e}", "0"))
    window.add(4.0 + 2e9, text.replace("{n}", "8").replace("{e}", "2"))
    m = window.summary(1)
    assert m["rps"] == 2.0 and m["error_rate"] == 0.25 and m["p99_ms"] <= 10.0


def test_probe_window_reports_percentiles_and_failed_share():
    window = latency.ProbeWindow(window_s=60)
    for i, seconds in enumerate([0.010, 0.020, 0.030, None]):
        window.add(100.0 + i, seconds)
    m = window.summary(3)
    assert m["p50_ms"] == pytest.approx(20.0) and m["error_rate"] == 0.25
    assert m["rps"] is None and m["source"] == "probe"
    window.add(1000.0, 0.005)
    assert window.summary(3)["error_rate"] == 0.0


# --- exit classification ---------------------------------------------------------


@pytest.mark.parametrize(
    ("returncode", "lines", "cause", "evidence"),
    [
        (
            1,
            ["loading", "torch.OutOfMemoryError: CUDA out of memory. Tried", "bye"],
            "gpu-oom",
            "torch.OutOfMemoryError",
        ),
        (-6, ["cudaErrorMemoryAllocation: out of memory"], "gpu-oom", "cudaErrorMemoryAllocation"),
        (
            1,
            ["RuntimeError: CUDA error: an illegal memory access was encountered"],
            "cuda-error",
            "CUDA error",
        ),
        (1, ["NCCL error in: ../nccl.cpp, unhandled system error"], "cuda-error", "NCCL error"),
        (
            1,
            ["ERROR: [Errno 98] error while attempting to bind: Address already in use"],
            "startup-error",
            "Address already in use",
        ),
        (
            1,
            ["FileNotFoundError: [Errno 2] No such file or directory: '/m/x'"],
            "startup-error",
            "No such file",
        ),
        (
            1,
            ["ModuleNotFoundError: No module named 'vllm'"],
            "startup-error",
            "ModuleNotFoundError",
        ),
        (-9, ["serving"], "signal", "SIGKILL"),
        (-15, [], "signal", "SIGTERM"),
        (3, ["something odd", ""], "exited", "exited with code 3; last log line: something odd"),
        (None, ["serving"], "unknown", "not watching"),
    ],
)
def test_classify_exit_names_the_cause_and_quotes_the_line(returncode, lines, cause, evidence):
    got_cause, got_evidence = exits.classify_exit(returncode, lines)
    assert got_cause == cause
    assert evidence in got_evidence


def test_a_startup_error_line_after_ready_is_not_a_startup_error():
    cause, _ = exits.classify_exit(1, ["No such file or directory: cache"], was_ready=True)
    assert cause == "exited"


def test_sigkill_with_a_kernel_oom_record_for_the_run_is_host_oom():
    kernel = ["Out of memory: Killed process 4242 (python3) total-vm:1kB, anon-rss:1kB"]
    assert exits.classify_exit(-9, [], pids={4242}, kernel_lines=kernel)[0] == "host-oom"
    # Another process's OOM kill, or no readable kernel log: just a signal.
    assert exits.classify_exit(-9, [], pids={1}, kernel_lines=kernel)[0] == "signal"
    assert exits.classify_exit(-9, [], pids={4242}, kernel_lines=None)[0] == "signal"


def test_an_xid_in_the_kernel_log_for_the_runs_pid_is_xid():
    kernel = ["NVRM: Xid (PCI:0000:19:00): 79, pid=4243, name=python3, GPU has fallen off the bus."]
    cause, evidence = exits.classify_exit(-6, ["Aborted"], pids={4242, 4243}, kernel_lines=kernel)
    assert cause == "xid" and "79" in evidence


# --- GPU release -----------------------------------------------------------------


def test_blockers_are_processes_on_our_gpus_that_are_not_other_hangar_workers():
    processes = [
        gpu_release.GpuProcess(0, 100, 2**30, "python3"),  # the crashed run's child
        gpu_release.GpuProcess(1, 200, 2**30, "vllm"),  # another Hangar worker
        gpu_release.GpuProcess(2, 300, 2**30, "trainer"),  # not our GPU
        gpu_release.GpuProcess(1, 400, None, "jupyter"),  # outside Hangar
    ]
    blocking = gpu_release.blockers(processes, [0, 1], hangar_pids={200})
    assert [p.pid for p in blocking] == [100, 400]
    text = gpu_release.describe(blocking, old_pids={100})
    assert "GPU 0 held by pid 100 (python3), 1024 MiB, left by the previous run" in text
    assert "GPU 1 held by pid 400 (jupyter), not a Hangar worker" in text


def test_wait_for_release_returns_once_the_gpus_are_free():
    calls = iter([[gpu_release.GpuProcess(0, 1, 1)], []])
    left = gpu_release.wait_for_release(
        lambda gpus: next(calls), [0], lambda: set(), timeout_s=10, poll_s=0.01
    )
    assert left == []
    stuck = gpu_release.wait_for_release(
        lambda gpus: [gpu_release.GpuProcess(0, 1, 1)], [0], set, timeout_s=0.05, poll_s=0.01
    )
    assert [p.pid for p in stuck] == [1]


# --- a real crash and a real holder, captured on two H200s --------------------------


def test_a_real_cuda_out_of_memory_is_classified_gpu_oom_with_torchs_line(gpu_crash_h200x2):
    oom = gpu_crash_h200x2["out_of_memory"]
    cause, evidence = exits.classify_exit(oom["returncode"], oom["log_tail"])
    assert (oom["returncode"], cause) == (1, "gpu-oom")
    assert evidence.startswith("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate")
    assert [cause, evidence] == oom["classified"]  # what the agent's code said on the GPU host


def test_a_real_gpu_holder_outside_hangar_blocks_a_restart_until_killed(gpu_crash_h200x2):
    holder = gpu_crash_h200x2["holder"]
    processes = [
        gpu_release.gpu_process(r["gpu"], r["pid"], r["usedGpuMemory"], "python3")
        for r in holder["raw_processes"]
    ]
    assert [(p.gpu, p.pid) for p in processes] == [(1, holder["holder_pid"])]
    held = processes[0].used_memory
    assert 4 * 2**30 <= held < 5 * 2**30  # 4 GiB of tensor plus the CUDA context
    assert gpu_release.blockers(processes, [0], hangar_pids=()) == []  # another GPU
    assert gpu_release.blockers(processes, [1], hangar_pids={holder["holder_pid"]}) == []
    blocking = gpu_release.blockers(processes, [1], hangar_pids=())
    assert gpu_release.describe(blocking, old_pids=()) == (
        f"GPU 1 held by pid {holder['holder_pid']} (python3), {held / 2**20:.0f} MiB,"
        " not a Hangar worker"
    )
    # On the host: the short wait gave up on the holder; after SIGKILL the
    # driver freed the memory before the next 10 ms poll.
    assert [p["pid"] for p in holder["short_wait_returned"]] == [holder["holder_pid"]]
    assert holder["after_kill_blockers"] == []


def test_nvml_says_not_available_as_none_not_a_huge_number():
    assert gpu_release.gpu_process(0, 1, 2**64 - 1, "x").used_memory is None
    assert gpu_release.gpu_process(0, 1, None, "x").used_memory is None
    assert gpu_release.gpu_process(0, 1, 4934598656, "x").used_memory == 4934598656


# --- model paths -----------------------------------------------------------------


def test_model_paths_outside_the_roots_are_refused(tmp_path):
    root = tmp_path / "models"
    (root / "m").mkdir(parents=True)
    assert verify.check_model_dir(str(root / "m"), [str(root)]) == str((root / "m").resolve())
    for bad, message in [
        ("relative/m", "absolute"),
        (f"{root}/../models/m", "'..'"),
        (str(tmp_path), "outside the allowed model roots"),
        (f"{root}-evil/m", "outside the allowed model roots"),  # a prefix is not a parent
        (str(root / "absent"), "does not exist"),
    ]:
        with pytest.raises(verify.VerificationError, match=message):
            verify.check_model_dir(bad, [str(root)])
    with pytest.raises(verify.VerificationError, match="relative path"):
        verify.check_model_file(str(root / "m"), "../m/x", [str(root)])


# --- run logs and operations -----------------------------------------------------


def test_run_logs_keep_the_last_runs_and_tail_across_the_rotated_part(tmp_path):
    logs = RunLogs(tmp_path, cap_bytes=100, keep_runs=3)
    for run in range(1, 6):
        logs.note(run, f"run {run}")
        logs.record({"run": run})
    assert [r["run"] for r in logs.index()] == [3, 4, 5]
    assert not logs.log_path(1).exists() and logs.log_path(3).exists()
    for i in range(20):
        logs.note(5, f"line {i}")
    logs.keep_under_cap(5)
    assert logs.log_path(5).stat().st_size == 0
    logs.note(5, "after rotation")
    assert logs.tail(5, 2) == ["[hangar-agent] line 19", "[hangar-agent] after rotation"]


def test_run_logs_hide_the_engine_key_in_what_leaves_the_node(tmp_path):
    logs = RunLogs(tmp_path)
    logs.secret = KEY
    logs.note(1, f"run 1: python -m sglang.launch_server --api-key {KEY}")
    with open(logs.log_path(1), "a") as engine_output:  # as SGLang prints its settings
        engine_output.write(f"server_args=ServerArgs(api_key='{KEY}')\n")
        engine_output.write(f"{'x' * 980}{KEY}\n")  # cut at 1000 characters, after hiding
    assert KEY not in logs.log_path(1).read_text().splitlines()[0]  # the agent's note
    tail = logs.tail(1, 10)
    assert not any(KEY in line or KEY[:20] in line for line in tail)
    assert tail[0].endswith("--api-key [engine key hidden]")


def test_the_operation_log_keeps_the_last_thousand_on_disk(tmp_path):
    ops = OperationLog(tmp_path / "ops.json")
    for i in range(1005):
        ops.put(f"op-{i}", {"ok": True, "n": i})
    again = OperationLog(tmp_path / "ops.json")
    assert again.get("op-4") is None and again.get("op-5") == {"ok": True, "n": 5}
    assert again.get("op-1004")["n"] == 1004


# --- protocol --------------------------------------------------------------------


def good_status() -> dict:
    return {
        "worker_id": 41, "deployment_id": 7, "state": "ready", "pid": 12345, "port": 8101,
        "gpus": [0, 1], "restarts": 2, "run": 3, "exit_code": None, "exit_signal": 9,
        "cause": "signal", "evidence": "killed by SIGKILL (signal 9)", "error": None,
        "progress": {"done_bytes": 100, "total_bytes": 200, "file": "model.safetensors"},
        "last_log": ["", "INFO serving"], "operation_id": "0b8f", "ts": 1764000000.0,
    }  # fmt: skip


def test_a_worker_message_validates_and_comes_back_cleaned():
    message = protocol.worker(good_status())
    cleaned = protocol.validate_message(message)
    assert cleaned == message and cleaned["worker"] is not message["worker"]


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("state", "exploded", "worker.state"),
        ("cause", "bad-luck", "worker.cause"),
        ("pid", True, "worker.pid"),
        ("gpus", [0, 0], "same GPU"),
        ("progress", {"done_bytes": 300, "total_bytes": 200, "file": None}, "exceeds total"),
        ("last_log", ["x"] * 21, "at most 20"),
        ("port", 80, "worker.port"),
    ],
)
def test_a_bad_worker_status_is_refused_naming_the_field(path, value, message):
    status = good_status()
    status[path] = value
    with pytest.raises(ProtocolError, match=message):
        protocol.validate_worker_status(status)
    extra = dict(good_status(), surprise=1)
    with pytest.raises(ProtocolError, match="unknown field"):
        protocol.validate_worker_status(extra)


def test_a_sample_may_carry_worker_metrics():
    from tests.agents.test_agent_protocol import good_sample

    sample = good_sample(1)
    assert protocol.validate_sample(sample)["workers"] == []
    metrics = {"worker_id": 41, "p50_ms": 12.0, "p95_ms": 30.1, "p99_ms": 44.0,
               "rps": 3.2, "error_rate": 0.0, "source": "prometheus"}  # fmt: skip
    sample["workers"] = [metrics]
    assert protocol.validate_sample(sample)["workers"] == [metrics]
    sample["workers"] = [dict(metrics, error_rate=2.0)]
    with pytest.raises(ProtocolError, match=r"sample.workers\[0\].error_rate"):
        protocol.validate_sample(sample)


def test_worker_spec_validation_checks_shapes():
    good = spec("vllm")
    assert protocol.validate_worker_spec(good) == good
    keyed = spec("vllm", api_key=KEY)
    assert protocol.validate_worker_spec(keyed)["api_key"] == KEY
    for mutate, message in [
        (lambda s: s.update(engine="docker"), "spec.engine"),
        (lambda s: s["model"]["files"][0].update(sha256="XYZ"), "64 lowercase"),
        (lambda s: s.update(command=["x"]), "only for the generic engine"),
        (lambda s: s.update(engine="generic"), "needs spec.command"),
        (lambda s: s.update(health_path="health"), "must start with /"),
        (lambda s: s.update(api_key="short"), "16..256 URL-safe"),
        (lambda s: s.update(api_key="k" * 257), "16..256 URL-safe"),
        (lambda s: s.update(api_key="a key with spaces"), "16..256 URL-safe"),
        (lambda s: s.update(api_key=12345678901234567), "16..256 URL-safe"),
    ]:
        bad = copy.deepcopy(good)
        mutate(bad)
        with pytest.raises(ProtocolError, match=message):
            protocol.validate_worker_spec(bad)
