"""Deployment operations: create, start, stop, scale, restart, roll out, reconcile.

Views, Celery tasks and the agent socket call these. Every command to a node
carries a fresh operation id (the agent treats a repeated id as done), and the
reconcile job re-sends whatever the reported state says is missing.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from apps.alerts.services import evaluate_values
from apps.audit import recorder
from apps.audit.chain import REDACTED
from apps.core.i18n import lazy_message
from apps.deployments import signals
from apps.deployments.availability import record_state_change, start_afresh
from apps.deployments.models import (
    IN_PROGRESS,
    Deployment,
    DesiredState,
    RolloutState,
    Worker,
    WorkerState,
    new_engine_secret,
)
from apps.deployments.placement import (
    TAKES_NO_WORK,
    PlacementError,
    gpus_in_use,
    lock_cluster_placement,
    place,
)
from apps.inventory.commands import send_to_node
from apps.inventory.models import NodeState
from apps.registry.models import VersionState

log = logging.getLogger(__name__)
REDISPATCH_AFTER = timedelta(seconds=20)


class DeploymentError(ValueError):
    """An operation that cannot be done in the deployment's current state."""


# --- commands to agents ------------------------------------------------------------


def worker_spec(worker: Worker) -> dict:
    deployment = worker.deployment
    version = worker.model_version
    return {
        "worker_id": worker.pk,
        "deployment_id": deployment.pk,
        "engine": deployment.engine,
        "engine_args": list(deployment.engine_args),
        "model": {
            "version_id": version.pk,
            "path": version.path,
            "files": [
                {"path": f["path"], "sha256": f["sha256"], "size": f["size"]} for f in version.files
            ],
        },
        "gpus": list(worker.gpus),
        "port": worker.port or 0,  # 0: the agent picks a free port (protocol §4)
        "health_path": deployment.health_path or None,
        "command": deployment.command,
        "api_key": worker.engine_secret or None,
    }


def dispatch(worker: Worker, verb: str) -> str:
    """Send start/stop/restart for a worker to its node; returns the operation id."""
    operation_id = str(uuid.uuid4())
    kwargs = {"operation_id": operation_id}
    options = {}
    if verb == "start_worker":
        spec = worker_spec(worker)
        kwargs["spec"] = spec
        # Celery copies a task's arguments into its headers (`kwargsrepr`) for
        # worker logs and monitors: that copy goes without the engine key.
        hidden = REDACTED if spec["api_key"] else None
        options["kwargsrepr"] = repr({**kwargs, "spec": {**spec, "api_key": hidden}})
    else:
        kwargs["worker_id"] = worker.pk
    Worker.objects.filter(pk=worker.pk).update(
        last_operation_id=operation_id, dispatched_at=timezone.now()
    )
    worker.last_operation_id = operation_id
    if verb == "stop_worker" and worker.state in (WorkerState.READY, WorkerState.UNHEALTHY):
        # It may be serving through the gateway: routing ends now, the process later.
        transaction.on_commit(lambda: signals.worker_leaving.send(sender=Worker, worker=worker))
        options["countdown"] = settings.WORKER_DRAIN_SECONDS
    elif verb == "start_worker" and _replaces_a_draining_worker(worker):
        # A rollout's replacement takes its slot's port: it starts once the old one,
        # still finishing its requests, has been told to stop.
        options["countdown"] = settings.WORKER_DRAIN_SECONDS
    # After the transaction: a worker row the agent cannot see yet must not be reported on.
    transaction.on_commit(lambda: send_to_node(worker.node, verb, kwargs, **options))
    return operation_id


def _replaces_a_draining_worker(worker: Worker) -> bool:
    if worker.port is None:  # the agent picks another free port: no need to wait
        return False
    return (
        Worker.objects.filter(
            node_id=worker.node_id,
            port=worker.port,
            desired_state=DesiredState.STOPPED,
            state__in=(WorkerState.READY, WorkerState.UNHEALTHY, WorkerState.STOPPING),
        )
        .exclude(pk=worker.pk)
        .exists()
    )


def _lock(deployment: Deployment) -> Deployment:
    """Re-read `deployment` under its row lock, inside the caller's transaction.

    People's operations, reconcile and workers' reports all change a deployment
    and its workers; with the lock they take turns, and each decides from the
    row as the one before left it rather than from the copy it loaded earlier.
    """
    deployment.refresh_from_db(from_queryset=Deployment.objects.select_for_update())
    return deployment


