from celery import shared_task

from apps.core import outbox


@shared_task(name="core.drain_outbox")
def drain_outbox() -> int:
    """Every 10 s (beat): write what a process kept while the database was away
    and did not live to write itself (apps/core/outbox.py)."""
    return outbox.drain()
