"""GPU health: the policy that judges the agent's health reads, and cordons.

The agent sends a health read per GPU every ten seconds (agents/health.py,
docs/health.md). `judge` is pure: a read, the GPU's previous read and the
policy give a health (healthy / degraded / unhealthy) and the reasons, each a
small dict a page or an alert can show. `apply_health` stores the verdict,
audits every change of health with its evidence, cordons a GPU on a critical
Xid, and tells the apps above (signals.gpu_health_changed) so deployments can
move that GPU's workers when the policy says so.
"""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from apps.audit import recorder
from apps.inventory import signals
from apps.inventory.models import GPU, HealthPolicy

# A rising counter keeps a GPU degraded this long after its last rise: a read
# every 10 s would otherwise show "degraded" for one read and then forget it.
RISE_HOLD_S = 3600
HARDWARE_SLOWDOWN = frozenset({"hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"})
RISING = {
    # check: (policy switch, counters summed from the read)
    "corrected_errors_rising": ("degrade_on_corrected_errors", ("ecc_volatile_corrected",)),
    "pcie_replays_rising": ("degrade_on_pcie_replays", ("pcie_replay_counter",)),
    "nvlink_errors_rising": ("degrade_on_nvlink_errors", ("nvlink",)),
}
# What each check means, for pages and the API (the stored reasons carry the key).
CHECK_LABELS = {
    "critical_xid": _("critical Xid event"),
    "uncorrected_ecc": _("uncorrectable ECC errors since the driver loaded"),
    "remapped_row_failure": _("a row remapping failed"),
    "remap_pending": _("a row remap is pending: the GPU needs a reset"),
    "retired_page_pending": _("a page retirement is pending: the GPU needs a reset"),
    "corrected_errors_rising": _("correctable ECC errors are rising"),
    "pcie_replays_rising": _("PCIe replays are rising"),
    "nvlink_errors_rising": _("NVLink errors are rising"),
    "link_width_below_max": _("PCIe link narrower than its maximum"),
    "link_gen_below_max": _("PCIe link slower than its maximum generation"),
    "hardware_slowdown": _("clocks held down by a hardware slowdown"),
}


def current_policy() -> HealthPolicy:
    policy, _created = HealthPolicy.objects.get_or_create(pk=1)
    return policy


def _total(read: dict, fields: tuple[str, ...]) -> int | None:
    """The sum of a read's counters; None when none of them is supported."""
    values: list[int] = []
    for name in fields:
        if name == "nvlink":
            for link in read.get("nvlink") or ():
                values += [v for k, v in link.items() if k not in ("link", "active") and v]
                values += [0]
        elif read.get(name) is not None:
            values.append(read[name])
    return sum(values) if values else None


def judge(read: dict, previous: dict, policy: HealthPolicy, now: float) -> tuple[str, list, dict]:
    """(health, reasons, memory) for one GPU's health read.

    `previous` is what the last call returned as memory: the counters it saw and,
    per rising check, until when it holds. Unsupported fields (None) judge nothing.
    """
    reasons: list[dict] = []
    unhealthy: list[dict] = []
    critical = sorted(set(read.get("xids") or ()) & set(policy.critical_xids))
    if critical:
        unhealthy.append({"check": "critical_xid", "value": critical})
    if read.get("ecc_volatile_uncorrected"):
        unhealthy.append({"check": "uncorrected_ecc", "value": read["ecc_volatile_uncorrected"]})
    for field, check in (
        ("remapped_rows_failure", "remapped_row_failure"),
        ("remapped_rows_pending", "remap_pending"),
        ("retired_pages_pending", "retired_page_pending"),
    ):
        if read.get(field):
            unhealthy.append({"check": check, "value": True})
    memory: dict = {"counters": {}, "held": {}}
    for check, (switch, fields) in RISING.items():
        total = _total(read, fields)
        before = (previous.get("counters") or {}).get(check)
        held = (previous.get("held") or {}).get(check, 0)
        if total is not None:
            memory["counters"][check] = total
            # A counter that fell was reset (driver reload): a new baseline, no rise.
            if before is not None and total > before:
                held = now + RISE_HOLD_S
        if held > now:
            memory["held"][check] = held
            if getattr(policy, switch):
                reasons.append({"check": check, "value": total})
    width, width_max = read.get("pcie_link_width"), read.get("pcie_link_width_max")
    if policy.degrade_on_link_width_below_max and width and width_max and width < width_max:
        reasons.append({"check": "link_width_below_max", "value": f"x{width} of x{width_max}"})
    gen, gen_max = read.get("pcie_link_gen"), read.get("pcie_link_gen_max")
    if policy.degrade_on_link_gen_below_max and gen and gen_max and gen < gen_max:
        reasons.append({"check": "link_gen_below_max", "value": f"gen {gen} of {gen_max}"})
    slowdown = sorted(set(read.get("throttle_reasons") or ()) & HARDWARE_SLOWDOWN)
    if policy.degrade_on_hardware_slowdown and slowdown:
        reasons.append({"check": "hardware_slowdown", "value": slowdown})
    if unhealthy:
        return GPU.Health.UNHEALTHY, unhealthy + reasons, memory
    if reasons:
        return GPU.Health.DEGRADED, reasons, memory
    return GPU.Health.HEALTHY, [], memory


