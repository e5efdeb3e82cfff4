"""Node preflight in the console: ask the agent, keep each run, block a failed node.

The agent runs the checks (agents/preflight.py); the console sends only what
it knows (the model roots, the GPU count the node's label expects, the CUDA
version engines need) and keeps each answer as a PreflightRun. A node whose
latest run failed takes no new work until an admin overrides that run.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django.conf import settings
from django.utils import timezone

from agents.preflight import overall
from agents.protocol import ProtocolError
from apps.audit import recorder
from apps.inventory import commands
from apps.inventory.models import Node, PreflightRun

GPU_COUNT_LABEL = "hangar.io/gpu-count"
PREFLIGHT_TIMEOUT_S = 60.0  # the read-throughput test alone may take 10 s per model root


class PreflightNotOverridable(ValueError):
    """Only a failed latest run can be overridden."""


def preflight_arguments(node: Node) -> dict:
    expected = str(node.labels.get(GPU_COUNT_LABEL, "")).strip()
    return {
        "model_roots": list(settings.MODEL_ROOTS),
        "expected_gpus": int(expected) if expected.isdigit() else None,
        "min_cuda": settings.PREFLIGHT_MIN_CUDA or None,
    }


def run_preflight(node: Node, user=None) -> PreflightRun:
    """Ask the node's agent to run its checks and keep the answer (or why there is none)."""
    started = timezone.now()
    try:
        answer = commands.ask_node(
            node, "preflight", timeout=PREFLIGHT_TIMEOUT_S, kwargs=preflight_arguments(node)
        )
    except (commands.NodeUnreachable, ProtocolError) as exc:
        run = PreflightRun.objects.create(
            node=node,
            requested_by=user,
            started_at=started,
            finished_at=timezone.now(),
            status=PreflightRun.Status.ERROR,
            error=str(exc)[:500],
        )
    else:
        run = PreflightRun.objects.create(
            node=node,
            requested_by=user,
            started_at=datetime.fromtimestamp(answer["started_at"], tz=UTC),
            finished_at=datetime.fromtimestamp(answer["finished_at"], tz=UTC),
            status=overall(answer["results"]),
            results=answer["results"],
        )
    changes = {"preflight_run": run.pk, "result": run.status, "error": run.error}
    if user is not None:
        recorder.describe(target=node, changes=changes)
    else:
        recorder.record("inventory.preflight", target=node, changes=changes)
    return run


def latest_run(node_id: int) -> PreflightRun | None:
    return PreflightRun.objects.filter(node_id=node_id).first()


def blocks_work(node_id: int) -> PreflightRun | None:
    """The failed, not overridden latest run that keeps new work off the node, if any."""
    run = latest_run(node_id)
    if run is not None and run.status == PreflightRun.Status.FAIL and run.overridden_at is None:
        return run
    return None


def override_preflight(node: Node, user, reason: str) -> PreflightRun:
    """An admin lets work onto a node whose latest preflight failed (audited)."""
    run = latest_run(node.pk)
    if run is None or run.status != PreflightRun.Status.FAIL or run.overridden_at is not None:
        raise PreflightNotOverridable
    run.overridden_at, run.overridden_by = timezone.now(), user
    run.override_reason = reason[:255]
    run.save(update_fields=["overridden_at", "overridden_by", "override_reason"])
    failed = [r for r in run.results if r["status"] == "fail"]
    recorder.describe(
        target=node,
        changes={"preflight_run": run.pk, "overridden": True, "reason": reason, "failed": failed},
    )
    return run