def _note(action: str, deployment: Deployment, operations: list[str], **changes) -> None:
    recorder.describe(
        action=action, target=deployment, changes={"operation_ids": operations, **changes}
    )


# --- operations --------------------------------------------------------------------


@transaction.atomic
def create_deployment(user, **fields) -> Deployment:
    version = fields["model_version"]
    if version.state != VersionState.READY:
        raise DeploymentError(
            lazy_message(
                _("Version %(version)s is %(state)s; only ready versions deploy."),
                version=str(version),
                state=version.state,
            )
        )
    deployment = Deployment.objects.create(created_by=user, **fields)
    operations = _add_workers(deployment, list(range(deployment.replicas)))
    _note("deployments.create", deployment, operations)
    return deployment


def _add_workers(deployment: Deployment, slots: list[int]) -> list[str]:
    placed = place(deployment, slots)
    operations = []
    for slot in slots:
        node, gpus = placed[slot]
        worker = Worker.objects.create(
            engine_secret=new_engine_secret(),
            deployment=deployment,
            node=node,
            model_version=deployment.model_version,
            slot=slot,
            gpus=gpus,
            port=None if deployment.port is None else deployment.port + slot,
            desired_state=deployment.desired_state,
        )
        if deployment.desired_state == DesiredState.RUNNING:
            operations.append(dispatch(worker, "start_worker"))
    return operations


def live_workers(deployment: Deployment):
    return deployment.workers.filter(desired_state=DesiredState.RUNNING)


@transaction.atomic
def stop_deployment(deployment: Deployment) -> list[str]:
    _lock(deployment)
    deployment.desired_state = DesiredState.STOPPED
    deployment.save(update_fields=["desired_state", "updated_at"])
    operations = []
    for worker in live_workers(deployment).select_related("node"):
        operations.append(_stop_worker(worker))
    _note("deployments.stop", deployment, operations)
    return operations


def _stop_worker(worker: Worker) -> str:
    Worker.objects.filter(pk=worker.pk).update(
        desired_state=DesiredState.STOPPED, state=WorkerState.STOPPING
    )
    worker.desired_state = DesiredState.STOPPED
    return dispatch(worker, "stop_worker")


@transaction.atomic
def start_deployment(deployment: Deployment) -> list[str]:
    _lock(deployment)
    deployment.desired_state = DesiredState.RUNNING
    deployment.save(update_fields=["desired_state", "updated_at"])
    operations = []
    slots = list(range(deployment.replicas))
    # A stopped worker holds no GPUs: while it was stopped another deployment may
    # have taken them, or its node may have been drained. Such a slot is placed
    # afresh (its old worker, superseded, is removed by reconcile).
    lock_cluster_placement(deployment.cluster_id)
    held = gpus_in_use(deployment, slots)
    current = {
        w.slot: w
        for w in deployment.workers.filter(
            model_version=deployment.model_version, slot__lt=deployment.replicas
        ).select_related("node")
        if w.node.state not in TAKES_NO_WORK and not set(w.gpus) & held.get(w.node_id, set())
    }
    start_afresh([w.pk for w in current.values()])
    for worker in current.values():
        Worker.objects.filter(pk=worker.pk).update(
            desired_state=DesiredState.RUNNING, state=WorkerState.PENDING
        )
        operations.append(dispatch(worker, "start_worker"))
    missing = [s for s in slots if s not in current]
    if missing:
        operations += _add_workers(deployment, missing)
    _note("deployments.start", deployment, operations)
    return operations


@transaction.atomic
def scale_deployment(deployment: Deployment, replicas: int) -> list[str]:
    if not 0 < replicas <= 64:
        raise DeploymentError(_("replicas must be between 1 and 64."))
    _lock(deployment)
    if deployment.rollout_state == RolloutState.ROLLING:
        raise DeploymentError(_("Wait for the rollout to finish before scaling."))
    old = deployment.replicas
    deployment.replicas = replicas
    deployment.save(update_fields=["replicas", "updated_at"])
    operations = []
    if deployment.desired_state == DesiredState.RUNNING:
        if replicas > old:
            operations = _add_workers(deployment, list(range(old, replicas)))
        for worker in live_workers(deployment).filter(slot__gte=replicas).select_related("node"):
            operations.append(_stop_worker(worker))
    _note("deployments.scale", deployment, operations, replicas=[old, replicas])
    return operations


