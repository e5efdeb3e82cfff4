"""The worker supervisor with real worker processes (tests/agents/fake_engine.py)."""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agents.workers import procs
from agents.workers.gpu_release import GpuProcess
from agents.workers.supervisor import Supervisor
from tests.agents.worker_helpers import (
    fake_spec,
    op,
    start,
    stop,
    wait_state,
    wait_until,
)

# Requests straight to a worker's port: never through a proxy from the environment.
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def node(worker_node):
    return worker_node


def run_log(node, run: int, worker_id: int = 1) -> str:
    return (node.state_dir / "workers" / str(worker_id) / "runs" / f"{run}.log").read_text()


def runs_index(sup: Supervisor, worker_id: int = 1) -> list[dict]:
    return sup.runners[worker_id].logs.index()


def test_a_worker_starts_verified_and_reaches_ready_with_its_gpus(node):
    sup = node.supervisor()
    answer = start(sup, fake_spec(node.model))
    assert answer["ok"] and answer["worker"]["state"] == "pending"
    status = wait_state(sup, "ready")
    assert status["run"] == 1 and status["pid"] and status["restarts"] == 0
    assert procs.is_running(status["pid"], None)
    assert "CUDA_VISIBLE_DEVICES=0,1" in run_log(node, 1)
    states = node.recorder.states()
    assert states.index("verifying") < states.index("starting") < states.index("ready")
    assert any("CUDA_VISIBLE_DEVICES=0,1" in line for line in status["last_log"])


def test_sigkill_is_classified_signal_and_the_worker_restarts_with_a_new_pid(node):
    sup = node.supervisor()
    start(sup, fake_spec(node.model))
    first = wait_state(sup, "ready")
    os.kill(first["pid"], signal.SIGKILL)
    second = wait_state(sup, "ready", run=2)
    assert second["pid"] != first["pid"]
    assert second["cause"] == "signal" and second["exit_signal"] == 9
    assert second["restarts"] == 1
    ended = runs_index(sup)[0]
    assert ended["run"] == 1 and ended["exit_signal"] == 9 and ended["cause"] == "signal"
    assert "SIGKILL" in ended["evidence"]


def test_each_run_keeps_its_own_log_after_a_restart(node):
    sup = node.supervisor()
    start(sup, fake_spec(node.model))
    first = wait_state(sup, "ready")
    os.kill(first["pid"], signal.SIGKILL)
    second = wait_state(sup, "ready", run=2)
    assert f"fake engine pid {first['pid']}" in run_log(node, 1)
    assert f"fake engine pid {second['pid']}" in run_log(node, 2)
    assert f"fake engine pid {first['pid']}" not in run_log(node, 2)
    answer = sup.handle({"verb": "tail_logs", "operation_id": op(), "worker_id": 1, "run": 1})
    assert answer["ok"] and answer["run"] == 1
    assert f"fake engine pid {first['pid']}" in "\n".join(answer["lines"])


def test_a_cuda_out_of_memory_log_is_classified_gpu_oom_with_its_line(node):
    sup = node.supervisor()
    start(sup, fake_spec(node.model, "--oom-after", "0.5"))
    status = wait_until(
        lambda: sup.runners[1].snapshot()["cause"] and sup.runners[1].snapshot(), what="an exit"
    )
    assert status["cause"] == "gpu-oom" and status["exit_code"] == 1
    assert status["evidence"].startswith("torch.OutOfMemoryError: CUDA out of memory")
    assert runs_index(sup)[0]["cause"] == "gpu-oom"


def test_a_leftover_child_is_killed_before_the_restart(node, tmp_path):
    child_file = tmp_path / "child.pid"
    sup = node.supervisor()
    spec = fake_spec(node.model, "--crash-after", "1", "--child-ignoring-term", str(child_file))
    start(sup, spec)
    wait_until(child_file.exists, what="the child to start")
    child = int(child_file.read_text())
    child_start = procs.start_ticks(child)
    wait_state(sup, "starting", run=2)
    # The child ignores SIGTERM: only the SIGKILL after the grace period ends it.
    assert not procs.is_running(child, child_start)
    assert runs_index(sup)[0]["cause"] == "exited"


