"""Choosing nodes and GPUs for a deployment's replicas."""

from __future__ import annotations

from apps.deployments.models import DesiredState, Worker
from apps.inventory.models import GPU, Node, NodeState
from apps.telemetry import live

GiB = 1024**3


class PlacementError(ValueError):
    """The placement cannot be satisfied; the message says why."""


def gpus_in_use(deployment=None, slots=()) -> dict[int, set[int]]:
    """{node id: GPU indices} held by workers meant to run, except `deployment`'s `slots`."""
    held: dict[int, set[int]] = {}
    workers = Worker.objects.filter(desired_state=DesiredState.RUNNING)
    if deployment is not None and deployment.pk:
        workers = workers.exclude(deployment=deployment, slot__in=list(slots))
    for node_id, gpus in workers.values_list("node_id", "gpus"):
        held.setdefault(node_id, set()).update(gpus)
    return held


def place_pinned(cluster, placement: dict, slots: list[int], held) -> dict[int, tuple[Node, list]]:
    targets = placement.get("targets") or []
    if len(targets) < max(slots) + 1:
        raise PlacementError(
            f"Pinned placement lists {len(targets)} targets; "
            f"{max(slots) + 1} replicas need one each."
        )
    chosen = {}
    for slot in slots:
        target = targets[slot]
        node = Node.objects.filter(pk=target.get("node"), cluster=cluster).first()
        if node is None:
            raise PlacementError(f"Node {target.get('node')} is not in cluster {cluster}.")
        gpus = target.get("gpus") or []
        known = set(GPU.objects.filter(node=node).values_list("index", flat=True))
        if not set(gpus) <= known:
            raise PlacementError(f"{node} has no GPU {sorted(set(gpus) - known)}.")
        if set(gpus) & held.get(node.pk, set()):
            raise PlacementError(
                f"GPUs {sorted(set(gpus) & held[node.pk])} of {node} are used "
                "by another deployment."
            )
        held.setdefault(node.pk, set()).update(gpus)
        chosen[slot] = (node, sorted(gpus))
    return chosen


def place_auto(cluster, placement: dict, slots: list[int], held) -> dict[int, tuple[Node, list]]:
    per_replica = int(placement.get("gpus_per_replica", 1))
    min_free = float(placement.get("min_free_gib", 0)) * GiB
    nodes = list(
        Node.objects.filter(cluster=cluster, state=NodeState.ONLINE).prefetch_related("gpus")
    )
    latest = live.latest_samples([n.pk for n in nodes])
    free: dict[int, list[int]] = {}
    for node in nodes:
        readings = {g["index"]: g for g in (latest.get(node.pk) or {}).get("gpus", [])}
        free[node.pk] = [
            gpu.index
            for gpu in node.gpus.all()
            if gpu.index not in held.get(node.pk, set())
            and gpu.state == GPU.State.OK
            and _free_bytes(readings.get(gpu.index), gpu) >= min_free
        ]
    chosen = {}
    for slot in slots:
        # Spread: the node with the most free GPUs first.
        candidates = sorted(
            (n for n in nodes if len(free[n.pk]) >= per_replica),
            key=lambda n: (-len(free[n.pk]), n.pk),
        )
        if not candidates:
            raise PlacementError(
                f"No online node in {cluster} has {per_replica} free GPU(s) with at least "
                f"{min_free / GiB:.0f} GiB free for replica {slot}."
            )
        node = candidates[0]
        gpus, free[node.pk] = free[node.pk][:per_replica], free[node.pk][per_replica:]
        held.setdefault(node.pk, set()).update(gpus)
        chosen[slot] = (node, gpus)
    return chosen


def _free_bytes(reading: dict | None, gpu: GPU) -> float:
    if (
        reading
        and reading.get("memory_total") is not None
        and reading.get("memory_used") is not None
    ):
        return reading["memory_total"] - reading["memory_used"]
    return gpu.memory_total or 0


def place(deployment, slots: list[int]) -> dict[int, tuple[Node, list]]:
    held = gpus_in_use(deployment, slots)
    mode = deployment.placement.get("mode")
    if mode == "pinned":
        return place_pinned(deployment.cluster, deployment.placement, slots, held)
    if mode == "auto":
        return place_auto(deployment.cluster, deployment.placement, slots, held)
    raise PlacementError("placement.mode must be 'pinned' or 'auto'.")