@transaction.atomic
def restart_worker(worker: Worker) -> str:
    worker.refresh_from_db(from_queryset=Worker.objects.select_for_update())
    if worker.desired_state != DesiredState.RUNNING:
        raise DeploymentError(_("The worker is stopped; start its deployment instead."))
    start_afresh([worker.pk])
    operation = dispatch(worker, "restart_worker")
    recorder.describe(
        action="deployments.restart-worker", target=worker, changes={"operation_ids": [operation]}
    )
    return operation


@transaction.atomic
def roll_out(deployment: Deployment, version, action: str = "deployments.rollout") -> list[str]:
    """Replace workers one at a time with `version`; each must be ready before the next."""
    _lock(deployment)
    if version.state != VersionState.READY:
        raise DeploymentError(
            lazy_message(
                _("Version %(version)s is %(state)s; only ready versions deploy."),
                version=str(version),
                state=version.state,
            )
        )
    if version.model_id != deployment.model_version.model_id:
        raise DeploymentError(_("Roll out a version of the same model."))
    if version.pk == deployment.model_version_id:
        raise DeploymentError(
            lazy_message(_("The deployment already runs %(version)s."), version=str(version))
        )
    deployment.previous_version = deployment.model_version
    deployment.model_version = version
    deployment.rollout_state = RolloutState.ROLLING
    deployment.rollout_error = ""
    deployment.save(
        update_fields=[
            "previous_version",
            "model_version",
            "rollout_state",
            "rollout_error",
            "updated_at",
        ]
    )
    operations = advance_rollout(deployment)
    _note(action, deployment, operations, version=[str(deployment.previous_version), str(version)])
    return operations


def roll_back(deployment: Deployment) -> list[str]:
    if deployment.previous_version is None:
        raise DeploymentError(_("There is no previous version to roll back to."))
    return roll_out(deployment, deployment.previous_version, action="deployments.rollback")


def advance_rollout(deployment: Deployment) -> list[str]:
    """One step of a rolling update, called on every worker report and by reconcile.

    Under the deployment's lock: two callers at once would otherwise both see the
    same old worker and both start a replacement for its slot.
    """
    with transaction.atomic():
        _lock(deployment)
        return _rollout_step(deployment)


def _rollout_step(deployment: Deployment) -> list[str]:
    if deployment.rollout_state != RolloutState.ROLLING:
        return []
    target = deployment.model_version_id
    running = list(live_workers(deployment).select_related("node", "model_version"))
    new = [w for w in running if w.model_version_id == target]
    old = [w for w in running if w.model_version_id != target]
    broken = [w for w in new if w.state in (WorkerState.FAILED, WorkerState.CRASHLOOP)]
    if broken:
        worker = broken[0]
        reason = (
            f"new worker {worker.slot} on {worker.node} is {worker.state}: "
            f"{worker.error or worker.cause or 'see its log'}"
        )
        Deployment.objects.filter(pk=deployment.pk).update(
            rollout_state=RolloutState.FAILED, rollout_error=reason[:500]
        )
        deployment.rollout_state = RolloutState.FAILED
        recorder.record("deployments.rollout-failed", target=deployment, changes={"reason": reason})
        # Keep serving: the remaining old workers stay; the broken slot gets its old
        # version back. A failed worker has no process left; it stays on record as
        # failed (with its error) and only a crash-looping one needs stopping.
        operations = []
        for worker in broken:
            if worker.state == WorkerState.CRASHLOOP:
                operations.append(_stop_worker(worker))
            else:
                Worker.objects.filter(pk=worker.pk).update(desired_state=DesiredState.STOPPED)
        return operations + _restore_slots(deployment, broken)
    if any(w.state != WorkerState.READY for w in new):
        return []  # wait for the new worker to be ready
    if not old:
        Deployment.objects.filter(pk=deployment.pk).update(rollout_state=RolloutState.IDLE)
        deployment.rollout_state = RolloutState.IDLE
        recorder.record(
            "deployments.rollout-done",
            target=deployment,
            changes={"version": str(deployment.model_version)},
        )
        return []
    victim = min(old, key=lambda w: w.slot)
    operations = [_stop_worker(victim)]
    replacement = Worker.objects.create(
        engine_secret=new_engine_secret(),
        deployment=deployment,
        node=victim.node,
        model_version_id=target,
        slot=victim.slot,
        gpus=victim.gpus,
        port=victim.port if deployment.port is not None else None,
        desired_state=DesiredState.RUNNING,
    )
    operations.append(dispatch(replacement, "start_worker"))
    return operations