def test_fast_repeated_crashes_make_a_crashloop_that_keeps_retrying(node):
    sup = node.supervisor()
    start(sup, fake_spec(node.model, "--crash-after", "0.2", "--exit-code", "3"))
    status = wait_state(sup, "crashloop")
    assert status["cause"] == "exited" and status["exit_code"] == 3
    assert status["restarts"] >= 5
    wait_until(lambda: sup.runners[1].run >= status["run"] + 1, what="another retry")
    causes = [r["cause"] for r in runs_index(sup) if r["ended"]]
    assert causes and set(causes) == {"exited"}


def test_restart_resets_the_crashloop_and_starts_a_new_run(node):
    sup = node.supervisor()
    start(sup, fake_spec(node.model, "--crash-after", "0.2"))
    wait_state(sup, "crashloop")
    answer = sup.handle({"verb": "restart_worker", "operation_id": op(), "worker_id": 1})
    assert answer["ok"] and answer["detail"] == "restarted"
    assert answer["worker"]["state"] == "pending"  # the crash-loop count starts again


def test_a_corrupted_model_file_fails_at_verifying_and_never_starts(node):
    weights = Path(node.model["path"]) / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    sup = node.supervisor()
    start(sup, fake_spec(node.model))
    status = wait_state(sup, "failed")
    assert "weights.bin" in status["error"] and "SHA-256" in status["error"]
    assert status["run"] == 0 and status["pid"] is None
    assert "starting" not in node.recorder.states()
    assert "verifying" in node.recorder.states()
    assert not list((node.state_dir / "workers" / "1" / "runs").glob("*.log"))


def test_a_missing_model_file_fails_naming_the_file(node):
    (Path(node.model["path"]) / "config.json").unlink()
    sup = node.supervisor()
    start(sup, fake_spec(node.model))
    status = wait_state(sup, "failed")
    assert "config.json" in status["error"] and "missing" in status["error"]


def test_a_model_path_with_dotdot_is_refused(node):
    model = dict(node.model, path=str(node.root / "tiny" / ".." / "tiny" / "v1"))
    sup = node.supervisor()
    start(sup, fake_spec(model))
    status = wait_state(sup, "failed")
    assert "'..'" in status["error"] and status["run"] == 0


