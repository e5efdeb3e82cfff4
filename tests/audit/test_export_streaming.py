"""The audit export streams through a real Daphne: 200,000 events leave the web process
in batches, so its memory stays flat however long the log is."""

from __future__ import annotations

import json
import urllib.request
from datetime import timedelta
from pathlib import Path

from django.db import connection
from django.utils import timezone

from apps.accounts.tokens import create_api_token
from apps.audit.chain import GENESIS, HASHED_FIELDS, event_hash, verify_events
from apps.audit.models import AuditEvent, ChainHead

EVENTS = 200_000


def chained_events(count: int):
    """`count` event rows hashed and linked exactly as chain.append_event does."""
    start = timezone.now() - timedelta(days=1)
    prev = GENESIS
    for seq in range(1, count + 1):
        fields = {
            "seq": seq,
            "time": start + timedelta(microseconds=seq * 250),
            "actor_type": "user",
            "actor_id": str(seq % 50),
            "actor_name": f"operator-{seq % 50}",
            "source_address": "10.1.2.3",
            "request_id": f"{seq:032x}",
            "action": "inventory.change",
            "target_type": "inventory.node",
            "target_id": str(seq % 500),
            "target_repr": f"gpu-node-{seq % 500:04d}.campus-a",
            "changes": {
                "labels": [{"rack": "r1"}, {"rack": f"r{seq % 9}"}],
                "status": 200,
                "path": f"/api/v1/nodes/{seq % 500}/",
            },
            "outcome": "allowed",
            "prev_hash": prev,
        }
        fields["hash"] = prev = event_hash(fields)
        yield fields


def insert_chained_events(count: int) -> str:
    """Write the chain with one COPY (appending 200,000 events one by one, or even with
    bulk_create, takes minutes on a small machine). Returns the last hash."""
    columns = [*HASHED_FIELDS, "hash"]
    table = connection.ops.quote_name(AuditEvent._meta.db_table)
    last = GENESIS
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
    ):
        for fields in chained_events(count):
            fields["changes"] = json.dumps(fields["changes"])
            copy.write_row([fields[name] for name in columns])
            last = fields["hash"]
    ChainHead.objects.update_or_create(id=1, defaults={"last_seq": count, "last_hash": last})
    return last


def resident_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


def test_exporting_200000_events_streams_them_all_in_bounded_memory(daphne, make_user, tmp_path):
    last_hash = insert_chained_events(EVENTS)
    _token, secret = create_api_token(make_user("audra", "auditor"), "export", days=1)
    headers = {"Authorization": f"Bearer {secret}"}
    export_url = f"{daphne.url}/api/v1/audit-events/export/?as=jsonl"
    # Warm the route up with an export of nothing, then measure from here: writing 5
    # to clear_refs resets the peak (VmHWM) to the current resident size.
    nothing = urllib.request.Request(f"{export_url}&actor=nobody", headers=headers)
    assert urllib.request.urlopen(nothing, timeout=60).read() == b""
    request = urllib.request.Request(export_url, headers=headers)
    before = resident_kib(daphne.pid, "VmRSS")
    Path(f"/proc/{daphne.pid}/clear_refs").write_text("5")

    exported = tmp_path / "audit.jsonl"
    with urllib.request.urlopen(request, timeout=120) as response, exported.open("wb") as out:
        assert response.status == 200
        while block := response.read(1 << 20):
            out.write(block)
    growth_kib = resident_kib(daphne.pid, "VmHWM") - before

    with exported.open() as lines:
        count, problem, last = verify_events((json.loads(line) for line in lines), GENESIS, 1)
    assert (count, problem, last) == (EVENTS, None, last_hash)
    # Holding the export at once costs at least its size (about 110 MB here); streaming
    # costs a batch of events and its text, a few MB.
    export_kib = exported.stat().st_size // 1024
    assert growth_kib < export_kib / 5, (growth_kib, export_kib)
