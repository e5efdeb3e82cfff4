"""The validators the console runs on everything an agent sends."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from agents import protocol
from agents.protocol import ProtocolError, validate_facts, validate_message, validate_sample
from agents.simulate import SimulatedSource


def good_gpu(index: int = 0) -> dict[str, Any]:
    return {
        "index": index,
        "uuid": f"GPU-{index:08d}-0000-0000-0000-000000000000",
        "temperature": 41,
        "utilization_gpu": 97,
        "utilization_memory": 60,
        "memory_used": 10_000_000_000,
        "memory_total": 85_520_809_984,
        "power_draw": 312.5,
        "power_limit": 700.0,
        "sm_clock": 1980,
        "fan": None,
        "throttle_reasons": ["sw_power_cap"],
        "ecc_errors": 0,
        "xid_errors": 0,
        "fault": None,
    }


def good_sample(gpus: int = 2) -> dict[str, Any]:
    return {
        "seq": 1234,
        "ts": 1764000000.25,
        "simulated": False,
        "gpus": [good_gpu(i) for i in range(gpus)],
        "host": {
            "cpu_percent": 12.5,
            "memory_used": 12_000_000_000,
            "memory_total": 540_000_000_000,
            "disk_used": 100_000_000_000,
            "disk_total": 1_000_000_000_000,
        },
        "faults": [],
    }


def good_facts(gpus: int = 2) -> dict[str, Any]:
    return {
        "hostname": "gpu01",
        "os": "Debian GNU/Linux 12",
        "kernel": "6.1.0",
        "driver_version": "550.54",
        "cuda_version": "12.4",
        "cpu_count": 64,
        "memory_total": 540_000_000_000,
        "addresses": ["10.0.0.7", "fd00::7"],
        "simulated": False,
        "gpus": [
            {
                "index": i,
                "uuid": f"GPU-{i}",
                "name": "NVIDIA H100 80GB HBM3",
                "memory_total": 85_520_809_984,
                "pci_bus_id": f"00000000:{0x19 + i:02X}:00.0",
                "power_limit": 700.0,
                "mig_mode": False,
            }
            for i in range(gpus)
        ],
    }


def test_a_good_sample_comes_back_cleaned_as_a_new_dict():
    sample = good_sample()
    cleaned = validate_sample(sample)
    assert cleaned is not sample
    assert cleaned["gpus"][1]["temperature"] == 41
    assert cleaned["coalesced"] == 0  # optional field gets its default
    assert "mono" not in cleaned  # absent from older agents, and stays absent
    assert validate_sample({**sample, "mono": 8123.25})["mono"] == 8123.25


def test_a_faulted_gpu_may_have_no_readings_and_no_uuid():
    sample = good_sample(1)
    gpu = sample["gpus"][0]
    for key in protocol._GPU_SAMPLE_KEYS - {"index", "throttle_reasons"}:
        gpu[key] = None
    gpu["fault"] = "GPU is lost"
    assert validate_sample(sample)["gpus"][0]["fault"] == "GPU is lost"


def _set(path: str, value: Any):
    def mutate(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for part in parents:
            d = d[int(part)] if part.isdigit() else d[part]
        if value is _DELETE:
            del d[last]
        else:
            d[last] = value

    return mutate


_DELETE = object()

BAD_SAMPLES = {
    "missing seq": (_set("seq", _DELETE), "missing seq"),
    "seq is a bool": (_set("seq", True), "sample.seq must be an integer"),
    "seq negative": (_set("seq", -1), "sample.seq"),
    "ts is text": (_set("ts", "now"), "sample.ts must be a number"),
    "ts is NaN": (_set("ts", math.nan), "sample.ts"),
    "ts in 1970": (_set("ts", 12.0), "sample.ts"),
    "unknown top-level key": (_set("extra", 1), "unknown field(s) extra"),
    "gpus not a list": (_set("gpus", {}), "sample.gpus must be a list"),
    "gpu not an object": (_set("gpus", [1]), "sample.gpus[0] must be an object"),
    "gpu missing a metric": (_set("gpus.0.temperature", _DELETE), "missing temperature"),
    "gpu unknown key": (_set("gpus.0.temprature", 3), "temprature"),
    "duplicate gpu index": (_set("gpus.1.index", 0), "same GPU index"),
    "gpu index 64": (_set("gpus.0.index", 64), "sample.gpus[0].index"),
    "temperature 1000": (_set("gpus.0.temperature", 1000), "temperature = 1000"),
    "temperature infinite": (_set("gpus.0.temperature", math.inf), "temperature"),
    "utilization 101": (_set("gpus.0.utilization_gpu", 101), "utilization_gpu"),
    "utilization text": (_set("gpus.0.utilization_memory", "60"), "utilization_memory"),
    "memory used over total": (_set("gpus.0.memory_used", 10**12), "exceeds total"),
    "memory as float": (_set("gpus.0.memory_used", 1.5), "memory_used must be an integer"),
    "power negative": (_set("gpus.0.power_draw", -1.0), "power_draw"),
    "power absurd": (_set("gpus.0.power_limit", 1e9), "power_limit"),
    "sm clock float": (_set("gpus.0.sm_clock", 1980.5), "sm_clock must be an integer"),
    "fan text": (_set("gpus.0.fan", "50%"), "fan"),
    "unknown throttle reason": (_set("gpus.0.throttle_reasons", ["aliens"]), "aliens"),
    "throttle reasons not a list": (_set("gpus.0.throttle_reasons", "idle"), "must be a list"),
    "ecc negative": (_set("gpus.0.ecc_errors", -5), "ecc_errors"),
    "xid bool": (_set("gpus.0.xid_errors", False), "xid_errors"),
    "empty fault text": (_set("gpus.0.fault", ""), "fault must be 1..512"),
    "no uuid without a fault": (_set("gpus.0.uuid", None), "uuid must be a string"),
    "host missing": (_set("host", _DELETE), "missing host"),
    "host not an object": (_set("host", []), "sample.host must be an object"),
    "disk used over total": (_set("host.disk_used", 2 * 10**12), "disk: used"),
    "cpu over 100": (_set("host.cpu_percent", 250.0), "cpu_percent"),
    "faults not a list": (_set("faults", "broken"), "sample.faults must be a list"),
    "fault not text": (_set("faults", [42]), "sample.faults[0]"),
    "too many faults": (_set("faults", ["x"] * 65), "at most 64"),
    "coalesced negative": (_set("coalesced", -1), "coalesced"),
    "mono negative": (_set("mono", -1.0), "sample.mono = -1.0 is outside"),
    "mono as text": (_set("mono", "12"), "sample.mono must be a number"),
    "simulated as text": (_set("simulated", "no"), "sample.simulated"),
}


@pytest.mark.parametrize("name", sorted(BAD_SAMPLES))
def test_a_bad_sample_is_refused_with_a_message_naming_the_problem(name):
    mutate, expected = BAD_SAMPLES[name]
    sample = good_sample()
    mutate(sample)
    with pytest.raises(ProtocolError) as error:
        validate_sample(sample)
    assert expected in str(error.value)


def test_more_than_64_gpus_is_refused():
    with pytest.raises(ProtocolError, match="65 entries; at most 64"):
        validate_sample(good_sample(65))


def test_64_gpus_is_accepted():
    assert len(validate_sample(good_sample(64))["gpus"]) == 64


def test_a_sample_that_is_not_an_object_is_refused():
    with pytest.raises(ProtocolError, match="sample must be an object, got list"):
        validate_sample([])


def test_good_facts_come_back_cleaned():
    cleaned = validate_facts(good_facts())
    assert cleaned["addresses"] == ["10.0.0.7", "fd00::7"]
    assert cleaned["gpus"][0]["power_limit"] == 700.0


def test_facts_of_a_gpu_may_leave_out_what_nvml_cannot_say():
    facts = good_facts(1)
    facts["gpus"][0] = {"index": 0, "uuid": "GPU-0"}
    gpu = validate_facts(facts)["gpus"][0]
    assert gpu["name"] is None and gpu["mig_mode"] is None


BAD_FACTS = {
    "empty hostname": (_set("hostname", ""), "facts.hostname"),
    "address not an IP": (_set("addresses", ["gpu01.lan"]), "is not an IP address"),
    "cpu count zero": (_set("cpu_count", 0), "facts.cpu_count"),
    "memory as text": (_set("memory_total", "512G"), "facts.memory_total"),
    "missing simulated": (_set("simulated", _DELETE), "missing simulated"),
    "unknown key": (_set("rack", "A1"), "unknown field(s) rack"),
    "gpu index out of range": (_set("gpus.0.index", 99), "facts.gpus[0].index"),
    "gpu without uuid": (_set("gpus.0.uuid", _DELETE), "missing uuid"),
    "mig mode as text": (_set("gpus.0.mig_mode", "yes"), "mig_mode"),
    "duplicate gpu": (_set("gpus.1.index", 0), "same GPU index"),
    "gpus not a list": (_set("gpus", None), "facts.gpus must be a list"),
}


@pytest.mark.parametrize("name", sorted(BAD_FACTS))
def test_bad_facts_are_refused_with_a_message_naming_the_problem(name):
    mutate, expected = BAD_FACTS[name]
    facts = good_facts()
    mutate(facts)
    with pytest.raises(ProtocolError) as error:
        validate_facts(facts)
    assert expected in str(error.value)


def test_facts_with_65_gpus_are_refused():
    facts = good_facts(64)
    facts["gpus"].append({**facts["gpus"][0], "index": 0})
    with pytest.raises(ProtocolError, match="at most 64"):
        validate_facts(facts)


def test_hello_from_another_protocol_version_says_what_to_do():
    message = protocol.hello(good_facts(), "0.1.0")
    message["protocol"] = 2
    with pytest.raises(ProtocolError, match="upgrade the agent or the console"):
        validate_message(message)


def test_messages_are_validated_by_type():
    assert validate_message(protocol.telemetry(good_sample()))["sample"]["seq"] == 1234
    batch = validate_message(protocol.batch([good_sample(), good_sample()]))
    assert len(batch["samples"]) == 2
    bad = protocol.batch([good_sample()])
    bad["samples"][0]["seq"] = "x"
    with pytest.raises(ProtocolError, match=r"sample\.seq"):
        validate_message(bad)
    with pytest.raises(ProtocolError, match="unknown message type 'shell'"):
        validate_message({"type": "shell", "command": "rm -rf /"})


def test_a_batch_larger_than_the_limit_is_refused_both_ways():
    samples = [good_sample(1)] * (protocol.MAX_BATCH_SAMPLES + 1)
    with pytest.raises(ProtocolError):
        protocol.batch(samples)
    with pytest.raises(ProtocolError, match="at most 120"):
        validate_message({"type": "batch", "samples": samples})


def test_the_validator_does_not_modify_its_input():
    sample = good_sample()
    before = copy.deepcopy(sample)
    validate_sample(sample)
    assert sample == before


def test_simulated_output_passes_the_validators():
    source = SimulatedSource(8, seed=3)
    gpus, faults = source.sample()
    sample = {**good_sample(), "gpus": gpus, "faults": faults, "simulated": True}
    assert validate_sample(sample)["gpus"][7]["index"] == 7
