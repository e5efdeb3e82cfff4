"""The outage buffer: bounded memory, newest samples intact, nothing silently lost."""

from __future__ import annotations

import pytest

from agents.buffer import SampleBuffer, merge, weight
from agents.collect import Collector
from agents.protocol import validate_sample
from agents.simulate import SimulatedSource


@pytest.fixture
def sweeps():
    collector = Collector(SimulatedSource(4, seed=11))
    return [collector.sweep() for _ in range(2000)]


def test_below_capacity_samples_come_back_unchanged_and_in_order(sweeps):
    buffer = SampleBuffer(capacity=50)
    for sample in sweeps[:50]:
        buffer.push(sample)
    assert buffer.take(100) == sweeps[:50]
    assert buffer.coalesced_total == 0


def test_a_long_outage_stays_within_capacity_and_accounts_for_every_sweep(sweeps):
    buffer = SampleBuffer(capacity=100, keep_recent=40)
    for _pushed, sample in enumerate(sweeps, start=1):
        buffer.push(sample)
        assert len(buffer) <= 100
    kept = buffer.take(1000)
    assert sum(weight(s) for s in kept) == len(sweeps)  # folded, never dropped
    assert buffer.coalesced_total == len(sweeps) - len(kept)
    seqs = [s["seq"] for s in kept]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert kept[-40:] == sweeps[-40:]  # the newest stay exactly as measured
    for sample in kept:
        validate_sample(sample)


def test_older_history_coarsens_evenly_oldest_first(sweeps):
    buffer = SampleBuffer(capacity=64, keep_recent=16)
    for sample in sweeps:
        buffer.push(sample)
    weights = [weight(s) for s in buffer.take(100)]
    assert weights == sorted(weights, reverse=True)  # never finer before coarser
    older = weights[:-16]
    assert all(w & (w - 1) == 0 for w in older)  # powers of two: 1, 2, 4...
    oldest_half = older[: len(older) // 2]
    assert max(oldest_half) <= 2 * min(oldest_half)  # even, no single giant blob


def test_the_console_can_tell_coalescing_from_loss(sweeps):
    buffer = SampleBuffer(capacity=10, keep_recent=4)
    for sample in sweeps[:30]:
        buffer.push(sample)
    previous = 0
    for sample in buffer.take(100):
        # The rule in docs/protocol.md: a gap is seq - previous - 1 - coalesced.
        assert sample["seq"] - previous - 1 - sample.get("coalesced", 0) == 0
        previous = sample["seq"]


def test_merging_averages_gauges_keeps_counters_and_unions_reasons(sweeps):
    older, newer = sweeps[0], sweeps[1]
    older["gpus"][0].update(temperature=40, xid_errors=2, throttle_reasons=["gpu_idle"])
    older["gpus"][0]["fault"] = "GPU is lost (temperature)"
    newer["gpus"][0].update(temperature=60, xid_errors=5, throttle_reasons=["sw_power_cap"])
    older["faults"], newer["faults"] = ["gpu 0: GPU is lost (temperature)"], []
    merged = merge(older, newer)
    gpu = merged["gpus"][0]
    assert (merged["seq"], merged["ts"], merged["coalesced"]) == (2, newer["ts"], 1)
    assert gpu["temperature"] == 50
    assert gpu["xid_errors"] == 5
    assert gpu["throttle_reasons"] == ["gpu_idle", "sw_power_cap"]
    assert gpu["fault"] == "GPU is lost (temperature)"  # a fault in the window shows
    assert merged["faults"] == ["gpu 0: GPU is lost (temperature)"]
    heavier = merge(merged, sweeps[2] | {"gpus": [dict(sweeps[2]["gpus"][0], temperature=80)]})
    assert heavier["gpus"][0]["temperature"] == pytest.approx((50 * 2 + 80) / 3, abs=0.001)
    assert heavier["coalesced"] == 2


def test_requeued_samples_go_back_ahead_of_newer_ones(sweeps):
    buffer = SampleBuffer(capacity=8, keep_recent=2)
    for sample in sweeps[:5]:
        buffer.push(sample)
    taken = buffer.take(3)
    buffer.push(sweeps[5])
    buffer.requeue(taken)
    assert [s["seq"] for s in buffer.take(100)] == [1, 2, 3, 4, 5, 6]


def test_a_requeue_that_overflows_still_respects_capacity(sweeps):
    buffer = SampleBuffer(capacity=8, keep_recent=2)
    for sample in sweeps[:8]:
        buffer.push(sample)
    taken = buffer.take(8)
    for sample in sweeps[8:14]:
        buffer.push(sample)
    buffer.requeue(taken)
    kept = buffer.take(100)
    assert len(kept) == 8
    assert sum(weight(s) for s in kept) == 14


def test_a_buffer_too_small_to_merge_is_refused():
    with pytest.raises(ValueError, match="at least one pair"):
        SampleBuffer(capacity=4, keep_recent=3)
