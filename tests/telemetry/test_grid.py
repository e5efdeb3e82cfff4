"""The dashboard's compact tiles and per-browser deltas (apps/telemetry/grid.py)."""

from apps.telemetry.grid import GridDeltas, tiles_of
from tests.telemetry.conftest import gpu_sample, sample


def test_a_tile_holds_the_four_figures_rounded_to_what_the_tile_shows():
    eight = sample(
        7,
        [
            gpu_sample(0, temperature=61.6, utilization_gpu=49.5, power_draw=201.4),
            gpu_sample(1, temperature=None, fault="NVML: GPU is lost"),
        ],
    )
    assert tiles_of(eight) == [
        [0, 62, 50, 954, 76294, 201, 700, None],
        [1, None, 50, 954, 76294, 200, 700, "NVML: GPU is lost"],
    ]
    assert tiles_of(sample(1, [])) == []


def test_only_tiles_that_changed_since_the_last_delta_are_sent():
    deltas = GridDeltas()
    deltas.seed(5, tiles_of(sample(1, [gpu_sample(0), gpu_sample(1)])))
    deltas.take(5, 2, tiles_of(sample(2, [gpu_sample(0), gpu_sample(1, temperature=70)])))
    assert deltas.take_delta() == [[5, 2, [[1, 70, 50, 954, 76294, 200, 700, None]]]]
    # A change below display precision is no change; nothing waits after a delta.
    deltas.take(
        5, 3, tiles_of(sample(3, [gpu_sample(0, temperature=40.2), gpu_sample(1, temperature=70)]))
    )
    assert deltas.take_delta() == []
    assert deltas.take_delta() == []


def test_several_samples_of_a_node_between_deltas_are_sent_once_as_the_newest():
    deltas = GridDeltas()
    for seq, temperature in ((1, 50), (2, 55), (3, 60)):
        deltas.take(9, seq, tiles_of(sample(seq, [gpu_sample(0, temperature=temperature)])))
    deltas.take(4, 1, tiles_of(sample(1, [gpu_sample(0)])))  # a node never seen before
    rows = deltas.take_delta()
    assert rows == [
        [9, 3, [[0, 60, 50, 954, 76294, 200, 700, None]]],
        [4, 1, [[0, 40, 50, 954, 76294, 200, 700, None]]],
    ]
