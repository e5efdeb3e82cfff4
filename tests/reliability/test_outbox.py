"""The outbox's own rules: bounded, drops counted and shown, order kept, a bad record skipped.

Real Redis and the real test database; the database-away cases themselves are
in test_database_away.py (a PostgreSQL server really stopped).
"""

from __future__ import annotations

import pytest

from apps.core import outbox
from apps.core.health import check_outbox
from apps.telemetry import exposition

written: list[int] = []


@outbox.kept("tests.note")
def note(n: int) -> None:
    if n < 0:
        raise ValueError("a record no database can take")
    written.append(n)


@pytest.fixture(autouse=True)
def _fresh():
    written.clear()
    yield
    outbox.client().delete(outbox.QUEUE, outbox.DROPPED, outbox.FAILED, outbox.LOCK)


def test_a_full_outbox_drops_the_write_and_counts_it_where_operators_look(settings):
    settings.OUTBOX_LIMIT = 2
    assert outbox.keep("tests.note", {"n": 1}) and outbox.keep("tests.note", {"n": 2})
    assert not outbox.keep("tests.note", {"n": 3})
    assert outbox.state() == {"waiting": 2, "dropped": {"tests.note": 1}, "failed": {}}
    assert check_outbox()["state"] == "waiting"
    out = exposition.Exposition()
    exposition.outbox_families(out, outbox.state())
    text = out.text()
    assert "hangar_outbox_waiting 2\n" in text
    assert 'hangar_outbox_dropped_total{kind="tests.note"} 1\n' in text


def test_kept_writes_are_written_oldest_first_and_a_failing_one_does_not_block_the_rest(
    transactional_db,
):
    for n in (1, 2, -1, 3):
        outbox.keep("tests.note", {"n": n})
    assert outbox.drain() == 4
    assert written == [1, 2, 3]
    assert outbox.state() == {"waiting": 0, "dropped": {}, "failed": {"tests.note": 1}}


def test_while_writes_wait_a_new_one_joins_them_instead_of_overtaking(transactional_db):
    outbox.keep("tests.note", {"n": 1})
    note(n=2)  # the database is up, but 1 waits: 2 must not be written first
    assert written == []
    outbox.drain()
    assert written == [1, 2]


def test_with_nothing_waiting_a_kept_write_goes_straight_to_the_database(transactional_db):
    note(n=7)
    assert written == [7] and outbox.state()["waiting"] == 0
