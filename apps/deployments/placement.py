"""Choosing nodes and GPUs for a deployment's replicas."""

from __future__ import annotations

from django.db import transaction
from django.utils.translation import gettext_lazy as _

from agents.accelerators import VENDORS
from apps.core.i18n import lazy_message
from apps.deployments.models import DesiredState, Worker
from apps.inventory.health import takes_work
from apps.inventory.models import GPU, Cluster, Node, NodeState
from apps.inventory.preflight import blocks_work
from apps.telemetry import live

GiB = 1024**3
# Draining promises no new work; offline and retired nodes cannot take it.
TAKES_NO_WORK = {NodeState.DRAINING, NodeState.OFFLINE, NodeState.RETIRED}


class PlacementError(ValueError):
    """The placement cannot be satisfied; the message says why."""


def lock_cluster_placement(cluster_id: int) -> None:
    """Placements in one cluster take turns until their transaction ends.

    Each placement reads the GPUs in use and then claims some with new Worker
    rows; two at once would both see the same GPUs free. On PostgreSQL this holds
    the cluster row (FOR NO KEY UPDATE: rows referencing the cluster can still be
    inserted) until the caller's transaction commits with its workers. SQLite's
    transactions are IMMEDIATE (console/config.py), so writers already take turns.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("placement must run inside the transaction that creates its workers")
    list(Cluster.objects.select_for_update(no_key=True).filter(pk=cluster_id).values_list("pk"))


def gpus_in_use(deployment=None, slots=()) -> dict[int, set[int]]:
    """{node id: GPU indices} held by workers meant to run, except `deployment`'s `slots`."""
    held: dict[int, set[int]] = {}
    workers = Worker.objects.filter(desired_state=DesiredState.RUNNING)
    if deployment is not None and deployment.pk:
        workers = workers.exclude(deployment=deployment, slot__in=list(slots))
    for node_id, gpus in workers.values_list("node_id", "gpus"):
        held.setdefault(node_id, set()).update(gpus)
    return held


def runs_engine(node: Node, engine: str | None) -> bool:
    """Does `engine` run on this node's accelerators (agents/accelerators.py)?"""
    vendor = VENDORS.get(node.accelerator)
    return engine is None or vendor is None or engine in vendor.engines


def place_pinned(
    cluster, placement: dict, slots: list[int], held, engine: str | None = None
) -> dict[int, tuple[Node, list]]:
    targets = placement.get("targets") or []
    if len(targets) < max(slots) + 1:
        raise PlacementError(
            lazy_message(
                _(
                    "Pinned placement lists %(targets)d targets; "
                    "%(replicas)d replicas need one each."
                ),
                targets=len(targets),
                replicas=max(slots) + 1,
            )
        )
    chosen = {}
    for slot in slots:
        target = targets[slot]
        node = Node.objects.filter(pk=target.get("node"), cluster=cluster).first()
        if node is None:
            raise PlacementError(
                lazy_message(
                    _("Node %(node)s is not in cluster %(cluster)s."),
                    node=target.get("node"),
                    cluster=str(cluster),
                )
            )
        if node.state in TAKES_NO_WORK:
            raise PlacementError(
                lazy_message(
                    _("%(node)s is %(state)s and takes no new work; pin another node."),
                    node=str(node),
                    state=node.state,
                )
            )
        if not runs_engine(node, engine):
            raise PlacementError(
                lazy_message(
                    _("%(engine)s does not run on %(node)s's %(vendor)s accelerators."),
                    engine=engine,
                    node=str(node),
                    vendor=node.accelerator,
                )
            )
        failed = blocks_work(node.pk)
        if failed is not None:
            raise PlacementError(
                lazy_message(
                    _(
                        "%(node)s failed its preflight and takes no new work until an admin "
                        "overrides it or a new preflight passes."
                    ),
                    node=str(node),
                )
            )
        gpus = target.get("gpus") or []
        known = set(GPU.objects.filter(node=node).values_list("index", flat=True))
        if not set(gpus) <= known:
            raise PlacementError(
                lazy_message(
                    _("%(node)s has no GPU %(gpus)s."),
                    node=str(node),
                    gpus=str(sorted(set(gpus) - known)),
                )
            )
        refused = sorted(
            g.index for g in GPU.objects.filter(node=node, index__in=gpus) if not takes_work(g)
        )
        if refused:
            raise PlacementError(
                lazy_message(
                    _(
                        "GPUs %(gpus)s of %(node)s are cordoned or unhealthy and take no new "
                        "work; pin other GPUs or uncordon them."
                    ),
                    gpus=str(refused),
                    node=str(node),
                )
            )
        if set(gpus) & held.get(node.pk, set()):
            raise PlacementError(
                lazy_message(
                    _("GPUs %(gpus)s of %(node)s are used by another deployment."),
                    gpus=str(sorted(set(gpus) & held[node.pk])),
                    node=str(node),
                )
            )
        held.setdefault(node.pk, set()).update(gpus)
        chosen[slot] = (node, sorted(gpus))
    return chosen


def place_auto(
    cluster, placement: dict, slots: list[int], held, engine: str | None = None
) -> dict[int, tuple[Node, list]]:
    per_replica = int(placement.get("gpus_per_replica", 1))
    min_free = float(placement.get("min_free_gib", 0)) * GiB
    nodes = list(
        Node.objects.filter(cluster=cluster, state=NodeState.ONLINE).prefetch_related("gpus")
    )
    nodes = [n for n in nodes if blocks_work(n.pk) is None and runs_engine(n, engine)]
    latest = live.latest_samples([n.pk for n in nodes])
    free: dict[int, list[int]] = {}
    for node in nodes:
        readings = {g["index"]: g for g in (latest.get(node.pk) or {}).get("gpus", [])}
        free[node.pk] = [
            gpu.index
            for gpu in node.gpus.all()
            if gpu.index not in held.get(node.pk, set())
            and gpu.state == GPU.State.OK
            and takes_work(gpu)
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
                lazy_message(
                    _(
                        "No online node in %(cluster)s has %(gpus)d free GPU(s) with at least "
                        "%(gib).0f GiB free for replica %(slot)d."
                    ),
                    cluster=str(cluster),
                    gpus=per_replica,
                    gib=min_free / GiB,
                    slot=slot,
                )
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
    """Nodes and GPUs for `slots`; the caller creates their workers in the same
    transaction (the cluster stays locked until it ends)."""
    lock_cluster_placement(deployment.cluster_id)
    held = gpus_in_use(deployment, slots)
    mode = deployment.placement.get("mode")
    if mode == "pinned":
        return place_pinned(
            deployment.cluster, deployment.placement, slots, held, deployment.engine
        )
    if mode == "auto":
        return place_auto(deployment.cluster, deployment.placement, slots, held, deployment.engine)
    raise PlacementError(_("placement.mode must be 'pinned' or 'auto'."))
