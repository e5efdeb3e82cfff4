"""GPU health in the agent: parsing the health fixture, the reader, the schedule."""

from __future__ import annotations

import copy
import json
import sys
from typing import Any

import pytest

from agents import health, nvml
from agents.buffer import merge
from agents.collect import Collector
from agents.host import HostSampler
from agents.protocol import ProtocolError, validate_sample
from tests.agents.agent_helpers import FIXTURES
from tests.agents.test_agent_nvml import _NVMLError, full_sample, replay_pynvml


@pytest.fixture
def health_capture() -> dict[str, Any]:
    """Health reads of two H200s in the format of agents/tools/capture_health.py."""
    return json.loads((FIXTURES / "nvml_health_h200x2.json").read_text())


def first_read(capture: dict[str, Any]) -> list[dict[str, Any]]:
    return copy.deepcopy(capture["raw_health_reads"][0]["gpus"])


def with_health(entries: list[dict[str, Any]]) -> dict[str, Any]:
    sample = full_sample([], [])
    sample["health"] = entries
    return sample


# --- parsing --------------------------------------------------------------------


def test_every_read_in_the_fixture_parses_to_a_valid_health_list(health_capture):
    for read in health_capture["raw_health_reads"]:
        entries = health.parse_health(read["gpus"])
        cleaned = validate_sample(with_health(entries))["health"]
        assert [h["index"] for h in cleaned] == [0, 1]
        assert all(h["ecc_mode"] is True and h["persistence_mode"] is True for h in cleaned)


def test_unsupported_fields_are_null_and_named_never_zero(health_capture):
    busy, idle = health.parse_health(first_read(health_capture))
    for entry in (busy, idle):
        assert entry["retired_pages_double_bit"] is None
        assert "retired_pages_double_bit" in entry["unsupported"]
        assert "nvlink" in entry["unsupported"] and entry["nvlink"] == []
        assert entry["failed"] == []
        # Supported counters are real zeros, and not listed as unsupported.
        assert entry["ecc_volatile_uncorrected"] == 0
        assert "ecc_volatile_uncorrected" not in entry["unsupported"]


def test_remapped_rows_split_into_their_four_parts(health_capture):
    raw = first_read(health_capture)[0]
    raw["remapped_rows"] = [2, 1, 1, 0]
    parsed = health.parse_gpu_health(raw)
    assert (
        parsed["remapped_rows_correctable"],
        parsed["remapped_rows_uncorrectable"],
        parsed["remapped_rows_pending"],
        parsed["remapped_rows_failure"],
    ) == (2, 1, True, False)


def test_a_failed_call_is_named_with_nvml_s_message(health_capture):
    raw = first_read(health_capture)[0]
    raw["pcie_replay_counter"] = {"nvml_error": 15, "message": "GPU is lost"}
    parsed = health.parse_gpu_health(raw)
    assert parsed["pcie_replay_counter"] is None
    assert parsed["failed"] == ["pcie_replay_counter: GPU is lost"]
    assert "pcie_replay_counter" not in parsed["unsupported"]


def test_nvlink_counters_are_reported_per_active_link(health_capture):
    raw = first_read(health_capture)[0]
    raw["nvlink"] = [
        {"link": 0, "state": 1, "replay": 0, "recovery": 0, "crc_flit": 5, "crc_data": 0},
        {"link": 1, "state": 0, "replay": 0, "recovery": 1, "crc_flit": 0, "crc_data": 0},
    ]
    parsed = health.parse_gpu_health(raw)
    assert [(link["link"], link["active"], link["crc_flit"]) for link in parsed["nvlink"]] == [
        (0, True, 5),
        (1, False, 0),
    ]
    assert "nvlink" not in parsed["unsupported"]
    validate_sample(with_health([parsed]))


def test_the_protocol_refuses_a_negative_error_count(health_capture):
    (entry, _) = health.parse_health(first_read(health_capture))
    entry["ecc_volatile_corrected"] = -1
    with pytest.raises(ProtocolError, match="ecc_volatile_corrected"):
        validate_sample(with_health([entry]))


# --- the raw reader, against a pynvml replaying the fixture -----------------------


