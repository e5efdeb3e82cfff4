"""Accelerators beyond NVIDIA: Ascend `npu-smi info` from public reports, device pinning.

No Ascend card ran these: the outputs are copied from the issue reports named in
tests/agents/fixtures/ascend/SOURCES.md.
"""

from __future__ import annotations

import json
import types

from agents.accelerators import (
    NPU_SMI_INFO,
    VENDORS,
    AmdSource,
    AscendSource,
    ascend_facts,
    parse_npu_smi_info,
    pin_environment,
)
from agents.collect import Collector
from agents.host import facts as host_facts
from agents.protocol import validate_facts, validate_sample
from tests.agents.agent_helpers import FIXTURES

ASCEND = FIXTURES / "ascend"


def read(name: str) -> str:
    return (ASCEND / name).read_text()


def test_a_two_chip_910_table_gives_one_entry_per_chip():
    chips = parse_npu_smi_info(read("npu_smi_info_910_two_chips.txt"))
    assert [(c["npu"], c["chip"], c["phy_id"], c["bus_id"]) for c in chips] == [
        (0, 0, 0, "0000:9D:00.0"),
        (0, 1, 1, "0000:9F:00.0"),
        (1, 0, 2, "0000:99:00.0"),
    ]
    assert [c["power_w"] for c in chips] == [178.5, None, 186.3]  # "-" is no reading, not 0
    assert chips[0]["hbm_used"] == 3416 * 2**20 and chips[0]["hbm_total"] == 65536 * 2**20
    assert {c["health"] for c in chips} == {"OK"}


def test_a_910b4_table_without_phy_id_parses_and_masked_bus_ids_are_dropped():
    chips = parse_npu_smi_info(read("npu_smi_info_910b4.txt"))
    assert [(c["npu"], c["name"], c["phy_id"], c["temperature"]) for c in chips] == [
        (0, "910B4-1", None, 33.0),
        (1, "910B4-1", None, 32.0),
    ]
    facts = ascend_facts(chips)
    assert [g["pci_bus_id"] for g in facts["gpus"]] == [None, None]  # posted as 0000:xx:00.0
    assert len({g["uuid"] for g in facts["gpus"]}) == 2


def run_returning(text: str, status: int = 0):
    calls = []

    def run(argv, timeout):
        calls.append((argv, timeout))
        return status, text

    return run, calls


def test_the_ascend_source_produces_valid_facts_and_samples():
    run, calls = run_returning(read("npu_smi_info_910_two_chips.txt"))
    collector = Collector(AscendSource(run))
    validate_facts({**host_facts(), **collector.facts(), "simulated": False})
    sample = validate_sample(collector.sweep())
    assert [g["utilization_gpu"] for g in sample["gpus"]] == [0, 0, 0]
    assert sample["gpus"][1]["power_draw"] is None and sample["faults"] == []
    assert "health" not in sample  # npu-smi info has no NVML-style health fields
    assert calls[0] == (NPU_SMI_INFO, 5.0)  # a fixed argument vector with a timeout


def test_a_chip_whose_health_is_not_ok_is_a_fault():
    text = read("npu_smi_info_910b4.txt").replace(
        "| OK            | 88.1", "| Alarm         | 88.1"
    )
    run, _ = run_returning(text)
    gpus, faults = AscendSource(run).sample()
    assert gpus[1]["fault"] == "npu-smi health: Alarm"
    assert faults == ["gpu 1: npu-smi health: Alarm"]


def test_npu_smi_failing_is_a_node_fault_not_an_empty_success():
    run, _ = run_returning("", status=127)
    assert AscendSource(run).sample() == ([], ["npu-smi: exit status 127"])


def test_each_vendor_pins_workers_with_its_own_variable():
    assert pin_environment("nvidia", [0, 3]) == {"CUDA_VISIBLE_DEVICES": "0,3"}
    assert pin_environment("ascend", [1]) == {"ASCEND_RT_VISIBLE_DEVICES": "1"}
    assert "sglang" in VENDORS["nvidia"].engines and "sglang" not in VENDORS["ascend"].engines


# --- AMD through amdsmi, replaying answers from public reports ---------------------------


class _AmdSmiError(Exception):
    pass


def replay_amdsmi(machine: str):
    """An amdsmi stand-in answering, for one GPU, what the named report printed;
    a call the report did not show raises, as amdsmi does for what it cannot read."""
    answers = json.loads((FIXTURES / "amd" / "amdsmi_answers.json").read_text())
    known = answers["machines"][machine]

    def call(name):
        def answer(handle):
            if name not in known:
                raise _AmdSmiError(f"{name}: not in the sourced report")
            return known[name]

        return answer

    names = ("amdsmi_get_gpu_asic_info", "amdsmi_get_gpu_device_bdf", "amdsmi_get_gpu_activity")
    return types.SimpleNamespace(
        amdsmi_init=lambda: None,
        amdsmi_shut_down=lambda: None,
        amdsmi_get_processor_handles=lambda: ["gpu0"],
        **{name: call(name) for name in names},
    )


def test_an_mi350x_is_named_by_its_market_name_and_bus_id():
    facts = AmdSource(replay_amdsmi("mi350x")).facts()
    validate_facts({**host_facts(), **facts, "simulated": False, "accelerator": "amd"})
    (gpu,) = facts["gpus"]
    assert (gpu["name"], gpu["pci_bus_id"], gpu["uuid"]) == (
        "AMD Instinct MI350X",
        "0000:05:00.0",
        "amd-0000:05:00.0",
    )


def test_a_w7700_s_activity_becomes_utilization_and_unsourced_fields_stay_null():
    collector = Collector(AmdSource(replay_amdsmi("w7700")))
    sample = validate_sample(collector.sweep())
    (gpu,) = sample["gpus"]
    assert (gpu["utilization_gpu"], gpu["utilization_memory"]) == (42, 1)
    assert gpu["memory_total"] is None and gpu["power_draw"] is None
    assert collector.facts()["accelerator"] == "amd"


def test_an_amdsmi_error_on_activity_is_a_gpu_fault():
    source = AmdSource(replay_amdsmi("mi350x"))  # this report shows no activity
    gpus, faults = source.sample()
    assert gpus[0]["utilization_gpu"] is None
    assert faults == ["gpu 0: amdsmi_get_gpu_activity: not in the sourced report"]


def test_amd_workers_are_pinned_with_hip_visible_devices_only():
    assert pin_environment("amd", [2, 3]) == {"HIP_VISIBLE_DEVICES": "2,3"}


def test_the_cli_offers_every_vendor_the_agent_knows():
    from agents.cli import ACCELERATOR_CHOICES

    assert set(ACCELERATOR_CHOICES) == set(VENDORS)
