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
from django.db.models import Max
from django.utils import timezone

from apps.audit.chain import verify_events
from apps.audit.export import jsonl_line
from apps.audit.models import ArchiveSegment, AuditEvent, ChainHead

# Events per archive file and per transaction. Writers are never held up by the
# archive (see archive_next_chunk), so this only bounds memory and file size.
CHUNK_EVENTS = 5000


def archive_old_events(
    hot_days: int | None = None,
    directory: Path | None = None,
    chunk_size: int = CHUNK_EVENTS,
) -> list[ArchiveSegment]:
    """Archive every event up to the newest one older than the hot period, oldest
    first, one segment (file and row) per chunk. Returns the segments written."""
    hot_days = settings.AUDIT_HOT_DAYS if hot_days is None else hot_days
    directory = Path(directory or settings.AUDIT_ARCHIVE_DIR)
    cutoff = timezone.now() - timedelta(days=hot_days)
    through_seq = AuditEvent.objects.filter(time__lt=cutoff).aggregate(Max("seq"))["seq__max"]
    segments: list[ArchiveSegment] = []
    while through_seq is not None:
        segment = archive_next_chunk(through_seq, directory, chunk_size)
        if segment is None:
            break
        segments.append(segment)
    return segments


def archived_through_seq() -> int:
    return (
        ChainHead.objects.filter(id=1).values_list("archived_through_seq", flat=True).first() or 0
    )


def archive_next_chunk(
    through_seq: int, directory: Path, chunk_size: int = CHUNK_EVENTS
) -> ArchiveSegment | None:
    """Move the oldest hot events, at most `chunk_size` and none after `through_seq`,
    into one file, in one transaction. None when none are left.

    It locks the rows it moves, not the chain head: appending events locks the head
    (apps/audit/chain.py), and archiving a large backlog under that lock would hold
    up every audited write. The head row is updated last, so it is locked only for
    the moment before commit. Two archivers never write the same events: the second
    waits for the first's rows, finds the head moved on and starts again from it.
    """
    while True:
        with transaction.atomic():
            start = archived_through_seq()
            if start >= through_seq:
                return None
            events = list(
                AuditEvent.objects.select_for_update()
                .filter(seq__gt=start, seq__lte=through_seq)
                .order_by("seq")[:chunk_size]
            )
            if archived_through_seq() != start:
                continue  # another archiver moved these while we waited for them
            if not events:
                return None
            return _write_segment(events, directory)


def _write_segment(events: list[AuditEvent], directory: Path) -> ArchiveSegment:
    first, last = events[0], events[-1]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"audit-{first.seq:012d}-{last.seq:012d}.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for event in events:
            handle.write(jsonl_line(event))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    segment = ArchiveSegment.objects.create(
        path=str(path),
        first_seq=first.seq,
        last_seq=last.seq,
        first_prev_hash=first.prev_hash,
        last_hash=last.hash,
        sha256=digest,
    )
    # The one deletion of audit rows Hangar performs, deliberately around the ORM.
    with connection.cursor() as cursor:
        table = connection.ops.quote_name(AuditEvent._meta.db_table)
        cursor.execute(
            f"DELETE FROM {table} WHERE seq >= %s AND seq <= %s",  # noqa: S608
            [first.seq, last.seq],
        )
    ChainHead.objects.filter(id=1).update(
        archived_through_seq=last.seq, archived_through_hash=last.hash
    )
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


def relocate_archives(directory: Path | None = None) -> int:
    """Point every segment at its file in `directory` (after a restore onto another
    data directory); the files' checksums still vouch for them. Returns how many moved."""
    directory = Path(directory or settings.AUDIT_ARCHIVE_DIR)
    moved = 0
    for segment in ArchiveSegment.objects.all():
        path = str(directory / Path(segment.path).name)
        if path != segment.path:
            ArchiveSegment.objects.filter(pk=segment.pk).update(path=path)
            moved += 1
    return moved


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
