"""Retention: old events move to gzip JSON Lines files that `audit verify` still checks."""

from __future__ import annotations

import gzip
import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from apps.audit import recorder
from apps.audit.archive import archive_old_events, read_archive
from apps.audit.chain import append_event
from apps.audit.models import ArchiveSegment, AuditEvent, ChainHead

pytestmark = pytest.mark.django_db


@pytest.fixture
def archive_dir(tmp_path, settings):
    settings.AUDIT_ARCHIVE_DIR = tmp_path / "audit-archive"
    return settings.AUDIT_ARCHIVE_DIR


def _old_and_new(old: int = 3, new: int = 2) -> None:
    """`old` events from 200 days ago (beyond the default 180), then `new` from now."""
    then = timezone.now() - timedelta(days=200)
    for n in range(old):
        append_event(action="test.old", outcome="allowed", actor_type="system",
                     time=then + timedelta(minutes=n), changes={"n": n})  # fmt: skip
    for n in range(new):
        recorder.record("test.new", changes={"n": n})


def _verify(*args) -> str:
    out = StringIO()
    call_command("audit", "verify", *map(str, args), stdout=out)
    return out.getvalue()


def test_events_older_than_the_hot_period_move_to_a_gzip_json_lines_file(archive_dir, settings):
    assert settings.AUDIT_HOT_DAYS == 180
    _old_and_new()

    segment = archive_old_events()

    assert (segment.first_seq, segment.last_seq) == (1, 3)
    assert list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True)) == [4, 5]
    archived = list(read_archive(segment.path))
    assert [e["seq"] for e in archived] == [1, 2, 3]
    assert all(e["action"] == "test.old" and len(e["hash"]) == 64 for e in archived)
    with gzip.open(segment.path, "rt") as handle:
        assert json.loads(handle.readline())["changes"] == {"n": 0}
    head = ChainHead.objects.get()
    assert (head.archived_through_seq, head.archived_through_hash) == (3, archived[-1]["hash"])


def test_verify_checks_the_table_and_the_archives_as_one_chain(archive_dir):
    _old_and_new()
    archive_old_events()
    recorder.record("test.after-archive")

    assert "OK: 3 events in the audit log" in _verify()
    assert "OK: 6 events in the audit log" in _verify("--archives")


def test_archiving_twice_continues_the_chain(archive_dir):
    _old_and_new(old=2, new=0)
    first = archive_old_events(hot_days=0)
    _old_and_new(old=0, new=2)
    second = archive_old_events(hot_days=0)

    assert (first.first_seq, first.last_seq, second.first_seq, second.last_seq) == (1, 2, 3, 4)
    assert second.first_prev_hash == first.last_hash
    assert not AuditEvent.objects.exists()
    assert "OK: 4 events" in _verify("--archives")


def test_nothing_to_archive_leaves_the_table_alone(archive_dir):
    _old_and_new(old=0, new=2)

    assert archive_old_events() is None
    assert AuditEvent.objects.count() == 2
    out = StringIO()
    call_command("audit", "archive", stdout=out)
    assert "Nothing to archive." in out.getvalue()


def test_the_archive_command_and_the_beat_task(archive_dir, settings):
    from apps.audit.tasks import archive_old_events_task

    _old_and_new(old=2, new=1)
    out = StringIO()
    call_command("audit", "archive", "--days", "30", stdout=out)
    assert "Archived #1-#2" in out.getvalue()

    recorder.record("test.more")
    assert archive_old_events_task() == 0  # the rest is younger than 180 days
    assert any(
        entry["task"] == "audit.archive_old_events"
        for entry in settings.CELERY_BEAT_SCHEDULE.values()
    )


def _rewrite(path, change) -> None:
    with gzip.open(path, "rt") as handle:
        events = [json.loads(line) for line in handle]
    change(events)
    with gzip.open(path, "wt") as handle:
        handle.writelines(json.dumps(e, sort_keys=True) + "\n" for e in events)


def test_tampering_with_an_archive_file_fails_verify(archive_dir):
    _old_and_new()
    segment = archive_old_events()

    _rewrite(segment.path, lambda events: events[1].update(actor_name="mallory"))

    with pytest.raises(CommandError, match=r"was modified \(its SHA-256 changed\)"):
        _verify("--archives")
    with pytest.raises(CommandError, match=r"event #2 was altered"):
        _verify("--archive", segment.path)


def test_dropping_an_event_from_an_archive_file_is_found_by_verify_archive(archive_dir):
    _old_and_new()
    segment = archive_old_events()

    _rewrite(segment.path, lambda events: events.pop(1))

    with pytest.raises(CommandError, match=r"event #2 is missing \(found #3 next\)"):
        _verify("--archive", segment.path)


def test_a_missing_archive_file_fails_verify(archive_dir):
    _old_and_new()
    segment = archive_old_events()

    archive_dir.joinpath(segment.path.rsplit("/", 1)[1]).unlink()

    with pytest.raises(CommandError, match=r"is missing"):
        _verify("--archives")


def test_an_intact_archive_verifies_on_its_own(archive_dir):
    _old_and_new()
    segment = archive_old_events()

    assert "OK: 3 events in" in _verify("--archive", segment.path)
    assert ArchiveSegment.objects.get().sha256 == segment.sha256
