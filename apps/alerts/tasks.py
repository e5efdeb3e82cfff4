"""Celery tasks on the console queue: deliver notifications, sweep silences and offline rules."""

from __future__ import annotations

import time

from celery import shared_task

from apps.alerts import services
from apps.alerts.models import Delivery
from apps.alerts.notify import DeliveryFailed, send
from apps.alerts.services import record_outcome
from apps.core import outbox

# Attempts per delivery; waits between them double from 1 s (1, 2, 4, 8, 16, 32, 64 s).
MAX_ATTEMPTS = 8
BACKOFF_FIRST_SECONDS = 1
BACKOFF_MAX_SECONDS = 300
DATABASE_RETRY_SECONDS = 5  # the database was away before anything was sent


def backoff(attempts: int) -> int:
    return min(BACKOFF_FIRST_SECONDS * 2 ** (attempts - 1), BACKOFF_MAX_SECONDS)


@shared_task(bind=True, name="alerts.deliver", max_retries=None)
def deliver(self, delivery_id: int) -> str:
    """Send one delivery; on failure record the error and retry with exponential backoff.

    With the database away nothing is lost: before sending, the task waits in the
    broker for another try; after sending, the outcome is kept for the database
    (apps/core/outbox.py), so a sent notification is not sent again."""
    try:
        delivery = Delivery.objects.select_related("receiver").filter(pk=delivery_id).first()
    except outbox.DATABASE_AWAY as exc:
        raise self.retry(countdown=DATABASE_RETRY_SECONDS) from exc
    if delivery is None or delivery.state in (Delivery.State.SENT, Delivery.State.FAILED):
        return "gone" if delivery is None else delivery.state
    attempts = delivery.attempts + 1
    try:
        send(delivery)
    except DeliveryFailed as exc:
        gave_up = attempts >= MAX_ATTEMPTS
        state = Delivery.State.FAILED if gave_up else Delivery.State.RETRYING
        record_outcome(
            delivery_id=delivery.pk, attempts=attempts, state=state, last_error=str(exc)[:2000]
        )
        if gave_up:
            return state
        raise self.retry(countdown=backoff(attempts)) from exc
    record_outcome(
        delivery_id=delivery.pk, attempts=attempts, state=Delivery.State.SENT, sent_at=time.time()
    )
    return Delivery.State.SENT


@shared_task(name="alerts.sweep")
def sweep() -> dict[str, int]:
    return services.sweep()
