"""Stream audit events as JSON Lines or CSV without loading them all."""

from __future__ import annotations

import csv
import io
import json

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


def jsonl_lines(events):
    for event in events:
        yield json.dumps(event_dict(event), sort_keys=True, default=str) + "\n"


def csv_lines(events):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(FIELDS)
    for event in events:
        row = event_dict(event)
        row["changes"] = json.dumps(row["changes"], sort_keys=True, default=str)
        # Cells starting with = + - @ are formulas to spreadsheet programs.
        writer.writerow(
            ["'" + str(v) if str(v)[:1] in "=+-@" else v for v in (row[f] for f in FIELDS)]
        )
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
