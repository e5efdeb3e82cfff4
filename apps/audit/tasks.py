from celery import shared_task

from apps.audit.archive import archive_old_events


@shared_task(name="audit.archive_old_events")
def archive_old_events_task() -> int:
    return sum(s.last_seq - s.first_seq + 1 for s in archive_old_events())
