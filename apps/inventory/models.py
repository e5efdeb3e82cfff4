from __future__ import annotations

from django.db import models


class Cluster(models.Model):
    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True, default="")
    site = models.CharField(max_length=100, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    policy_cluster_path = "pk"

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def policy_cluster_id(self) -> int | None:
        return self.pk


class NodeState(models.TextChoices):
    PENDING = "pending"
    ONLINE = "online"
    DEGRADED = "degraded"
    OFFLINE = "offline"
    DRAINING = "draining"
    RETIRED = "retired"


class Node(models.Model):
    """A GPU host. The agent reports the facts; people edit name, labels, cluster."""

    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="nodes")
    name = models.CharField(
        max_length=100, blank=True, default="", help_text="Display name; the hostname when empty."
    )
    hostname = models.CharField(max_length=255)
    labels = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=16, choices=NodeState.choices, default=NodeState.PENDING)
    state_reason = models.CharField(max_length=255, blank=True, default="")
    addresses = models.JSONField(default=list, blank=True)
    # Where the agent's workers listen (its --worker-host), as it reports it.
    worker_host = models.CharField(max_length=253, blank=True, default="")
    os = models.CharField(max_length=200, blank=True, default="")
    kernel = models.CharField(max_length=200, blank=True, default="")
    driver_version = models.CharField(max_length=64, blank=True, default="")
    cuda_version = models.CharField(max_length=64, blank=True, default="")
    cpu_count = models.PositiveIntegerField(null=True, blank=True)
    memory_total = models.BigIntegerField(null=True, blank=True)
    agent_version = models.CharField(max_length=64, blank=True, default="")
    simulated = models.BooleanField(default=False)
    # Whose devices the agent reads: "nvidia" or "ascend" (agents/accelerators.py).
    accelerator = models.CharField(max_length=16, default="nvidia")
    last_seen = models.DateTimeField(null=True, blank=True)
    credential_hash = models.CharField(max_length=64, unique=True, null=True, blank=True)
    credential_revoked_at = models.DateTimeField(null=True, blank=True)
    enrolled_at = models.DateTimeField(auto_now_add=True)

    policy_cluster_path = "cluster"

    class Meta:
        ordering = ["cluster__name", "hostname"]

    def __str__(self) -> str:
        return self.name or self.hostname

    @property
    def policy_cluster_id(self) -> int | None:
        return self.cluster_id


class GPU(models.Model):
    class State(models.TextChoices):
        OK = "ok"
        FAULTED = "faulted"
        MISSING = "missing"

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="gpus")
    index = models.PositiveSmallIntegerField()
    uuid = models.CharField(max_length=100, blank=True, default="")
    name = models.CharField(max_length=200, blank=True, default="")
    memory_total = models.BigIntegerField(null=True, blank=True)
    pci_bus_id = models.CharField(max_length=64, blank=True, default="")
    power_limit = models.FloatField(null=True, blank=True)
    mig_mode = models.BooleanField(default=False)

    class Health(models.TextChoices):
        UNKNOWN = "unknown"  # no health read yet (or the agent reads none: simulated)
        HEALTHY = "healthy"
        DEGRADED = "degraded"
        UNHEALTHY = "unhealthy"

    state = models.CharField(max_length=16, choices=State.choices, default=State.OK)
    fault = models.CharField(max_length=255, blank=True, default="")
    # Judged from the agent's health reads by the health policy (apps/inventory/health.py).
    health = models.CharField(max_length=16, choices=Health.choices, default=Health.UNKNOWN)
    health_reasons = models.JSONField(default=list, blank=True)
    health_reading = models.JSONField(default=dict, blank=True)  # the last health read
    health_changed_at = models.DateTimeField(null=True, blank=True)
    # A cordoned GPU takes no new work: set by a person (maintenance) or by the
    # health policy on a critical Xid (drain -> reset -> return: a person returns it).
    cordoned = models.BooleanField(default=False)
    cordon_reason = models.CharField(max_length=255, blank=True, default="")
    cordoned_at = models.DateTimeField(null=True, blank=True)

    policy_cluster_path = "node__cluster"

    class Meta:
        ordering = ["node_id", "index"]
        constraints = [models.UniqueConstraint(fields=["node", "index"], name="gpu_node_index")]

    def __str__(self) -> str:
        return f"{self.node} GPU {self.index}"

    @property
    def policy_cluster_id(self) -> int | None:
        return self.node.cluster_id


class EnrollmentToken(models.Model):
    """A one-time, expiring token an agent exchanges for its node credential."""

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="enrollment_tokens")
    description = models.CharField(max_length=200, blank=True, default="")
    token_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=16)
    created_by = models.ForeignKey("auth.User", null=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    used_by_node = models.ForeignKey(Node, null=True, blank=True, on_delete=models.SET_NULL)

    policy_cluster_path = "cluster"

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"enrollment token {self.prefix} for {self.cluster}"

    @property
    def policy_cluster_id(self) -> int | None:
        return self.cluster_id


def _default_critical_xids() -> list[int]:
    return [48, 79]


class HealthPolicy(models.Model):
    """How GPU health reads become a GPU's health (docs/health.md). One row, pk 1.

    Global: a GPU's health means the same in every cluster. Admins change it
    (settings.manage); every change is audited.
    """

    # Xid codes that make a GPU unhealthy and cordon it until a person returns it.
    critical_xids = models.JSONField(default=_default_critical_xids)
    degrade_on_corrected_errors = models.BooleanField(default=True)
    degrade_on_link_width_below_max = models.BooleanField(default=True)
    # Off by default: an idle GPU trains its PCIe link down to save power.
    degrade_on_link_gen_below_max = models.BooleanField(default=False)
    degrade_on_hardware_slowdown = models.BooleanField(default=True)
    degrade_on_pcie_replays = models.BooleanField(default=True)
    degrade_on_nvlink_errors = models.BooleanField(default=True)
    stop_workers_when_unhealthy = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return "GPU health policy"


class PreflightRun(models.Model):
    """One preflight of a node (agents/preflight.py): its checks as the agent measured them.

    The latest run of a node blocks new work on it while it failed, until an
    admin overrides it (docs/health.md)."""

    class Status(models.TextChoices):
        PASS = "pass"
        WARN = "warn"
        FAIL = "fail"
        ERROR = "error"  # the agent did not answer: nothing was checked

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="preflight_runs")
    requested_by = models.ForeignKey(
        "auth.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=8, choices=Status.choices)
    results = models.JSONField(default=list, blank=True)
    error = models.CharField(max_length=500, blank=True, default="")
    overridden_at = models.DateTimeField(null=True, blank=True)
    overridden_by = models.ForeignKey(
        "auth.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    override_reason = models.CharField(max_length=255, blank=True, default="")

    policy_cluster_path = "node__cluster"

    class Meta:
        ordering = ["-started_at", "-pk"]

    def __str__(self) -> str:
        return f"preflight of {self.node} at {self.started_at:%Y-%m-%d %H:%M}"

    @property
    def policy_cluster_id(self) -> int | None:
        return self.node.cluster_id
