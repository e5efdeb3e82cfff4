"""What deployments does when inventory says something happened (apps/inventory/signals.py)."""

from __future__ import annotations

from django.dispatch import receiver

from apps.deployments.services import evacuate_gpu
from apps.inventory.models import GPU
from apps.inventory.signals import gpu_health_changed


@receiver(gpu_health_changed, dispatch_uid="deployments-gpu-health")
def move_workers_off_an_unhealthy_gpu(sender, gpu, old_health, reasons, policy, **kwargs) -> None:
    if gpu.health == GPU.Health.UNHEALTHY and policy.stop_workers_when_unhealthy:
        evacuate_gpu(gpu, reasons)