def _restore_slots(deployment: Deployment, broken: list[Worker]) -> list[str]:
    operations = []
    previous = deployment.previous_version_id
    for worker in broken:
        if previous is None:
            continue
        restored = Worker.objects.create(
            engine_secret=new_engine_secret(),
            deployment=deployment,
            node=worker.node,
            model_version_id=previous,
            slot=worker.slot,
            gpus=worker.gpus,
            port=worker.port if deployment.port is not None else None,
            desired_state=DesiredState.RUNNING,
        )
        operations.append(dispatch(restored, "start_worker"))
    return operations


# --- GPU health (apps/inventory/health.py) -----------------------------------------


def evacuate_gpu(gpu, reasons: list) -> list[str]:
    """Stop the workers that use an unhealthy GPU and place each slot elsewhere.

    Called when the health policy says so (stop_workers_when_unhealthy). Each
    deployment's move is audited with the GPU's evidence; a slot that fits
    nowhere else stays stopped, and the audit event says why.
    """
    operations: list[str] = []
    workers = Worker.objects.filter(
        node_id=gpu.node_id, desired_state=DesiredState.RUNNING
    ).select_related("deployment", "node")
    # Filtered here, not in SQL: JSON containment differs between PostgreSQL and SQLite.
    for worker in [w for w in workers if gpu.index in w.gpus]:
        with transaction.atomic():
            deployment = _lock(worker.deployment)
            moved = [_stop_worker(worker)]
            outcome = "moved"
            try:
                moved += _add_workers(deployment, [worker.slot])
            except PlacementError as exc:
                outcome = f"not placed: {exc}"[:500]
            recorder.record(
                "deployments.evacuate",
                target=deployment,
                changes={
                    "gpu": str(gpu),
                    "worker": worker.pk,
                    "slot": worker.slot,
                    "evidence": reasons,
                    "outcome": outcome,
                    "operation_ids": moved,
                },
            )
            operations += moved
    return operations


# --- reports from agents -------------------------------------------------------------

# Text and JSON columns store "nothing" as empty rather than null.
EMPTY = {"cause": "", "evidence": "", "error": "", "progress": {}, "last_log": []}
STATUS_FIELDS = (
    "state",
    "pid",
    "port",  # the agent's pick where the deployment pins none
    "restarts",
    "run",
    "exit_code",
    "exit_signal",
    "cause",
    "evidence",
    "error",
    "progress",
    "last_log",
)


def apply_worker_status(node, status: dict) -> Worker | None:
    """Store what a node's agent says about one of its workers.

    A status for a worker of another node is ignored: an agent speaks for its own
    node only. A worker the console no longer wants is told to stop.
    """
    with transaction.atomic():
        # Locked and read now: stop, scale and start change desired_state,
        # dispatched_at and first_ready_at of this row at any moment.
        worker = (
            Worker.objects.select_for_update(of=("self",))
            .select_related("deployment", "node")
            .filter(pk=status["worker_id"])
            .first()
        )
        ours = worker is not None and worker.node_id == node.pk
        if ours:
            old_state = worker.state
            _store_status(worker, status)
    if not ours:
        if worker is None and status.get("state") not in (WorkerState.STOPPED, WorkerState.FAILED):
            send_to_node(
                node,
                "stop_worker",
                {"operation_id": str(uuid.uuid4()), "worker_id": status["worker_id"]},
            )
        return None
    if worker.state != old_state and worker.state in (WorkerState.FAILED, WorkerState.CRASHLOOP):
        recorder.record(
            f"deployments.worker-{worker.state}",
            target=worker,
            actor_type=recorder.Actor.NODE,
            actor_id=str(node.pk),
            actor_name=str(node),
            changes={
                "state": [old_state, worker.state],
                "cause": worker.cause,
                "evidence": worker.evidence,
                "error": worker.error,
            },
        )
    if (worker.state == WorkerState.CRASHLOOP) != (old_state == WorkerState.CRASHLOOP):
        _crashloop_changed(node, worker)
    if worker.deployment.rollout_state == RolloutState.ROLLING:
        advance_rollout(worker.deployment)
    return worker


