from celery import shared_task

from apps.registry.services import hash_version, resume_checksums


@shared_task(name="registry.hash_version")
def hash_version_task(version_id: int) -> str:
    return hash_version(version_id).state


@shared_task(name="registry.resume_checksums")
def resume_checksums_task() -> list[int]:
    return resume_checksums()
