from celery import shared_task

from apps.audit.archive import archive_old_events
from apps.audit.forwarding import forward_events


@shared_task(name="audit.archive_old_events")
def archive_old_events_task() -> int:
    return sum(s.last_seq - s.first_seq + 1 for s in archive_old_events())


@shared_task(name="audit.forward_events", ignore_result=True)
def forward_events_task() -> int:
    """Forward until caught up (a commit asks; beat asks again while a receiver is down)."""
    total = 0
    while sent := forward_events():
        total += sent
    return total