def describe_reasons(reasons: list[dict]) -> list[str]:
    """The reasons as a person reads them, in the request's language."""
    return [f"{CHECK_LABELS.get(r['check'], r['check'])}: {r['value']}" for r in reasons]


def apply_health(node, reads: list[dict]) -> list[GPU]:
    """Judge a node's health reads and store what changed; returns the GPUs whose
    health changed. Called by the telemetry ingest (a system actor)."""
    policy = current_policy()
    now = timezone.now()
    changed = []
    gpus = {g.index: g for g in GPU.objects.filter(node=node)}
    for read in reads:
        gpu = gpus.get(read["index"])
        if gpu is None:
            continue  # a GPU the facts have not named yet; the next read judges it
        previous = gpu.health_reading.get("memory") or {}
        health, reasons, memory = judge(read, previous, policy, now.timestamp())
        reading = {"read": read, "memory": memory}
        old = gpu.health
        if health == old and reasons == gpu.health_reasons and reading == gpu.health_reading:
            continue
        with transaction.atomic():
            fields = {"health_reading": reading, "health_reasons": reasons, "health": health}
            if health != old:
                fields["health_changed_at"] = now
            GPU.objects.filter(pk=gpu.pk).update(**fields)
            for name, value in fields.items():
                setattr(gpu, name, value)
            if health != old:
                recorder.record(
                    "inventory.gpu-health",
                    target=gpu,
                    changes={"health": [old, health], "reasons": reasons},
                )
                changed.append(gpu)
            critical = [r for r in reasons if r["check"] == "critical_xid"]
            if critical and not gpu.cordoned:
                cordon_gpu(gpu, f"Xid {critical[0]['value']} (health policy)", by_person=False)
        if health != old:
            signals.gpu_health_changed.send(
                sender=GPU, gpu=gpu, old_health=old, reasons=reasons, policy=policy
            )
    return changed


def cordon_gpu(gpu: GPU, reason: str, by_person: bool = True) -> None:
    """Take one GPU out of placement; its running workers stay (drain them by hand
    or by the policy). Cordoning again replaces the reason."""
    old = {"cordoned": gpu.cordoned, "reason": gpu.cordon_reason}
    gpu.cordoned, gpu.cordon_reason, gpu.cordoned_at = True, reason[:255], timezone.now()
    gpu.save(update_fields=["cordoned", "cordon_reason", "cordoned_at"])
    changes = {"cordoned": [old["cordoned"], True], "reason": [old["reason"], gpu.cordon_reason]}
    if by_person:
        recorder.describe(target=gpu, changes=changes)
    else:
        recorder.record("inventory.gpu-cordon", target=gpu, changes=changes)


def uncordon_gpu(gpu: GPU) -> None:
    """Return a GPU to placement (after maintenance, or after the reset a critical
    Xid asks for). Its health still counts: an unhealthy GPU stays out."""
    changes = {"cordoned": [gpu.cordoned, False], "reason": [gpu.cordon_reason, ""]}
    gpu.cordoned, gpu.cordon_reason, gpu.cordoned_at = False, "", None
    gpu.save(update_fields=["cordoned", "cordon_reason", "cordoned_at"])
    recorder.describe(target=gpu, changes=changes)


POLICY_FIELDS = (
    "critical_xids",
    "degrade_on_corrected_errors",
    "degrade_on_link_width_below_max",
    "degrade_on_link_gen_below_max",
    "degrade_on_hardware_slowdown",
    "degrade_on_pcie_replays",
    "degrade_on_nvlink_errors",
    "stop_workers_when_unhealthy",
)


def change_policy(changes: dict) -> HealthPolicy:
    """An admin's change of the health policy (validated upstream), audited."""
    policy = current_policy()
    diff = {}
    for name, value in changes.items():
        if getattr(policy, name) != value:
            diff[name] = [getattr(policy, name), value]
            setattr(policy, name, value)
    policy.save()
    recorder.describe(target=policy, changes=diff)
    return policy


def takes_work(gpu: GPU) -> bool:
    """May placement give this GPU new work? (apps/deployments/placement.py)"""
    return not gpu.cordoned and gpu.health != GPU.Health.UNHEALTHY
