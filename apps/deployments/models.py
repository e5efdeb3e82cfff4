"""Deployments (desired state) and their workers (one process on one node each)."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models


class DesiredState(models.TextChoices):
    RUNNING = "running"
    STOPPED = "stopped"


class RolloutState(models.TextChoices):
    IDLE = "idle"
    ROLLING = "rolling"
    FAILED = "failed"


class Deployment(models.Model):
    name = models.CharField(max_length=100, unique=True)
    cluster = models.ForeignKey(
        "inventory.Cluster", on_delete=models.PROTECT, related_name="deployments"
    )
    model_version = models.ForeignKey(
        "registry.ModelVersion", on_delete=models.PROTECT, related_name="deployments"
    )
    previous_version = models.ForeignKey(
        "registry.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    engine = models.CharField(max_length=32)
    engine_args = models.JSONField(default=list, blank=True)
    command = models.JSONField(null=True, blank=True)  # the generic engine's argv
    health_path = models.CharField(max_length=200, blank=True, default="")
    replicas = models.PositiveSmallIntegerField(default=1)
    # {"mode": "pinned", "targets": [{"node": 3, "gpus": [0, 1]}, ...]} or
    # {"mode": "auto", "gpus_per_replica": 1, "min_free_gib": 20}
    placement = models.JSONField(default=dict)
    # Pinned: replica n listens on port + n. Empty: each worker's agent picks a free
    # port of its range (hangar-agent run --worker-ports; agents/workers/ports.py).
    port = models.PositiveIntegerField(
        null=True, blank=True, help_text="First port (pinned); empty: the agent picks one."
    )
    desired_state = models.CharField(
        max_length=16, choices=DesiredState.choices, default=DesiredState.RUNNING
    )
    rollout_state = models.CharField(
        max_length=16, choices=RolloutState.choices, default=RolloutState.IDLE
    )
    rollout_error = models.CharField(max_length=500, blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    policy_cluster_path = "cluster"

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def policy_cluster_id(self) -> int | None:
        return self.cluster_id


class WorkerState(models.TextChoices):
    PENDING = "pending"
    FETCHING = "fetching"
    VERIFYING = "verifying"
    STARTING = "starting"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    CRASHLOOP = "crashloop"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


def new_engine_secret() -> str:
    """A worker's engine key: only its agent (to give the engine) and the gateway know it."""
    return secrets.token_urlsafe(32)


IN_PROGRESS = {
    WorkerState.PENDING,
    WorkerState.FETCHING,
    WorkerState.VERIFYING,
    WorkerState.STARTING,
}


class Worker(models.Model):
    """One inference process of a deployment on one node; the agent reports its state."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="workers")
    node = models.ForeignKey("inventory.Node", on_delete=models.PROTECT, related_name="workers")
    model_version = models.ForeignKey(
        "registry.ModelVersion", on_delete=models.PROTECT, related_name="+"
    )
    slot = models.PositiveSmallIntegerField(help_text="Replica number within the deployment.")
    gpus = models.JSONField(default=list)
    # Empty until the agent reports the port it picked (the deployment pins none).
    port = models.PositiveIntegerField(null=True, blank=True)
    desired_state = models.CharField(
        max_length=16, choices=DesiredState.choices, default=DesiredState.RUNNING
    )
    state = models.CharField(
        max_length=16, choices=WorkerState.choices, default=WorkerState.PENDING
    )
    pid = models.PositiveIntegerField(null=True, blank=True)
    restarts = models.PositiveIntegerField(default=0)
    run = models.PositiveIntegerField(default=0)
    exit_code = models.IntegerField(null=True, blank=True)
    exit_signal = models.IntegerField(null=True, blank=True)
    cause = models.CharField(max_length=32, blank=True, default="")
    evidence = models.CharField(max_length=500, blank=True, default="")
    error = models.CharField(max_length=500, blank=True, default="")
    progress = models.JSONField(default=dict, blank=True)
    last_log = models.JSONField(default=list, blank=True)
    last_operation_id = models.CharField(max_length=64, blank=True, default="")
    dispatched_at = models.DateTimeField(null=True, blank=True)
    reported_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Availability (apps/deployments/availability.py): judged from the first
    # time the worker was ready, so starting up is not downtime.
    first_ready_at = models.DateTimeField(null=True, blank=True)
    availability = models.FloatField(
        null=True, blank=True, help_text="Percent of the last hour ready (since first ready)."
    )
    availability_at = models.DateTimeField(null=True, blank=True)
    # The engine's API key (WORKER_SPEC.api_key): the gateway sends it, so a request
    # straight to the engine's port fails. Set when the row is created
    # (new_engine_secret); empty for workers from before, which run without one.
    # Never in an API answer, a page, a log or the audit (apps/audit/chain.py).
    engine_secret = models.CharField(max_length=64, blank=True, default="")

    policy_cluster_path = "deployment__cluster"

    class Meta:
        ordering = ["deployment_id", "slot", "id"]
        indexes = [models.Index(fields=["node", "desired_state"])]

    def __str__(self) -> str:
        return f"{self.deployment.name}#{self.slot} on {self.node}"

    @property
    def policy_cluster_id(self) -> int | None:
        return self.deployment.cluster_id


class WorkerStateChange(models.Model):
    """A worker's state from `at` on, as its agent reported it (availability's input)."""

    worker = models.ForeignKey(Worker, on_delete=models.CASCADE, related_name="state_changes")
    state = models.CharField(max_length=16, choices=WorkerState.choices)
    at = models.DateTimeField()

    class Meta:
        ordering = ["worker_id", "at", "id"]
        indexes = [models.Index(fields=["worker", "at"])]

    def __str__(self) -> str:
        return f"worker {self.worker_id} {self.state} at {self.at:%Y-%m-%d %H:%M:%S}"
