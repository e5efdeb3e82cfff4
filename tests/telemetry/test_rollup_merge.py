"""A minute's rollup is merged from every part of it, never replaced by the last part."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from django.db import connection, transaction

from apps.inventory.models import Node
from apps.telemetry.ingest import NodeIngest
from apps.telemetry.models import NodeMetricMinute
from tests.support.processes import wait_for
from tests.telemetry.conftest import FACTS, AgentSocket, gpu_sample, sample


def past_minute(minutes_ago: int = 5) -> int:
    return (int(time.time()) // 60 - minutes_ago) * 60


def row_of(node, minute: int) -> NodeMetricMinute | None:
    when = datetime.fromtimestamp(minute, tz=UTC)
    return NodeMetricMinute.objects.filter(node=node, minute=when).first()


def test_a_reconnect_mid_minute_keeps_the_whole_minutes_samples_and_extremes(daphne, enrolled):
    node, credential = enrolled
    minute = past_minute()
    first = AgentSocket(daphne.url, credential)
    first.send({"type": "hello", "protocol": 1, "agent_version": "1", "facts": FACTS})
    for seq, temp in ((1, 30), (2, 90), (3, 60)):
        first.send(
            {
                "type": "telemetry",
                "sample": sample(seq, [gpu_sample(0, temperature=temp)], ts=minute + seq),
            }
        )
    first.close()  # flushes the partial minute
    wait_for(lambda: row_of(node, minute) is not None, what="the partial minute flushed")

    second = AgentSocket(daphne.url, credential)
    for seq, temp in ((4, 50), (5, 40)):
        second.send(
            {
                "type": "telemetry",
                "sample": sample(seq, [gpu_sample(0, temperature=temp)], ts=minute + seq),
            }
        )
    second.close()
    wait_for(lambda: row_of(node, minute).samples != 3, what="the second part flushed")

    row = row_of(node, minute)
    assert row.samples == 5
    assert row.series["gpu.0.temperature"] == [30.0, 54.0, 90.0]


def test_one_socket_revisiting_a_minute_writes_both_visits(cluster):
    # A buffer replayed out of order goes minute 0, 1, 0: one write, two parts of minute 0.
    node = Node.objects.create(cluster=cluster, hostname="replay")
    ingest = NodeIngest(node)
    minute = past_minute()
    for seq, ts, temp in ((1, minute + 1, 40), (2, minute + 61, 45), (3, minute + 2, 80)):
        ingest.accept_sample(sample(seq, [gpu_sample(0, temperature=temp)], ts=ts))
    assert ingest.flush_rollups(include_current=True) == 2
    row = row_of(node, minute)
    assert row.samples == 2 and row.series["gpu.0.temperature"] == [40.0, 60.0, 80.0]


def test_a_series_present_in_part_of_a_minute_keeps_its_own_count(cluster):
    node = Node.objects.create(cluster=cluster, hostname="partial")
    minute = past_minute()
    both = NodeIngest(node)
    both.accept_sample(sample(1, [gpu_sample(0, temperature=10), gpu_sample(1)], ts=minute + 1))
    both.flush_rollups(include_current=True)
    one_gpu = NodeIngest(node)
    for seq in (2, 3, 4):
        one_gpu.accept_sample(sample(seq, [gpu_sample(0, temperature=50)], ts=minute + seq))
    one_gpu.flush_rollups(include_current=True)

    row = row_of(node, minute)
    assert row.samples == 4
    assert row.series["gpu.0.temperature"] == [10.0, 40.0, 50.0]
    assert row.series["gpu.1.temperature"] == [41.0, 41.0, 41.0, 1]  # 1 of the 4 samples


def test_two_sockets_flushing_the_same_minute_at_once_lose_neither_part(transactional_db, cluster):
    node = Node.objects.create(cluster=cluster, hostname="twice")
    minute = past_minute()
    seed = NodeIngest(node)
    seed.accept_sample(sample(1, [gpu_sample(0, temperature=20)], ts=minute + 1))
    seed.flush_rollups(include_current=True)
    writers = []
    for offset, temp in ((2, 10), (3, 99)):
        ingest = NodeIngest(node)
        ingest.accept_sample(sample(offset, [gpu_sample(0, temperature=temp)], ts=minute + offset))
        writers.append(ingest)

    def flush(ingest):
        try:
            ingest.flush_rollups(include_current=True)
        finally:
            connection.close()

    threads = [threading.Thread(target=flush, args=(w,)) for w in writers]
    with transaction.atomic():
        # Hold the row so both writers are in flight at once, then let them race.
        NodeMetricMinute.objects.select_for_update().get(pk=row_of(node, minute).pk)
        for thread in threads:
            thread.start()
        wait_for(lambda: waiting_on_locks() == 2, what="both writers waiting on the row")
    for thread in threads:
        thread.join()

    row = row_of(node, minute)
    assert row.samples == 3
    assert row.series["gpu.0.temperature"] == [10.0, 43.0, 99.0]


def waiting_on_locks() -> int:
    with connection.cursor() as cursor:
        # Activity is read once per transaction unless its snapshot is dropped.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


def test_a_sample_merged_by_the_agents_buffer_counts_as_the_sweeps_it_stands_for(cluster):
    node = Node.objects.create(cluster=cluster, hostname="merged")
    minute = past_minute()
    ingest = NodeIngest(node)
    merged = {**sample(4, [gpu_sample(0, temperature=60)], ts=minute + 4), "coalesced": 3}
    ingest.accept_sample(sample(1, [gpu_sample(0, temperature=20)], ts=minute + 1))
    ingest.accept_sample(merged)
    ingest.flush_rollups(include_current=True)
    row = row_of(node, minute)
    assert row.samples == 5 and ingest.lost == 0
    assert row.series["gpu.0.temperature"] == [20.0, 52.0, 60.0]  # weighed 1 and 4
