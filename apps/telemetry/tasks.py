from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from apps.telemetry.models import NodeMetricMinute


@shared_task(name="telemetry.prune_history")
def prune_history() -> int:
    """Drop rollups older than HANGAR_TELEMETRY_DAYS."""
    cutoff = timezone.now() - timedelta(days=settings.TELEMETRY_DAYS)
    deleted, _ = NodeMetricMinute.objects.filter(minute__lt=cutoff).delete()
    return deleted
