"""Simulated GPUs: same shapes as real ones, clearly marked, and alive."""

from __future__ import annotations

from agents.collect import Collector
from agents.protocol import validate_facts, validate_sample
from agents.simulate import SimulatedSource


def test_simulated_facts_and_samples_are_valid_and_marked():
    collector = Collector(SimulatedSource(8, seed=1))
    facts = validate_facts(collector.facts())
    sample = validate_sample(collector.sweep())
    assert facts["simulated"] is True and sample["simulated"] is True
    assert [g["index"] for g in facts["gpus"]] == list(range(8))
    assert [g["uuid"] for g in sample["gpus"]] == [g["uuid"] for g in facts["gpus"]]
    assert len({g["uuid"] for g in facts["gpus"]}) == 8


def test_values_move_between_sweeps():
    source = SimulatedSource(2, seed=5)
    readings = [source.sample()[0][0] for _ in range(20)]
    for key in ("utilization_gpu", "power_draw", "memory_used"):
        assert len({r[key] for r in readings}) > 5, key


def test_temperature_follows_utilization():
    source = SimulatedSource(1, seed=9)
    gpu = source._gpus[0]

    def temperatures_at(utilization: float) -> list[int]:
        readings = []
        for _ in range(30):
            gpu.utilization = utilization  # pin the load; the walk adds noise around it
            readings.append(source.sample()[0][0]["temperature"])
        return readings

    idle, busy = temperatures_at(0), temperatures_at(100)
    assert max(idle[-5:]) < min(busy[-5:])


def test_the_same_seed_gives_the_same_gpus_so_a_restart_keeps_identities():
    first = SimulatedSource(4, seed=42).facts()["gpus"]
    again = SimulatedSource(4, seed=42).facts()["gpus"]
    other = SimulatedSource(4, seed=43).facts()["gpus"]
    assert [g["uuid"] for g in first] == [g["uuid"] for g in again]
    assert [g["uuid"] for g in first] != [g["uuid"] for g in other]
