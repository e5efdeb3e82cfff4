"""Node preflight checks on this machine: real chronyc/chronyd, real model roots."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agents import preflight
from agents.health import parse_health
from agents.protocol import ProtocolError, validate_preflight
from agents.tasks import run_preflight_here
from tests.agents.agent_helpers import FIXTURES

PREFLIGHT = FIXTURES / "preflight"


def health_reads() -> list[dict]:
    capture = json.loads((FIXTURES / "nvml_health_h200x2.json").read_text())
    return parse_health(capture["raw_health_reads"][0]["gpus"])


def by_check(results: list[dict], check: str) -> list[dict]:
    return [r for r in results if r["check"] == check]


# --- clock ----------------------------------------------------------------------------


def test_the_chronyc_manual_s_example_is_a_synchronised_offset_of_minus_6_5_us():
    offset, synchronised = preflight.parse_chronyc_tracking(
        (PREFLIGHT / "chronyc_tracking_manual.txt").read_text()
    )
    assert offset == pytest.approx(-6.523e-6) and synchronised


def test_an_offset_above_100_us_warns_and_below_passes():
    text = (PREFLIGHT / "chronyc_tracking_manual.txt").read_text()

    def answering(body):
        return lambda argv, timeout: (0, body) if argv[0] == "chronyc" else (127, "")

    assert preflight.check_clock(answering(text))["status"] == "pass"
    late = text.replace("0.000006523 seconds slow", "0.000250000 seconds slow")
    found = preflight.check_clock(answering(late))
    assert found["status"] == "warn" and found["value"] == "-250.0 µs (chronyc)"


@pytest.fixture
def chronyd(tmp_path):
    """A real chronyd that does not touch the clock (-x) and has no sources."""
    if shutil.which("chronyd") is None:
        pytest.fail("chrony is not installed: .ci/run installs it (apt-get install chrony)")
    conf = tmp_path / "chrony.conf"
    conf.write_text(f"driftfile {tmp_path}/drift\ncmdport 0\n")
    daemon = subprocess.Popen(
        ["chronyd", "-x", "-d", "-f", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    for _ in range(50):
        if preflight.run_command(preflight.CHRONYC_TRACKING, 2)[0] == 0:
            break
        time.sleep(0.1)
    yield daemon
    os.killpg(daemon.pid, signal.SIGTERM)
    daemon.wait(timeout=10)


def test_a_real_chronyd_without_sources_warns_that_it_is_not_synchronised(chronyd):
    found = preflight.check_clock()
    assert found["status"] == "warn"
    assert found["value"].endswith("µs (chronyc)")
    assert "not synchronised" in found["advice"]


def test_without_chronyd_the_check_falls_back_to_timedatectl_or_says_neither_answered():
    chronyc, _ = preflight.run_command(preflight.CHRONYC_TRACKING, 5)
    timedatectl, _ = preflight.run_command(preflight.TIMEDATECTL_SHOW, 5)
    found = preflight.check_clock()
    if chronyc == 0:  # a machine whose own chronyd runs
        assert found["value"].endswith("(chronyc)")
    elif timedatectl == 0:  # a machine booted with systemd
        assert "timedatectl" in found["value"]
    else:  # this container: no systemd, chronyc cannot reach a daemon
        assert found == preflight.result(
            "clock", "warn", None, "neither chronyc nor timedatectl answered: install chrony"
        )


def test_a_command_that_hangs_is_cut_off_by_its_timeout(tmp_path):
    began = time.monotonic()
    assert preflight.run_command(["sleep", "30"], 0.2) == (124, "")
    assert time.monotonic() - began < 29


def test_a_missing_program_is_127_not_an_exception():
    assert preflight.run_command(["hangar-no-such-tool"], 1) == (127, "")


# --- model roots ------------------------------------------------------------------------


def test_a_model_root_is_read_for_throughput_within_the_bound(tmp_path):
    model = tmp_path / "qwen" / "v1"
    model.mkdir(parents=True)
    for name in ("a.safetensors", "b.safetensors"):
        (model / name).write_bytes(os.urandom(8 * 2**20))
    space, speed = preflight.check_model_root(str(tmp_path), limit_bytes=12 * 2**20)
    assert space["check"] == "free_space" and space["value"].endswith("GiB free")
    assert speed["check"] == "read_throughput" and speed["status"] in ("pass", "warn")
    assert speed["value"].endswith("over 12 MiB")  # stopped at the bound, not at 16 MiB


def test_an_empty_model_root_skips_the_read_and_a_missing_one_fails(tmp_path):
    _space, speed = preflight.check_model_root(str(tmp_path))
    assert speed["status"] == "skip"
    (missing,) = preflight.check_model_root(str(tmp_path / "nope"))
    assert missing["status"] == "fail" and missing["subject"] == str(tmp_path / "nope")


# --- driver, GPU modes, GPU count ----------------------------------------------------------


def test_the_driver_is_checked_against_the_cuda_version_engines_need():
    facts = {"driver_version": "580.159.04", "cuda_version": "13.0", "gpus": []}
    assert preflight.check_driver(facts, "12.4")["status"] == "pass"
    assert preflight.check_driver(facts, "13.1")["status"] == "fail"
    assert preflight.check_driver({"gpus": []}, None)["status"] == "fail"


def test_gpu_modes_and_links_from_the_health_fixture():
    results = preflight.check_gpu_modes(health_reads())
    assert {r["status"] for r in by_check(results, "persistence_mode")} == {"pass"}
    assert {r["status"] for r in by_check(results, "ecc_mode")} == {"pass"}
    busy, idle = by_check(results, "pcie_link")
    assert busy["status"] == "pass" and idle["status"] == "warn"  # gen 1 of 5 at idle


def test_a_link_at_x8_of_x16_fails_and_persistence_off_warns():
    reads = copy.deepcopy(health_reads())
    reads[0]["pcie_link_width"] = 8
    reads[0]["persistence_mode"] = False
    results = preflight.check_gpu_modes(reads)
    assert by_check(results, "pcie_link")[0]["status"] == "fail"
    assert by_check(results, "persistence_mode")[0]["status"] == "warn"


def test_the_gpu_count_label_is_compared_with_what_was_found():
    facts = {"gpus": [{"index": 0}, {"index": 1}]}
    assert preflight.check_gpu_count(facts, 2)["status"] == "pass"
    assert preflight.check_gpu_count(facts, 8) == preflight.result(
        "gpu_count", "fail", "2 of 8", "a GPU is missing: check the host"
    )
    assert preflight.check_gpu_count(facts, None)["status"] == "skip"


# --- the whole run, as the agent's command answers it --------------------------------------


def test_the_agent_s_preflight_answers_a_valid_run(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"x" * 2**20)
    answer = run_preflight_here(2, [str(tmp_path)], expected_gpus=2, min_cuda=None)
    cleaned = validate_preflight(json.loads(json.dumps(answer)))
    checks = [r["check"] for r in cleaned["results"]]
    assert checks[:2] == ["driver", "clock"]
    assert "gpu_count" in checks and "read_throughput" in checks
    assert by_check(cleaned["results"], "gpu_count")[0]["status"] == "pass"


def test_the_protocol_refuses_an_unknown_status():
    bad = {"started_at": 1.8e9, "finished_at": 1.8e9, "results": []}
    bad["results"].append(preflight.result("clock", "great", None))
    with pytest.raises(ProtocolError, match="status"):
        validate_preflight(bad)


def test_overall_is_the_worst_status():
    assert preflight.overall([preflight.result("a", "pass", 1)]) == "pass"
    assert preflight.overall([preflight.result("a", "skip", 1)]) == "pass"
    worst = [preflight.result("a", "warn", 1), preflight.result("b", "fail", 1)]
    assert preflight.overall(worst) == "fail"


def test_the_fixture_sources_are_written_down():
    assert "chronyc(1)" in (PREFLIGHT / "SOURCES.md").read_text()
    assert Path(PREFLIGHT / "chronyc_tracking_manual.txt").read_text().startswith("Reference ID")
