"""The dashboard's stream: compact GPU tiles, coalesced per node, deltas only.

A browser showing the GPU grid of 1,000 nodes does not need 1,000 full samples
a second (host figures, clocks, ECC counters, ~1.5 kB each): parsing them cost
the page ~300 ms of script per second (docs/benchmarks.md). It needs, per GPU,
the four figures a tile shows. So a subscription with `"view": "grid"` gets:

- a snapshot of compact tiles (`{"type": "snapshot", "nodes": [{..., "tiles": [...]}]}`),
- then at most one `{"type": "grid", "nodes": [[node, seq, [tile, ...]], ...]}`
  every GRID_INTERVAL, holding only the GPUs whose tile changed since the last
  one this browser was sent (a node sending ten samples in that time is sent once).

A tile is `[index, temperature °C, utilization %, memory used MiB, memory total
MiB, power W, power limit W, fault]`, each rounded to what the tile displays, so
a value that moves below display precision is not a change. Node states and
alerts are not delayed: they travel as their own messages, as in the full stream.
"""

from __future__ import annotations

MIB = 1024 * 1024
GRID_INTERVAL = 0.5  # seconds between a browser's grid messages at most


def _whole(value, scale: float = 1.0):
    return None if value is None else round(value / scale)


def tiles_of(sample: dict) -> list[list]:
    """The compact tiles of one validated sample (agents/protocol.py)."""
    return [
        [
            gpu["index"],
            _whole(gpu.get("temperature")),
            _whole(gpu.get("utilization_gpu")),
            _whole(gpu.get("memory_used"), MIB),
            _whole(gpu.get("memory_total"), MIB),
            _whole(gpu.get("power_draw")),
            _whole(gpu.get("power_limit")),
            gpu.get("fault") or None,
        ]
        for gpu in sample.get("gpus") or ()
    ]


class GridDeltas:
    """One browser's view of the grid: what it was last sent, and what changed since."""

    def __init__(self):
        self.sent: dict[int, dict[int, list]] = {}  # node -> gpu index -> tile
        self.waiting: dict[int, tuple[int, list[list]]] = {}  # node -> (seq, tiles), newest

    def seed(self, node_id: int, tiles: list[list]) -> None:
        """Tiles the browser already has (from its snapshot)."""
        self.sent[node_id] = {tile[0]: tile for tile in tiles}

    def take(self, node_id: int, seq: int, tiles: list[list]) -> None:
        self.waiting[node_id] = (seq, tiles)

    def take_delta(self) -> list[list]:
        """[[node, seq, changed tiles], ...] for every node with a changed tile."""
        rows = []
        for node_id, (seq, tiles) in self.waiting.items():
            known = self.sent.setdefault(node_id, {})
            changed = [tile for tile in tiles if known.get(tile[0]) != tile]
            if changed:
                for tile in changed:
                    known[tile[0]] = tile
                rows.append([node_id, seq, changed])
        self.waiting.clear()
        return rows
