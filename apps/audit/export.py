"""Stream audit events as JSON Lines or CSV without loading them all.

The streams are async generators: under ASGI, Django serves a sync iterator by
first reading it whole into a list (its only way to keep the event loop free),
which for the full log is every event in the web process's memory at once.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Callable

from asgiref.sync import sync_to_async
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


def jsonl_line(event) -> str:
    return json.dumps(event_dict(event), sort_keys=True, default=str) + "\n"


def jsonl_text(events: list[AuditEvent]) -> str:
    return "".join(jsonl_line(event) for event in events)


def csv_text(events: list[AuditEvent], header: bool = False) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if header:
        writer.writerow(FIELDS)
    for event in events:
        row = event_dict(event)
        row["changes"] = json.dumps(row["changes"], sort_keys=True, default=str)
        # Cells starting with = + - @ are formulas to spreadsheet programs.
        writer.writerow(
            ["'" + str(v) if str(v)[:1] in "=+-@" else v for v in (row[f] for f in FIELDS)]
        )
    return buffer.getvalue()


def _render_chunk(
    events: QuerySet, after: int, render: Callable[[list[AuditEvent]], str]
) -> tuple[str, int | None]:
    """The text of the next CHUNK_EVENTS events after seq `after`, and the seq to go on
    from (None when these were the last)."""
    chunk = list(events.filter(seq__gt=after).order_by("seq")[:CHUNK_EVENTS])
    more = len(chunk) == CHUNK_EVENTS
    return render(chunk), (chunk[-1].seq if more else None)


async def rendered_chunks(
    events: QuerySet, render: Callable[[list[AuditEvent]], str]
) -> AsyncIterator[str]:
    """The events oldest first, as text, one chunk at a time. Each chunk is one short
    query starting after the last seq seen (no cursor stays open while the client
    reads), and it is queried and formatted in Django's sync thread, so the event
    loop, which serves every socket of the process, never waits on either."""
    after: int | None = 0  # seq starts at 1
    while after is not None:
        text, after = await sync_to_async(_render_chunk)(events, after, render)
        if text:
            yield text


async def jsonl_stream(events: QuerySet) -> AsyncIterator[str]:
    async for text in rendered_chunks(events, jsonl_text):
        yield text


async def csv_stream(events: QuerySet) -> AsyncIterator[str]:
    yield csv_text([], header=True)
    async for text in rendered_chunks(events, csv_text):
        yield text