def _store_status(worker: Worker, status: dict) -> None:
    """Write the reported columns only; the rest of the row is people's and reconcile's."""
    old_state, first_ready = worker.state, worker.first_ready_at
    fields = ["reported_at"]
    for name in STATUS_FIELDS:
        if name in status:
            value = status[name]
            if name == "port" and value is None:
                continue  # a port once known stays the worker's
            setattr(worker, name, EMPTY.get(name) if value is None else value)
            fields.append(name)
    worker.reported_at = timezone.now()
    if worker.state != old_state:
        record_state_change(worker, worker.reported_at)
    if worker.first_ready_at != first_ready:
        fields.append("first_ready_at")
    worker.save(update_fields=fields)
    if worker.state != old_state:
        signals.worker_state_changed.send(sender=Worker, worker=worker)


def _crashloop_changed(node, worker: Worker) -> None:
    """Feed worker.<id>.crashloop to the alert rules, with the last run's cause."""
    series = f"worker.{worker.pk}.crashloop"
    cause = f"last run ended: {worker.cause or 'unknown'}"
    if worker.evidence:
        cause += f" ({worker.evidence})"
    evaluate_values(
        node,
        {series: 1.0 if worker.state == WorkerState.CRASHLOOP else 0.0},
        details={series: f"{worker.deployment.name} replica {worker.slot}: {cause}"},
    )


# --- reconcile -----------------------------------------------------------------------


def reconcile() -> dict:
    """Compare desired with reported state and re-send what is missing."""
    now = timezone.now()
    resent = {"start": 0, "stop": 0, "removed": 0}
    stale = now - REDISPATCH_AFTER
    workers = list(Worker.objects.select_related("deployment", "node", "model_version"))
    # Slots that have a worker meant to run: a stopped worker there was replaced.
    running_slots = {
        (w.deployment_id, w.slot) for w in workers if w.desired_state == DesiredState.RUNNING
    }
    for worker in workers:
        node_up = worker.node.state in (NodeState.ONLINE, NodeState.DEGRADED)
        waited = worker.dispatched_at is None or worker.dispatched_at < stale
        reported_since = (
            worker.reported_at
            and worker.dispatched_at
            and worker.reported_at >= worker.dispatched_at
        )
        if worker.desired_state == DesiredState.RUNNING:
            missing = (
                worker.state == WorkerState.STOPPED
                or (worker.state in IN_PROGRESS and not reported_since)
                # The agent could not take the start (its state directory full):
                # it said why on the worker, and the start is asked for again.
                or (worker.state == WorkerState.PENDING and bool(worker.error))
            )
            if node_up and waited and missing:
                with transaction.atomic():
                    if _unchanged_since_read(worker):
                        dispatch(worker, "start_worker")
                        resent["start"] += 1
        elif worker.state == WorkerState.STOPPED:
            superseded = (worker.deployment_id, worker.slot) in running_slots
            if superseded or worker.slot >= worker.deployment.replicas:
                # Only if still stopped and unwanted: a start meanwhile reuses it.
                gone, _kinds = Worker.objects.filter(
                    pk=worker.pk, state=WorkerState.STOPPED, desired_state=worker.desired_state
                ).delete()
                resent["removed"] += 1 if gone else 0
        elif worker.state != WorkerState.FAILED and node_up and waited:
            # (a failed worker has no process to stop; it stays on record)
            with transaction.atomic():
                if _unchanged_since_read(worker):
                    dispatch(worker, "stop_worker")
                    resent["stop"] += 1
    for deployment in Deployment.objects.filter(rollout_state=RolloutState.ROLLING):
        advance_rollout(deployment)
    return resent


def _unchanged_since_read(worker: Worker) -> bool:
    """Lock the worker's row; True if what reconcile decided from is still so.

    Reconcile reads every worker first and acts on each in turn; a stop, start or
    report in between must not be answered with a command for the old state.
    """
    return (
        Worker.objects.select_for_update()
        .filter(
            pk=worker.pk,
            desired_state=worker.desired_state,
            state=worker.state,
            dispatched_at=worker.dispatched_at,
        )
        .values_list("pk")
        .first()
        is not None
    )
