"""Retention: old events move to gzip JSON Lines files that `audit verify` still checks."""

from __future__ import annotations

import gzip
import json
import threading
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from apps.audit import recorder
from apps.audit.archive import archive_old_events, read_archive, verify_archives
from apps.audit.chain import append_event, verify_database
from apps.audit.export import event_dict
from apps.audit.models import ArchiveSegment, AuditEvent, ChainHead
from tests.support.processes import wait_for

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

    [segment] = archive_old_events()

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
    [first] = archive_old_events(hot_days=0)
    _old_and_new(old=0, new=2)
    [second] = archive_old_events(hot_days=0)

    assert (first.first_seq, first.last_seq, second.first_seq, second.last_seq) == (1, 2, 3, 4)
    assert second.first_prev_hash == first.last_hash
    assert not AuditEvent.objects.exists()
    assert "OK: 4 events" in _verify("--archives")


def test_nothing_to_archive_leaves_the_table_alone(archive_dir):
    _old_and_new(old=0, new=2)

    assert archive_old_events() == []
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
    [segment] = archive_old_events()

    _rewrite(segment.path, lambda events: events[1].update(actor_name="mallory"))

    with pytest.raises(CommandError, match=r"was modified \(its SHA-256 changed\)"):
        _verify("--archives")
    with pytest.raises(CommandError, match=r"event #2 was altered"):
        _verify("--archive", segment.path)


def test_dropping_an_event_from_an_archive_file_is_found_by_verify_archive(archive_dir):
    _old_and_new()
    [segment] = archive_old_events()

    _rewrite(segment.path, lambda events: events.pop(1))

    with pytest.raises(CommandError, match=r"event #2 is missing \(found #3 next\)"):
        _verify("--archive", segment.path)


def test_a_missing_archive_file_fails_verify(archive_dir):
    _old_and_new()
    [segment] = archive_old_events()

    archive_dir.joinpath(segment.path.rsplit("/", 1)[1]).unlink()

    with pytest.raises(CommandError, match=r"is missing"):
        _verify("--archives")


def test_an_intact_archive_verifies_on_its_own(archive_dir):
    _old_and_new()
    [segment] = archive_old_events()

    assert "OK: 3 events in" in _verify("--archive", segment.path)
    assert ArchiveSegment.objects.get().sha256 == segment.sha256


def _old_events(count: int) -> None:
    then = timezone.now() - timedelta(days=200)
    for n in range(count):
        append_event(action="test.old", outcome="allowed", actor_type="system",
                     time=then + timedelta(seconds=n), changes={"n": n})  # fmt: skip


def test_a_large_backlog_is_archived_in_chunks_that_form_one_chain(archive_dir):
    _old_events(1050)
    recorder.record("test.new")
    before = [event_dict(e) for e in AuditEvent.objects.filter(seq__lte=1050).order_by("seq")]

    segments = archive_old_events(chunk_size=100)

    assert [(s.first_seq, s.last_seq) for s in segments] == [
        (n * 100 + 1, min(n * 100 + 100, 1050)) for n in range(11)
    ]
    assert [s.first_prev_hash for s in segments[1:]] == [s.last_hash for s in segments[:-1]]
    archived = [e for s in segments for e in read_archive(s.path)]
    assert [{**e, "time": e["time"].isoformat()} for e in archived] == before
    assert list(AuditEvent.objects.values_list("seq", flat=True)) == [1051]
    assert verify_archives() == (1050, None)
    assert verify_database() == (1, None)
    assert "OK: 1051 events" in _verify("--archives")


@pytest.mark.django_db(transaction=True)
def test_audited_writes_go_on_while_an_archive_is_between_chunks(archive_dir):
    """The test holds event #101, the first of the second chunk: the archiver must stop
    there, after committing the first chunk. An audited write must then get through
    while the archive is still running (when the chain head was locked for the whole
    archive, it waited for the end, and the first chunk was not committed either)."""
    from django.db import connection, transaction

    _old_events(300)
    errors: list[BaseException] = []
    result: dict = {}

    def in_thread(name, work):
        def run():
            try:
                result[name] = work()
            except BaseException as exc:  # reported by the test below
                errors.append(exc)
            finally:
                connection.close()

        return threading.Thread(target=run, daemon=True)

    archiver = in_thread("segments", lambda: archive_old_events(chunk_size=100))
    writer = in_thread("written", lambda: recorder.record("test.during-archive"))
    with transaction.atomic():
        AuditEvent.objects.select_for_update().get(seq=101)
        archiver.start()
        wait_for(lambda: ArchiveSegment.objects.count() == 1, what="the first chunk archived")
        writer.start()
        writer.join(timeout=30)
        assert not writer.is_alive(), "the audited write waited for the archive"
        assert archiver.is_alive()  # held at event #101 by this test
    archiver.join(timeout=30)

    assert errors == []
    assert result["written"].seq == 301
    assert [(s.first_seq, s.last_seq) for s in result["segments"]] == [
        (1, 100),
        (101, 200),
        (201, 300),
    ]
    assert verify_archives() == (300, None)
    assert verify_database() == (1, None)
