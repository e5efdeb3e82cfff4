"""Registering model versions and computing their checksums."""

from __future__ import annotations

import time

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from agents.workers.verify import sha256_file
from apps.audit import recorder
from apps.core.i18n import in_english, lazy_message
from apps.registry.models import ModelVersion, VersionState
from apps.registry.paths import PathRefused, check_model_path, list_files

PROGRESS_EVERY_SECONDS = 0.5


class VersionInUse(Exception):
    """A deployment still uses the version (or it is not ready, so nothing to retire)."""


def register_version(serializer) -> ModelVersion:
    """Save a validated new version as draft and checksum it on the console's worker
    (the request's audit event records it from the serializer: recorder.watch_form)."""
    from apps.registry.tasks import hash_version_task

    version = serializer.save()
    transaction.on_commit(lambda: hash_version_task.delay(version.pk))
    return version


def hash_version(version_id: int) -> ModelVersion:
    """Checksum every file of a draft version, then make it ready (and immutable)."""
    version = ModelVersion.objects.get(pk=version_id)
    if version.state != VersionState.DRAFT:
        return version
    try:
        directory = check_model_path(version.path)
        files = list_files(directory)
    except (PathRefused, OSError) as exc:
        ModelVersion.objects.filter(pk=version.pk).update(error=in_english(exc)[:500])
        raise
    total = sum(f.stat().st_size for f in files)
    done = 0
    last_report = 0.0

    def progress(count: int) -> None:
        nonlocal done, last_report
        done += count
        if time.monotonic() - last_report >= PROGRESS_EVERY_SECONDS:
            last_report = time.monotonic()
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
