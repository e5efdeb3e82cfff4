"""Did a scheduled job run twice? Read from the beats' own logs.

Celery's scheduler logs "Scheduler: Sending due task <entry> (<task>)" for each
send, and console.beat.LeaderScheduler sends only while it leads, so the sends
of all beats together show whether two led at once: two sends of one entry by
different beats closer than half its interval are the same run, made twice.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings

SEND = re.compile(
    rb"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/MainProcess\] "
    rb"Scheduler: Sending due task (\S+) ",
    re.MULTILINE,
)


def sends(log: Path) -> list[tuple[float, str]]:
    found = []
    for stamp, entry in SEND.findall(log.read_bytes()):
        at = datetime.strptime(stamp.decode(), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        found.append((at, entry.decode()))
    return found


def interval_s(schedule) -> float:
    return schedule.total_seconds() if isinstance(schedule, timedelta) else float(schedule)


def double_runs(logs: list[Path]) -> dict:
    """{"sends": n, "sends_by_beat": [...], "ran_twice": n, "entries_twice": {...}}."""
    every = {
        name: interval_s(entry["schedule"]) for name, entry in settings.CELERY_BEAT_SCHEDULE.items()
    }
    events = sorted((at, entry, who) for who, log in enumerate(logs) for at, entry in sends(log))
    twice: Counter = Counter()
    last: dict[str, tuple[float, int]] = {}
    for at, entry, who in events:
        previous = last.get(entry)
        if previous and previous[1] != who and at - previous[0] < every.get(entry, 0) / 2:
            twice[entry] += 1
        last[entry] = (at, who)
    return {
        "sends": len(events),
        "sends_by_beat": [sum(1 for e in events if e[2] == who) for who in range(len(logs))],
        "ran_twice": sum(twice.values()),
        "entries_twice": dict(twice),
    }
