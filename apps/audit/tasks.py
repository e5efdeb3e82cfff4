from celery import shared_task

from apps.audit.archive import archive_old_events


@shared_task(name="audit.archive_old_events")
def archive_old_events_task() -> int:
    segment = archive_old_events()
    return 0 if segment is None else segment.last_seq - segment.first_seq + 1