def replay_health(capture: dict[str, Any], nvml_h100: dict[str, Any]):
    """replay_pynvml plus the health calls, answering as the fixture's GPU 0 did."""
    fake = replay_pynvml(nvml_h100)
    raw = capture["raw_health_reads"][0]["gpus"][0]
    fake.calls = {}

    def answer(key):
        def call(handle, *args):
            fake.calls[key] = fake.calls.get(key, 0) + 1
            value = raw[key]
            if isinstance(value, dict):
                raise _NVMLError(value["nvml_error"], value["message"])
            return value

        return call

    def ecc(handle, kind, counter):
        fake.calls["ecc"] = fake.calls.get("ecc", 0) + 1
        return fake.ecc_counts.get((kind, counter), 0)

    def nvlink_state(handle, link):
        fake.calls["nvlink"] = fake.calls.get("nvlink", 0) + 1
        raise _NVMLError(nvml.NOT_SUPPORTED, "Not Supported")

    fake.ecc_counts = {}
    fake.__dict__.update(
        nvmlDeviceGetPersistenceMode=answer("persistence_mode"),
        nvmlDeviceGetEccMode=answer("ecc_mode"),
        nvmlDeviceGetTotalEccErrors=ecc,
        nvmlDeviceGetRetiredPages=lambda h, cause: answer("retired_pages_single_bit")(h),
        nvmlDeviceGetRetiredPagesPendingStatus=answer("retired_pages_pending"),
        nvmlDeviceGetRemappedRows=answer("remapped_rows"),
        nvmlDeviceGetPcieReplayCounter=answer("pcie_replay_counter"),
        nvmlDeviceGetCurrPcieLinkGeneration=answer("pcie_link_gen"),
        nvmlDeviceGetMaxPcieLinkGeneration=answer("pcie_link_gen_max"),
        nvmlDeviceGetCurrPcieLinkWidth=answer("pcie_link_width"),
        nvmlDeviceGetMaxPcieLinkWidth=answer("pcie_link_width_max"),
        nvmlDeviceGetNvLinkState=nvlink_state,
        nvmlDeviceGetNvLinkErrorCounter=lambda h, link, counter: 0,
    )
    return fake


@pytest.fixture
def fake_health(health_capture, nvml_h100, monkeypatch):
    fake = replay_health(health_capture, nvml_h100)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


def test_the_reader_produces_the_fixture_s_raw_shape(fake_health, health_capture):
    reader = nvml.NvmlReader()
    (first, _) = reader.read_health()
    captured = health_capture["raw_health_reads"][0]["gpus"][0]
    assert first.keys() == captured.keys()
    assert first["remapped_rows"] == captured["remapped_rows"]
    assert first["retired_pages_double_bit"] == captured["retired_pages_double_bit"]
    assert first["nvlink"] == [{"link": 0, "state": captured["nvlink"][0]["state"]}]


def test_an_unsupported_field_is_asked_once_per_gpu(fake_health):
    reader = nvml.NvmlReader()
    for _ in range(3):
        reader.read_health()
    # Two GPUs, asked on the first read only; a supported field is asked every read.
    assert fake_health.calls["nvlink"] == 2
    assert fake_health.calls["retired_pages_pending"] == 2
    assert fake_health.calls["pcie_replay_counter"] == 6


def test_an_unsupported_fan_is_asked_once_and_stays_null(fake_health):
    calls = []
    real = fake_health.nvmlDeviceGetFanSpeed
    fake_health.nvmlDeviceGetFanSpeed = lambda h: calls.append(h) or real(h)
    reader = nvml.NvmlReader()
    for _ in range(5):
        gpus, _faults = nvml.parse_sample(reader.read_sample())
        assert [g["fan"] for g in gpus] == [None, None]
    assert calls == [0, 1]


def test_a_lost_gpu_is_asked_again_and_reported_failed(fake_health):
    source = nvml.NvmlSource()
    fake_health.nvmlDeviceGetPcieReplayCounter = lambda h: (_ for _ in ()).throw(
        _NVMLError(nvml.GPU_IS_LOST, "GPU is lost")
    )
    for _ in range(2):
        entries = source.health()
        assert entries[0]["failed"][0] == "pcie_replay_counter: GPU is lost"


def test_an_xid_code_reaches_the_next_health_read_and_only_that(fake_health):
    source = nvml.NvmlSource()
    fake_health.xid_pending[1] = 1  # the replay answers Xid 79
    source.sample()
    assert source.health_due()
    entries = source.health()
    assert [h["xids"] for h in entries] == [[], [79]]
    assert not source.health_due()
    assert [h["xids"] for h in source.health()] == [[], []]


