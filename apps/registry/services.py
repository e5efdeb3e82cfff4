"""Registering model versions and computing their checksums."""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import timedelta

import redis
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from agents.workers.verify import sha256_file
from apps.audit import recorder
from apps.core.i18n import in_english, lazy_message
from apps.core.lease import RedisLease
from apps.registry.models import ModelVersion, VersionState
from apps.registry.paths import PathRefused, check_model_path, list_files

PROGRESS_EVERY_SECONDS = 0.5
log = logging.getLogger(__name__)

# A checksum under way holds a lease in Redis that it renews as it reads. A worker
# killed mid-checksum stops renewing it, and beat's registry.resume_checksums
# queues the draft again within a minute, rather than kombu giving the unacked
# task back after its visibility timeout (an hour). A second copy of the task
# (that one, or kombu's later) finds the lease held, or the version ready.
LEASE_SECONDS = 30
RESUME_AFTER = timedelta(seconds=60)  # a new draft's own task has had its chance
REQUEUED_SECONDS = 300  # one resume per draft in that long, however busy the queue


class VersionInUse(Exception):
    """A deployment still uses the version (or it is not ready, so nothing to retire)."""


def register_version(serializer) -> ModelVersion:
    """Save a validated new version as draft and checksum it on the console's worker
    (the request's audit event records it from the serializer: recorder.watch_form)."""
    from apps.registry.tasks import hash_version_task

    version = serializer.save()
    transaction.on_commit(lambda: hash_version_task.delay(version.pk))
    return version


def _redis() -> redis.Redis:
    return settings.REDIS.client(socket_timeout=2, socket_connect_timeout=2)


def checksum_key(version_id: int) -> str:
    return f"hangar:registry:checksum:{version_id}"


def _take(lease: RedisLease) -> bool:
    """False if another worker holds it. Redis away: go ahead (a checksum twice is
    wasted reading, never a wrong result)."""
    try:
        return lease.take_or_renew()
    except redis.RedisError as exc:
        log.warning("checksum lease %s not taken (%s); hashing anyway", lease.key, exc)
        return True


def hash_version(version_id: int) -> ModelVersion:
    """Checksum every file of a draft version, then make it ready (and immutable)."""
    version = ModelVersion.objects.get(pk=version_id)
    if version.state != VersionState.DRAFT:
        return version
    lease = RedisLease(_redis(), LEASE_SECONDS, checksum_key(version.pk))
    if not _take(lease):
        log.info("model version %s: another worker is checksumming it", version.pk)
        return version
    try:
        return _checksum(version, lease)
    except (PathRefused, OSError) as exc:  # a path refused, a file gone mid-way: people look
        ModelVersion.objects.filter(pk=version.pk).update(error=in_english(exc)[:500])
        raise
    finally:
        lease.release()


def _checksum(version: ModelVersion, lease: RedisLease) -> ModelVersion:
    directory = check_model_path(version.path)
    files = list_files(directory)
    total = sum(f.stat().st_size for f in files)
    done = 0
    last_report = 0.0

    def progress(count: int) -> None:
        nonlocal done, last_report
        done += count
        if time.monotonic() - last_report >= PROGRESS_EVERY_SECONDS:
            last_report = time.monotonic()
            with contextlib.suppress(redis.RedisError):  # the next report tries again
                lease.take_or_renew()
            ModelVersion.objects.filter(pk=version.pk).update(
                progress={"done_bytes": done, "total_bytes": total}
            )

    entries = [
        {
            "path": str(f.relative_to(directory)),
            "size": f.stat().st_size,
            "sha256": sha256_file(f, progress),
        }
        for f in files
    ]
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if version.state != VersionState.DRAFT:  # a copy that outlived its lease
            return version
        version.files = entries
        version.size_bytes = total
        version.progress = {"done_bytes": total, "total_bytes": total}
        version.state = VersionState.READY
        version.ready_at = timezone.now()
        version.error = ""
        version.save()
    recorder.record(
        "registry.version-ready",
        target=version,
        changes={"files": len(entries), "size_bytes": total},
    )
    return version


def resume_checksums() -> list[int]:
    """Queue again each draft whose checksum no worker holds (beat, every 30 s):
    its worker was killed mid-read, or its task was lost. Drafts that failed with
    an error wait for people (the path is wrong, not the worker)."""
    from apps.registry.tasks import hash_version_task

    drafts = ModelVersion.objects.filter(
        state=VersionState.DRAFT, error="", created_at__lt=timezone.now() - RESUME_AFTER
    ).values_list("pk", flat=True)
    client = _redis()
    queued = []
    for pk in drafts:
        if client.exists(checksum_key(pk)):
            continue
        if client.set(f"hangar:registry:checksum-queued:{pk}", 1, nx=True, ex=REQUEUED_SECONDS):
            hash_version_task.delay(pk)
            queued.append(pk)
    if queued:
        log.warning("model versions %s: no worker held their checksums; queued again", queued)
    return queued


def retire_version(version: ModelVersion) -> None:
    """Retire a ready version that no deployment uses.

    Every deployment on the version counts, stopped ones too: deployments are
    never deleted (their version is PROTECTed), and starting a stopped one runs
    its version again without asking the registry. The deployments app's own
    relation (`version.deployments`) answers, so the registry imports nothing of it.
    """
    if version.state != VersionState.READY:
        raise VersionInUse(
            lazy_message(
                _("Only a ready version can be retired; %(version)s is %(state)s."),
                version=str(version),
                state=version.state,
            )
        )
    users = version.deployments.order_by("name")
    if users.exists():
        names = ", ".join(users.values_list("name", flat=True)[:5])
        raise VersionInUse(
            lazy_message(_("Deployments still use this version: %(names)s."), names=names)
        )
    version.state = VersionState.RETIRED
    version.save(update_fields=["state"])
    recorder.describe(target=version, changes={"state": ["ready", "retired"]})
