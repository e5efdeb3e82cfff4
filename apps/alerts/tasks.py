"""Celery tasks on the console queue: deliver notifications, sweep silences and offline rules."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from apps.alerts import services
from apps.alerts.models import Delivery
from apps.alerts.notify import DeliveryFailed, send

# Attempts per delivery; waits between them double from 1 s (1, 2, 4, 8, 16, 32, 64 s).
MAX_ATTEMPTS = 8
BACKOFF_FIRST_SECONDS = 1
BACKOFF_MAX_SECONDS = 300


def backoff(attempts: int) -> int:
    return min(BACKOFF_FIRST_SECONDS * 2 ** (attempts - 1), BACKOFF_MAX_SECONDS)


@shared_task(bind=True, name="alerts.deliver", max_retries=None)
def deliver(self, delivery_id: int) -> str:
    """Send one delivery; on failure record the error and retry with exponential backoff."""
    delivery = Delivery.objects.select_related("receiver").filter(pk=delivery_id).first()
    if delivery is None or delivery.state in (Delivery.State.SENT, Delivery.State.FAILED):
        return "gone" if delivery is None else delivery.state
    delivery.attempts += 1
    try:
        send(delivery)
    except DeliveryFailed as exc:
        delivery.last_error = str(exc)[:2000]
        gave_up = delivery.attempts >= MAX_ATTEMPTS
        delivery.state = Delivery.State.FAILED if gave_up else Delivery.State.RETRYING
        delivery.save(update_fields=["attempts", "last_error", "state"])
        if gave_up:
            return delivery.state
        raise self.retry(countdown=backoff(delivery.attempts)) from exc
    delivery.state, delivery.sent_at = Delivery.State.SENT, timezone.now()
    delivery.save(update_fields=["attempts", "state", "sent_at"])
    return delivery.state


@shared_task(name="alerts.sweep")
def sweep() -> dict[str, int]:
    return services.sweep()