def test_uncorrectable_ecc_counts_come_from_volatile_and_aggregate_counters(fake_health):
    fake_health.ecc_counts = {(1, 0): 2, (1, 1): 7, (0, 1): 40}
    (entry, _) = nvml.NvmlSource().health()
    assert entry["ecc_volatile_uncorrected"] == 2
    assert entry["ecc_aggregate_uncorrected"] == 7
    assert entry["ecc_aggregate_corrected"] == 40
    assert entry["ecc_volatile_corrected"] == 0


# --- the schedule ------------------------------------------------------------------


def test_health_rides_on_the_first_sweep_then_waits_for_its_interval(fake_health):
    collector = Collector(nvml.NvmlSource(), health_interval_s=3600)
    first, second = collector.sweep(), collector.sweep()
    assert [h["index"] for h in first["health"]] == [0, 1]
    assert "health" not in second
    validate_sample(first)


def test_an_xid_brings_the_health_read_forward(fake_health):
    collector = Collector(nvml.NvmlSource(), health_interval_s=3600)
    collector.sweep()
    fake_health.xid_pending[0] = 1
    # The sweep that drains the Xid sees it pending and carries the health read.
    sample = collector.sweep()
    assert sample["health"][0]["xids"] == [79]


def test_the_simulator_sends_no_health():
    from agents.simulate import SimulatedSource

    sample = Collector(SimulatedSource(2, seed=1)).sweep()
    assert "health" not in sample


def test_merging_buffered_samples_keeps_every_xid(health_capture):
    older = with_health(health.parse_health(first_read(health_capture)))
    older["health"][1]["xids"] = [79]
    newer = with_health(health.parse_health(first_read(health_capture)))
    newer["health"][1]["xids"] = [48]
    assert merge(older, newer)["health"][1]["xids"] == [79, 48]
    plain = full_sample([], [])
    assert merge(older, plain)["health"][1]["xids"] == [79]


# --- host readings ---------------------------------------------------------------------


def test_host_memory_and_disk_are_reread_on_their_own_interval():
    sampler = HostSampler(slow_interval_s=3600)
    first = sampler.sample()
    second = sampler.sample()
    assert second["memory_used"] == first["memory_used"]  # the same reading, not re-read
    assert 0.0 <= second["cpu_percent"] <= 100.0
    fresh = HostSampler(slow_interval_s=0).sample()
    assert fresh["memory_total"] == first["memory_total"]


# --- the real H200 captures (agents/tools/capture_health.py on the lent device) ------------


@pytest.mark.parametrize(
    "name", ["nvml_health_h200_idle_real.json", "nvml_health_h200_busy_real.json"]
)
def test_the_real_h200_captures_parse_as_the_agent_reads_them(name):
    capture = json.loads((FIXTURES / name).read_text())
    assert capture["raw_facts"]["gpus"][0]["name"] == "NVIDIA H200"
    for read in capture["raw_health_reads"]:
        (entry,) = validate_sample(with_health(health.parse_health(read["gpus"])))["health"]
        # What this H200 (SXM, no NVLink peers in the VM) really lacks: named, never zero.
        assert set(entry["unsupported"]) >= {"retired_pages_double_bit", "nvlink"}
        assert entry["retired_pages_double_bit"] is None and entry["nvlink"] == []
        assert entry["ecc_mode"] is True and entry["ecc_volatile_uncorrected"] == 0
        assert (entry["pcie_link_gen"], entry["pcie_link_width"]) == (5, 16)
        assert entry["remapped_rows_failure"] is False and entry["xids"] == []
    # The same parse the capture recorded on the device.
    first = health.parse_health(capture["raw_health_reads"][0]["gpus"])
    assert first == capture["parsed_first_read"]


def test_a_busy_real_h200_is_power_capped_not_idle():
    busy = json.loads((FIXTURES / "nvml_health_h200_busy_real.json").read_text())
    idle = json.loads((FIXTURES / "nvml_health_h200_idle_real.json").read_text())
    (busy_entry,) = health.parse_health(busy["raw_health_reads"][0]["gpus"])
    (idle_entry,) = health.parse_health(idle["raw_health_reads"][0]["gpus"])
    assert "sw_power_cap" in busy_entry["throttle_reasons"]
    assert "gpu_idle" in idle_entry["throttle_reasons"]
