"""NVML: parsing readings captured on a real H100, and the reader's error handling."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from agents import nvml
from agents.collect import Collector
from agents.host import facts as host_facts
from agents.protocol import validate_facts, validate_sample


def lost(code: int = nvml.GPU_IS_LOST, message: str = "GPU is lost") -> dict[str, Any]:
    return {"nvml_error": code, "message": message}


def full_sample(gpus: list[dict[str, Any]], faults: list[str]) -> dict[str, Any]:
    host = {"cpu_percent": 1.0, "memory_used": 1, "memory_total": 2, "disk_used": 1}
    host["disk_total"] = 2
    return {"seq": 1, "ts": 1.8e9, "simulated": False, "gpus": gpus, "host": host, "faults": faults}


# --- the pure parser, fed by the captured fixture ------------------------------


def test_facts_captured_on_an_h100_parse_to_protocol_facts(nvml_h100):
    facts = nvml.parse_facts(nvml_h100["raw_facts"])
    assert facts["driver_version"] == "580.159.04"
    assert facts["cuda_version"] == "13.0"  # NVML said 13000
    (gpu,) = facts["gpus"]
    assert gpu["name"] == "NVIDIA H100 80GB HBM3"
    assert gpu["uuid"].startswith("GPU-")
    assert gpu["memory_total"] == 85_520_809_984
    assert gpu["power_limit"] == 700.0  # NVML said 700000 mW
    assert gpu["mig_mode"] is False
    validate_facts({**host_facts(), **facts, "simulated": False})


def test_every_sample_captured_under_load_parses_and_validates(nvml_h100):
    for raw in nvml_h100["raw_samples"]:
        gpus, faults = nvml.parse_sample(raw)
        assert faults == []
        validate_sample(full_sample(gpus, faults))
        (gpu,) = gpus
        assert gpu["power_draw"] == raw["gpus"][0]["power_draw_mw"] / 1000
        assert gpu["utilization_gpu"] > 50  # the capture ran a bf16 matmul loop
        assert "sw_power_cap" in gpu["throttle_reasons"]  # NVML said 0x4


def test_an_idle_h100_reports_the_gpu_idle_reason(nvml_h100_idle):
    gpus, _ = nvml.parse_sample(nvml_h100_idle["raw_samples"][0])
    assert gpus[0]["throttle_reasons"] == ["gpu_idle"]
    assert gpus[0]["utilization_gpu"] == 0


def test_two_h200s_parse_with_one_busy_and_one_idle(nvml_h200x2):
    facts = nvml.parse_facts(nvml_h200x2["raw_facts"])
    assert [(g["index"], g["name"], g["memory_total"]) for g in facts["gpus"]] == [
        (0, "NVIDIA H200", 150_754_820_096),
        (1, "NVIDIA H200", 150_754_820_096),
    ]
    assert len({g["uuid"] for g in facts["gpus"]}) == 2
    validate_facts({**host_facts(), **facts, "simulated": False})
    for raw in nvml_h200x2["raw_samples"]:
        gpus, faults = nvml.parse_sample(raw)
        validate_sample(full_sample(gpus, faults))
        busy, idle = gpus
        assert faults == [] and busy["index"] == 0 and idle["index"] == 1
        assert busy["utilization_gpu"] > 50 and "sw_power_cap" in busy["throttle_reasons"]
        assert idle["utilization_gpu"] == 0 and idle["throttle_reasons"] == ["gpu_idle"]
        assert busy["power_draw"] > idle["power_draw"]


def test_an_unsupported_fan_is_null_and_not_a_fault(raw_sample):
    assert raw_sample["gpus"][0]["fan"]["nvml_error"] == nvml.NOT_SUPPORTED  # as captured
    gpus, faults = nvml.parse_sample(raw_sample)
    assert gpus[0]["fan"] is None
    assert gpus[0]["fault"] is None and faults == []


def test_a_lost_gpu_is_a_fault_on_the_gpu_and_the_node(raw_sample):
    gpu = raw_sample["gpus"][0]
    for key in nvml.SAMPLE_FIELDS:
        gpu[key] = lost()
    gpus, faults = nvml.parse_sample(raw_sample)
    assert gpus[0]["fault"].startswith("GPU is lost (temperature, utilization_gpu")
    assert gpus[0]["uuid"] == gpu["uuid"]  # still says which card
    assert gpus[0]["temperature"] is None
    assert faults == [f"gpu 0: {gpus[0]['fault']}"]
    validate_sample(full_sample(gpus, faults))


def test_one_failed_reading_names_the_field_and_keeps_the_others(raw_sample):
    raw_sample["gpus"][0]["power_draw_mw"] = lost(999, "Unknown Error")
    gpus, faults = nvml.parse_sample(raw_sample)
    assert gpus[0]["fault"] == "Unknown Error (power_draw_mw)"
    assert gpus[0]["power_draw"] is None
    assert gpus[0]["temperature"] == raw_sample["gpus"][0]["temperature"]
    assert faults == ["gpu 0: Unknown Error (power_draw_mw)"]


def test_nvml_that_cannot_start_leaves_no_gpus_and_one_node_fault():
    raw = {"ts": 1.8e9, "init_error": lost(9, "Driver Not Loaded"), "gpus": []}
    assert nvml.parse_sample(raw) == ([], ["nvml: Driver Not Loaded"])
    assert nvml.parse_facts(raw)["gpus"] == []


def test_throttle_bits_decode_to_names_and_unknown_bits_to_other():
    assert nvml.decode_throttle_reasons(0x4 | 0x40) == ["sw_power_cap", "hw_thermal_slowdown"]
    assert nvml.decode_throttle_reasons(0x1 | 0x8000) == ["gpu_idle", "other"]
    assert nvml.decode_throttle_reasons(0) == []


def test_cuda_versions_are_formatted_like_nvidia_smi():
    assert nvml.format_cuda_version(12040) == "12.4"
    assert nvml.format_cuda_version(13000) == "13.0"
    assert nvml.format_cuda_version(lost(3)) is None


# --- the raw reader, against a pynvml that replays the capture ------------------


class _NVMLError(Exception):
    def __init__(self, value: int, message: str) -> None:
        super().__init__(message)
        self.value = value


def replay_pynvml(capture: dict[str, Any], gpus: int = 2) -> types.SimpleNamespace:
    """A pynvml stand-in answering with the captured H100 values for `gpus` cards.

    `fake.lost` holds indexes of cards that answer GPU_IS_LOST to everything;
    `fake.xid_pending[i]` is how many XID events card i has queued.
    """
    facts = capture["raw_facts"]["gpus"][0]
    reading = capture["raw_samples"][-1]["gpus"][0]
    fake = types.SimpleNamespace(lost=set(), xid_pending=[0] * gpus, events_supported=True)

    def card(fn):
        def call(handle, *args):
            if handle in fake.lost:
                raise _NVMLError(nvml.GPU_IS_LOST, "GPU is lost")
            return fn(handle, *args)

        return call

    def not_supported(handle):
        raise _NVMLError(nvml.NOT_SUPPORTED, "Not Supported")

    def register(handle, kind, event_set):
        if not fake.events_supported:
            raise _NVMLError(nvml.NOT_SUPPORTED, "Not Supported")
        event_set["card"] = handle

    def wait(event_set, timeout_ms):
        if fake.xid_pending[event_set["card"]] == 0:
            raise _NVMLError(nvml.TIMEOUT, "Timeout")
        fake.xid_pending[event_set["card"]] -= 1
        return types.SimpleNamespace(eventData=79)

    memory = types.SimpleNamespace(total=reading["memory_total"], used=reading["memory_used"])
    util = types.SimpleNamespace(
        gpu=reading["utilization_gpu"], memory=reading["utilization_memory"]
    )
    fake.__dict__.update(
        NVMLError=_NVMLError,
        NVML_CLOCK_SM=1,
        NVML_MEMORY_ERROR_TYPE_UNCORRECTED=1,
        NVML_VOLATILE_ECC=0,
        nvmlEventTypeXidCriticalError=8,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: gpus,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlSystemGetDriverVersion=lambda: capture["raw_facts"]["driver_version"],
        nvmlSystemGetCudaDriverVersion=lambda: capture["raw_facts"]["cuda_version"],
        nvmlDeviceGetUUID=card(lambda h: f"{facts['uuid'][:-1]}{h}".encode()),
        nvmlDeviceGetName=card(lambda h: facts["name"]),
        nvmlDeviceGetPciInfo=card(lambda h: types.SimpleNamespace(busId=facts["pci_bus_id"])),
        nvmlDeviceGetMigMode=card(lambda h: (facts["mig_mode"], facts["mig_mode"])),
        nvmlDeviceGetMemoryInfo=card(lambda h: memory),
        nvmlDeviceGetEnforcedPowerLimit=card(lambda h: reading["power_limit_mw"]),
        nvmlDeviceGetUtilizationRates=card(lambda h: util),
        nvmlDeviceGetTemperature=card(lambda h, sensor: reading["temperature"]),
        nvmlDeviceGetPowerUsage=card(lambda h: reading["power_draw_mw"]),
        nvmlDeviceGetClockInfo=card(lambda h, clock: reading["sm_clock"]),
        nvmlDeviceGetFanSpeed=card(not_supported),
        nvmlDeviceGetCurrentClocksEventReasons=card(lambda h: reading["throttle_reasons"]),
        nvmlDeviceGetTotalEccErrors=card(lambda h, kind, counter: reading["ecc_uncorrected"]),
        nvmlEventSetCreate=dict,
        nvmlDeviceRegisterEvents=register,
        nvmlEventSetWait_v2=wait,
        nvmlEventSetFree=lambda event_set: None,
    )
    return fake


@pytest.fixture
def fake_pynvml(nvml_h100, monkeypatch):
    fake = replay_pynvml(nvml_h100)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


def test_the_reader_produces_the_raw_shape_that_was_captured(fake_pynvml, nvml_h100):
    reader = nvml.NvmlReader()
    raw = reader.read_sample()
    captured = nvml_h100["raw_samples"][-1]["gpus"][0]
    first = raw["gpus"][0]
    assert first.keys() == captured.keys()
    assert {k: v for k, v in first.items() if k != "uuid"} == {
        k: v for k, v in captured.items() if k != "uuid"
    }


def test_a_gpu_that_disappears_is_marked_and_the_others_keep_reporting(fake_pynvml):
    source = nvml.NvmlSource()
    gpus, faults = source.sample()
    assert [g["fault"] for g in gpus] == [None, None]
    fake_pynvml.lost.add(1)
    gpus, faults = source.sample()
    assert gpus[0]["fault"] is None and gpus[0]["temperature"] is not None
    assert gpus[1]["fault"].startswith("GPU is lost")
    assert faults == [f"gpu 1: {gpus[1]['fault']}"]
    fake_pynvml.lost.clear()  # the card came back (e.g. after a reset)
    assert source.sample()[1] == []


def test_xid_events_are_counted_since_the_agent_started(fake_pynvml):
    reader = nvml.NvmlReader()
    assert [g["xid_errors"] for g in reader.read_sample()["gpus"]] == [0, 0]
    fake_pynvml.xid_pending[1] = 3
    assert [g["xid_errors"] for g in reader.read_sample()["gpus"]] == [0, 3]
    fake_pynvml.xid_pending[1] = 1
    assert [g["xid_errors"] for g in reader.read_sample()["gpus"]] == [0, 4]


def test_xid_is_null_without_a_fault_where_events_are_not_supported(fake_pynvml):
    fake_pynvml.events_supported = False
    gpus, faults = nvml.NvmlSource().sample()
    assert [g["xid_errors"] for g in gpus] == [None, None]
    assert faults == []


def test_a_collector_on_nvml_produces_valid_samples_and_facts(fake_pynvml):
    collector = Collector(nvml.NvmlSource())
    first, second = collector.sweep(), collector.sweep()
    assert (first["seq"], second["seq"]) == (1, 2)
    assert validate_sample(second)["gpus"][1]["power_limit"] == 700.0
    facts = validate_facts(collector.facts())
    assert [g["uuid"] for g in facts["gpus"]] == [g["uuid"] for g in second["gpus"]]
