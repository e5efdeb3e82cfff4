"""Move old audit events out of the hot table into compressed JSON Lines files.

Each file keeps every field and hash, so `audit verify --archives` can prove the
files and the remaining table still form one unbroken chain.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from apps.audit.chain import verify_events
from apps.audit.export import event_dict
from apps.audit.models import ArchiveSegment, AuditEvent, ChainHead


def archive_old_events(
    hot_days: int | None = None, directory: Path | None = None
) -> ArchiveSegment | None:
    hot_days = settings.AUDIT_HOT_DAYS if hot_days is None else hot_days
    directory = Path(directory or settings.AUDIT_ARCHIVE_DIR)
    cutoff = timezone.now() - timedelta(days=hot_days)
    with transaction.atomic():
        head, _ = ChainHead.objects.select_for_update().get_or_create(id=1)
        old = AuditEvent.objects.filter(time__lt=cutoff).order_by("seq")
        last = old.values_list("seq", flat=True).last()
        if last is None:
            return None
        events = list(AuditEvent.objects.filter(seq__lte=last).order_by("seq"))
        first = events[0]
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"audit-{first.seq:012d}-{last:012d}.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            for event in events:
                handle.write(json.dumps(event_dict(event), sort_keys=True, default=str) + "\n")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        segment = ArchiveSegment.objects.create(
            path=str(path),
            first_seq=first.seq,
            last_seq=last,
            first_prev_hash=first.prev_hash,
            last_hash=events[-1].hash,
            sha256=digest,
        )
        head.archived_through_seq = last
        head.archived_through_hash = events[-1].hash
        head.save(update_fields=["archived_through_seq", "archived_through_hash"])
        # The one deletion of audit rows Hangar performs, deliberately around the ORM.
        with connection.cursor() as cursor:
            table = connection.ops.quote_name(AuditEvent._meta.db_table)
            cursor.execute(f"DELETE FROM {table} WHERE seq <= %s", [last])  # noqa: S608
    return segment


def read_archive(path: Path):
    from django.utils.dateparse import parse_datetime

    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            data = json.loads(line)
            data["time"] = parse_datetime(data["time"])
            yield data


def verify_archive(
    path: Path, expected_prev: str | None = None, expected_seq: int | None = None
) -> tuple[int, str | None, str]:
    """Verify one archive file on its own (or linked to what precedes it)."""
    events = read_archive(path)
    first = next(events, None)
    if first is None:
        return 0, f"{path} is empty", expected_prev or ""
    prev = first["prev_hash"] if expected_prev is None else expected_prev
    seq = first["seq"] if expected_seq is None else expected_seq

    def chained():
        yield first
        yield from events

    return verify_events(chained(), prev, seq)


def verify_archives() -> tuple[int, str | None]:
    """Verify every recorded segment, in order, and its link to the hot table."""
    prev, seq, total = "0" * 64, 1, 0
    for segment in ArchiveSegment.objects.order_by("first_seq"):
        path = Path(segment.path)
        if not path.exists():
            return total, f"archive {path} is missing"
        if hashlib.sha256(path.read_bytes()).hexdigest() != segment.sha256:
            return total, f"archive {path} was modified (its SHA-256 changed)"
        count, problem, prev = verify_archive(path, prev, seq)
        total += count
        if problem:
            return total, f"{path}: {problem}"
        seq = segment.last_seq + 1
    head, _ = ChainHead.objects.get_or_create(id=1)
    if total and (head.archived_through_hash != prev or head.archived_through_seq != seq - 1):
        return total, "the archives do not link to the start of the audit table"
    return total, None