def test_a_symlink_leaving_the_model_root_is_refused(node, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (node.root / "escape").symlink_to(outside)
    model = dict(node.model, path=str(node.root / "escape"), files=[])
    sup = node.supervisor()
    start(sup, fake_spec(model))
    status = wait_state(sup, "failed")
    assert "symlink" in status["error"] and status["run"] == 0


def test_a_model_file_symlinked_out_of_the_root_is_refused(node, tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"not a model")
    (Path(node.model["path"]) / "config.json").unlink()
    (Path(node.model["path"]) / "config.json").symlink_to(secret)
    sup = node.supervisor()
    start(sup, fake_spec(node.model))
    status = wait_state(sup, "failed")
    assert "config.json" in status["error"] and "symlink" in status["error"]


def test_a_restart_does_not_hash_the_model_again(node):
    sup = node.supervisor()
    start(sup, fake_spec(node.model))
    first = wait_state(sup, "ready")
    verifying_before = node.recorder.states().count("verifying")
    os.kill(first["pid"], signal.SIGKILL)
    wait_state(sup, "ready", run=2)
    assert node.recorder.states().count("verifying") == verifying_before


def test_a_repeated_operation_id_is_answered_from_the_record_without_acting(node):
    sup = node.supervisor()
    operation = op()
    first = start(sup, fake_spec(node.model), operation)
    again = start(sup, fake_spec(node.model, "--metrics"), operation)  # different spec, same id
    assert again == first
    wait_state(sup, "ready")
    stop_id = op()
    stopped = stop(sup, 1, stop_id)
    assert stopped["ok"] and stopped["worker"]["state"] == "stopped"
    sup.close()
    # Remembered on disk: a new supervisor (a restarted agent) answers the same.
    sup2 = node.supervisor()
    assert stop(sup2, 1, stop_id) == stopped
    assert start(sup2, fake_spec(node.model), operation) == first
    assert sup2.runners[1].snapshot()["state"] == "stopped"


def test_starting_the_same_spec_twice_is_a_no_op_and_a_different_spec_is_refused(node):
    sup = node.supervisor()
    spec = fake_spec(node.model)
    start(sup, spec)
    ready = wait_state(sup, "ready")
    same = start(sup, spec)
    assert same["ok"] and same["detail"] == "already running"
    different = start(sup, dict(spec, gpus=[3]))
    assert not different["ok"] and "different spec" in different["detail"]
    assert sup.runners[1].snapshot()["pid"] == ready["pid"]


def test_stop_ends_the_whole_process_group_and_records_the_run(node, tmp_path):
    child_file = tmp_path / "child.pid"
    sup = node.supervisor()
    start(sup, fake_spec(node.model, "--child-ignoring-term", str(child_file)))
    ready = wait_state(sup, "ready")
    child = int(wait_until(lambda: child_file.exists() and child_file.read_text()))
    answer = stop(sup)
    assert answer["ok"] and answer["worker"]["state"] == "stopped"
    assert not procs.is_running(ready["pid"], None)
    assert not procs.is_running(child, None)
    assert runs_index(sup)[-1]["cause"] == "stopped"
    assert stop(sup)["ok"]  # stopping a stopped worker is fine
    assert stop(sup, worker_id=99)["ok"]  # and an unknown one


def test_an_engine_that_cannot_start_is_a_startup_error(node):
    sup = node.supervisor()
    spec = fake_spec(node.model)
    spec["command"] = ["/nonexistent/engine-binary", "--port", "{port}"]
    start(sup, spec)
    status = wait_until(
        lambda: sup.runners[1].snapshot()["cause"] and sup.runners[1].snapshot(), what="an exit"
    )
    assert status["cause"] == "startup-error"
    assert "No such file or directory" in status["evidence"]


def test_a_worker_goes_unhealthy_and_comes_back(node, tmp_path):
    sick = tmp_path / "sick"
    sup = node.supervisor()
    start(sup, fake_spec(node.model, "--unhealthy-if", str(sick)))
    wait_state(sup, "ready")
    sick.touch()
    wait_state(sup, "unhealthy")
    sick.unlink()
    wait_state(sup, "ready")


def test_probe_latency_is_reported_for_ready_workers(node):
    sup = node.supervisor()
    start(sup, fake_spec(node.model))
    wait_state(sup, "ready")
    metrics = wait_until(lambda: [m for m in sup.metrics() if m["p50_ms"] is not None])
    assert metrics[0]["worker_id"] == 1 and metrics[0]["source"] == "probe"
    assert metrics[0]["error_rate"] == 0.0 and metrics[0]["rps"] is None


def test_a_gpu_held_by_a_foreign_process_fails_the_restart_naming_it(node):
    holder = GpuProcess(gpu=1, pid=4242, used_memory=20 * 2**30, name="rogue-trainer")
    sup = node.supervisor(gpu_processes=lambda gpus: [holder])
    start(sup, fake_spec(node.model))
    first = wait_state(sup, "ready")
    os.kill(first["pid"], signal.SIGKILL)
    status = wait_state(sup, "failed")
    assert status["cause"] == "gpu-held"
    assert "pid 4242 (rogue-trainer)" in status["evidence"] and "GPU 1" in status["evidence"]
    assert sup.runners[1].run == 1  # never restarted into the held GPU


def test_a_run_log_past_its_cap_is_rotated_within_the_run(node):
    sup = node.supervisor(log_cap_bytes=20_000)
    start(sup, fake_spec(node.model, "--spam", "2000"))
    wait_state(sup, "ready")
    runs = node.state_dir / "workers" / "1" / "runs"
    wait_until(lambda: (runs / "1.log.1").exists(), what="a rotated log")
    tail = sup.handle({"verb": "tail_logs", "operation_id": op(), "worker_id": 1, "lines": 5})
    assert len(tail["lines"]) == 5


def test_a_restarted_supervisor_adopts_the_running_worker_and_keeps_supervising(node):
    sup = node.supervisor()
    start(sup, fake_spec(node.model))
    first = wait_state(sup, "ready")
    sup.close()  # the agent goes away; the worker does not
    assert procs.is_running(first["pid"], None)
    sup2 = node.supervisor()
    adopted = wait_state(sup2, "ready")
    assert adopted["pid"] == first["pid"] and adopted["run"] == 1
    assert sup2.runners[1].proc is None  # adopted, not started
    os.kill(first["pid"], signal.SIGKILL)  # still supervised: noticed and restarted
    restarted = wait_state(sup2, "ready", run=2)
    assert restarted["pid"] != first["pid"]


def test_a_worker_that_died_while_no_agent_watched_is_restarted(node):
    sup = node.supervisor()
    start(sup, fake_spec(node.model))
    first = wait_state(sup, "ready")
    sup.close()
    os.kill(first["pid"], signal.SIGKILL)
    wait_until(lambda: not procs.is_running(first["pid"], None))
    sup2 = node.supervisor()
    status = wait_state(sup2, "ready", run=2)
    assert status["pid"] != first["pid"]
    assert runs_index(sup2)[0]["ended"] is not None


def test_a_stopped_worker_stays_stopped_across_an_agent_restart(node):
    sup = node.supervisor()
    start(sup, fake_spec(node.model))
    wait_state(sup, "ready")
    stop(sup)
    sup.close()
    sup2 = node.supervisor()
    assert sup2.runners[1].snapshot()["state"] == "stopped"
    assert sup2.runners[1].thread is None


def test_bad_specs_are_refused_with_a_reason(node):
    sup = node.supervisor()
    spec = fake_spec(node.model, engine="vllm", command=None, engine_args=["--trust-remote-code"])
    answer = start(sup, spec)
    assert not answer["ok"] and "--trust-remote-code" in answer["detail"]
    answer = start(sup, dict(fake_spec(node.model), port="8000"))
    assert not answer["ok"] and "spec.port" in answer["detail"]
    assert sup.runners == {}


def test_commands_without_an_operation_id_or_with_an_unknown_verb_are_refused(node):
    sup = node.supervisor()
    assert not sup.handle({"verb": "list_workers"})["ok"]
    assert not sup.handle({"verb": "format_disk", "operation_id": op()})["ok"]
    listed = sup.handle({"verb": "list_workers", "operation_id": op()})
    assert listed["ok"] and listed["workers"] == []


def reference_spec(model, *engine_args: str) -> dict:
    return fake_spec(
        model, engine="reference", engine_args=list(engine_args), command=None, health_path=None
    )


def test_an_engine_listening_beyond_its_port_fails_with_the_socket_as_evidence(node):
    sup = node.supervisor()
    start(sup, reference_spec(node.model, "--extra-listener-port", "0"))
    failed = wait_state(sup, "failed")
    assert failed["cause"] == "unexpected-listener"
    assert "0.0.0.0:" in failed["evidence"] and "pid" in failed["evidence"]
    extra = int(failed["evidence"].split("0.0.0.0:")[1].split()[0])
    assert extra != failed["port"]
    assert failed["pid"] is None
    ended = runs_index(sup)[-1]
    assert ended["cause"] == "unexpected-listener" and "0.0.0.0:" in ended["evidence"]
    # The whole group went with it, and nothing restarts it behind the operator's back.
    assert procs.group_members(ended["pid"]) == []
    assert wait_state(sup, "failed")["run"] == 1


def test_an_engine_on_its_declared_port_only_stays_ready(node):
    sup = node.supervisor()
    start(sup, reference_spec(node.model))
    ready = wait_state(sup, "ready")
    assert ready["cause"] is None
    runner = sup.runners[1]
    assert runner._fail_on_unexpected_listener() is False
    assert wait_state(sup, "ready")["pid"] == ready["pid"]


def test_an_engine_bound_to_the_node_address_alone_is_probed_there_and_ready(node):
    """`--worker-host ADDR` (docs/agent.md): the engine listens on ADDR only, so the
    health checks go to ADDR, not to 127.0.0.1 where nothing answers (found by the
    chaos suite, whose partitioned node serves on its veth address)."""
    sup = node.supervisor(host="127.0.0.2")  # all of 127/8 is this host's; not 127.0.0.1
    start(sup, reference_spec(node.model))
    ready = wait_state(sup, "ready")
    assert local_get(ready["port"], "/health", host="127.0.0.2") == 200
    with pytest.raises(urllib.error.URLError):
        local_get(ready["port"], "/health")  # nothing on 127.0.0.1: it was probed at its address


def test_the_engine_table_can_allow_an_extra_listener(node, monkeypatch):
    from dataclasses import replace

    from agents.workers import engines

    allowed = replace(engines.ENGINES["reference"], extra_listeners=(("0.0.0.0", None),))
    monkeypatch.setitem(engines.ENGINES, "reference", allowed)
    sup = node.supervisor()
    start(sup, reference_spec(node.model, "--extra-listener-port", "0"))
    ready = wait_state(sup, "ready")
    assert sup.runners[1]._fail_on_unexpected_listener() is False
    assert ready["state"] == "ready"


# --- the engine key -------------------------------------------------------------

ENGINE_KEY = "Wk7_-" * 8 + "abc"  # 43 URL-safe characters, as secrets.token_urlsafe(32)


def keyed_reference_spec(model) -> dict:
    return dict(reference_spec(model, "--backend", "stand-in"), api_key=ENGINE_KEY)


def local_get(port: int, path: str, key: str | None = None, host: str = "127.0.0.1") -> int:
    request = urllib.request.Request(f"http://{host}:{port}{path}")
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with LOCAL.open(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_worker_with_a_key_is_ready_and_its_port_refuses_requests_without_it(node):
    sup = node.supervisor()
    spec = keyed_reference_spec(node.model)
    start(sup, spec)
    ready = wait_state(sup, "ready")
    assert local_get(ready["port"], "/v1/models") == 401
    assert local_get(ready["port"], "/v1/models", "not-the-key-" * 3) == 401
    assert local_get(ready["port"], "/v1/models", ENGINE_KEY) == 200
    assert local_get(ready["port"], "/health") == 200  # the agent's own polling


def test_the_key_is_in_neither_the_engines_argv_nor_its_environment(node, monkeypatch):
    # The agent's own variable must not reach a worker either.
    monkeypatch.setenv("HANGAR_ENGINE_API_KEY", "agent-wide-key-never-for-workers")
    sup = node.supervisor()
    start(sup, keyed_reference_spec(node.model))
    pid = wait_state(sup, "ready")["pid"]
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert ENGINE_KEY.encode() not in cmdline and ENGINE_KEY.encode() not in environ
    assert b"HANGAR_ENGINE_API_KEY" not in environ
    key_file = node.state_dir / "workers" / "1" / "api-key"
    assert f"--api-key-file\0{key_file}\0".encode() in cmdline


def test_the_key_file_is_readable_by_the_agents_user_only(node):
    sup = node.supervisor()
    start(sup, keyed_reference_spec(node.model))
    wait_state(sup, "ready")
    key_file = node.state_dir / "workers" / "1" / "api-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().strip() == ENGINE_KEY
    spec_file = node.state_dir / "workers" / "1" / "spec.json"
    assert stat.S_IMODE(spec_file.stat().st_mode) == 0o600  # the spec carries the key


def test_the_key_never_leaves_the_node_in_status_logs(node):
    sup = node.supervisor()
    start(sup, keyed_reference_spec(node.model))
    wait_state(sup, "ready")
    answer = sup.handle({"verb": "tail_logs", "operation_id": op(), "worker_id": 1})
    assert answer["ok"] and answer["lines"]
    assert ENGINE_KEY not in json.dumps(answer)
    assert all(ENGINE_KEY not in json.dumps(status) for status in node.recorder.statuses)


def test_a_generic_engine_reads_the_key_from_its_environment(node):
    # The reference engine run as a generic command: HANGAR_ENGINE_API_KEY is its key.
    spec = fake_spec(
        node.model,
        api_key=ENGINE_KEY,
        command=[
            sys.executable, "-m", "agents.reference_engine", "--model", "{model_path}",
            "--host", "{host}", "--port", "{port}",
        ],
    )  # fmt: skip
    sup = node.supervisor()
    start(sup, spec)
    ready = wait_state(sup, "ready")
    assert local_get(ready["port"], "/v1/models") == 401
    assert local_get(ready["port"], "/v1/models", ENGINE_KEY) == 200


def test_a_worker_started_without_a_key_keeps_an_open_port(node):
    sup = node.supervisor()
    spec = reference_spec(node.model, "--backend", "stand-in")
    spec.pop("api_key", None)  # a console from before engine keys
    start(sup, spec)
    ready = wait_state(sup, "ready")
    assert local_get(ready["port"], "/v1/models") == 200
    assert not (node.state_dir / "workers" / "1" / "api-key").exists()


def test_metrics_are_scraped_from_a_worker_with_a_key(node):
    sup = node.supervisor()
    start(sup, keyed_reference_spec(node.model))
    ready = wait_state(sup, "ready")

    def scraped():
        assert local_get(ready["port"], "/v1/models", ENGINE_KEY) == 200
        metrics = sup.runners[1].metrics()
        return metrics if metrics and metrics["rps"] else None

    metrics = wait_until(scraped, what="requests counted from /metrics")
    assert metrics["source"] == "prometheus" and metrics["error_rate"] == 0.0


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned port", "the agent picks"])
def test_a_start_the_state_directory_cannot_keep_says_why_on_the_status_then_starts(node, pinned):
    """ENOSPC in the chaos suite (tests/chaos); here the worker's directory is a file.
    The status must follow the protocol (the node fixture checks every one), port 0
    ("any port", the agent picks at start) included."""
    sup = node.supervisor()
    blocker = node.state_dir / "workers" / "1"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a directory")
    spec = fake_spec(node.model) if pinned else fake_spec(node.model, port=0)
    answer = start(sup, spec)
    assert not answer["ok"]
    assert "cannot write to its state directory" in answer["detail"]
    told = [s for s in node.recorder.statuses if s["worker_id"] == 1]
    assert [s["state"] for s in told] == ["pending"]
    assert told[0]["error"] == answer["detail"]

    assert node.recorder.errors == []
    blocker.unlink()  # space is back; the console's reconcile asks again
    assert start(sup, spec)["ok"]
    status = wait_state(sup, "ready")
    assert status["error"] is None and status["run"] == 1


def test_a_start_whose_spec_cannot_be_written_is_not_taken_for_already_running(node):
    sup = node.supervisor()
    spec = fake_spec(node.model)
    start(sup, spec)
    wait_state(sup, "ready")
    stop(sup)
    spec_file = node.state_dir / "workers" / "1" / "spec.json"
    spec_file.unlink()
    spec_file.mkdir()  # the atomic rename onto it fails, as a full disk's write does
    answer = start(sup, spec)
    assert not answer["ok"] and answer["worker"]["state"] == "pending"
    assert "state directory" in answer["worker"]["error"]
    assert sup.runners[1].snapshot()["pid"] is None

    spec_file.rmdir()
    assert start(sup, spec)["detail"] == "accepted"
    assert wait_state(sup, "ready", run=2)["error"] is None
