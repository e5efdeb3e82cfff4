"""Stream audit events as JSON Lines or CSV without loading them all.

The streams are async generators: under ASGI, Django serves a sync iterator by
first reading it whole into a list (its only way to keep the event loop free),
which for the full log is every event in the web process's memory at once.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator

from django.db.models import QuerySet

from apps.audit.models import AuditEvent

# Events per query, and per piece of the response sent to the client.
CHUNK_EVENTS = 2000

FIELDS = [
    "seq",
    "time",
    "actor_type",
    "actor_id",
    "actor_name",
    "source_address",
    "request_id",
    "action",
    "target_type",
    "target_id",
    "target_repr",
    "changes",
    "outcome",
    "prev_hash",
    "hash",
]


def event_dict(event) -> dict:
    data = {name: getattr(event, name) for name in FIELDS}
    data["time"] = event.time.isoformat()
    return data


async def events_in_chunks(events: QuerySet) -> AsyncIterator[list[AuditEvent]]:
    """The events, oldest first, CHUNK_EVENTS a query, each starting after the last seq
    seen: no cursor stays open between chunks, and each query is a short index range."""
    chunk_size = CHUNK_EVENTS
    events = events.order_by("seq")
    after = None
    while True:
        page = events if after is None else events.filter(seq__gt=after)
        chunk = [event async for event in page[:chunk_size]]
        if chunk:
            yield chunk
        if len(chunk) < chunk_size:
            return
        after = chunk[-1].seq


def jsonl_line(event) -> str:
    return json.dumps(event_dict(event), sort_keys=True, default=str) + "\n"


async def jsonl_stream(events: QuerySet) -> AsyncIterator[str]:
    async for chunk in events_in_chunks(events):
        yield "".join(jsonl_line(event) for event in chunk)


async def csv_stream(events: QuerySet) -> AsyncIterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(FIELDS)
    async for chunk in events_in_chunks(events):
        for event in chunk:
            row = event_dict(event)
            row["changes"] = json.dumps(row["changes"], sort_keys=True, default=str)
            # Cells starting with = + - @ are formulas to spreadsheet programs.
            writer.writerow(
                ["'" + str(v) if str(v)[:1] in "=+-@" else v for v in (row[f] for f in FIELDS)]
            )
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():  # the header of an empty export
        yield buffer.getvalue()
