"""The audit log API: auditors and admins only; filters; JSON Lines and CSV exports."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.audit import recorder
from apps.audit.chain import append_event
from apps.audit.export import FIELDS
from tests.support.responses import body_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def log(db):
    now = timezone.now()
    old = append_event(
        action="inventory.change", outcome="allowed", actor_type="user", actor_id="7",
        actor_name="ann", time=now - timedelta(days=3), changes={"name": ["a", "b"]},
    )  # fmt: skip
    middle = append_event(
        action="accounts.manage", outcome="denied", actor_type="user", actor_id="8",
        actor_name="bob", time=now - timedelta(days=2), changes={},
    )  # fmt: skip
    new = recorder.record("inventory.change", actor_name="=cmd|' /C calc'!A0")
    return {"old": old, "middle": middle, "new": new, "now": now}


@pytest.mark.parametrize("role", ["auditor", "admin"])
def test_auditors_and_admins_read_the_log(role, make_user, client_for, log):
    api = client_for(make_user("reader", role))

    listed = api.get("/api/v1/audit-events/").json()

    assert [e["seq"] for e in listed["results"]] == [3, 2, 1]
    assert api.get(f"/api/v1/audit-events/{log['old'].seq}/").json()["hash"] == log["old"].hash


@pytest.mark.parametrize("role", ["viewer", "operator", "model-manager"])
def test_other_roles_cannot_read_or_export_the_log(role, make_user, client_for, log):
    api = client_for(make_user("reader", role))

    assert api.get("/api/v1/audit-events/").status_code == 403
    assert api.get("/api/v1/audit-events/export/?as=csv").status_code == 403
    assert api.get("/api/v1/audit-events/export/?as=jsonl").status_code == 403


def test_a_cluster_scoped_auditor_binding_grants_nothing_on_the_log(
    make_user, client_for, cluster, log
):
    api = client_for(make_user("reader", ("auditor", cluster)))

    assert api.get("/api/v1/audit-events/").status_code == 403


@pytest.fixture
def auditor_api(make_user, client_for):
    return client_for(make_user("reader", "auditor"))


def _seqs(api, query: str) -> list[int]:
    response = api.get(f"/api/v1/audit-events/?{query}")
    assert response.status_code == 200, response.content
    return [e["seq"] for e in response.json()["results"]]


def test_filters_by_actor_action_outcome_and_time(auditor_api, log):
    since = (log["now"] - timedelta(days=2, hours=12)).isoformat()
    until = (log["now"] - timedelta(days=1)).isoformat()

    assert _seqs(auditor_api, "actor=ann") == [1]
    assert _seqs(auditor_api, "action=inventory.change") == [3, 1]
    assert _seqs(auditor_api, "action_prefix=accounts.") == [2]
    assert _seqs(auditor_api, "outcome=denied") == [2]
    assert _seqs(auditor_api, "actor_type=system") == [3]
    assert _seqs(auditor_api, f"since={since.replace('+', '%2B')}") == [3, 2]
    assert _seqs(auditor_api, f"until={until.replace('+', '%2B')}") == [2, 1]
    assert _seqs(
        auditor_api, f"since={since.replace('+', '%2B')}&until={until.replace('+', '%2B')}"
    ) == [2]


def test_a_malformed_time_filter_is_a_clear_400(auditor_api, log):
    response = auditor_api.get("/api/v1/audit-events/?since=yesterday")

    assert response.status_code == 400
    assert "ISO 8601" in str(response.json())


def _body(response) -> str:
    assert response.is_async  # so under ASGI it is sent as it is read, never gathered
    return body_of(response).decode()


def test_export_as_json_lines_oldest_first_with_hashes(auditor_api, log):
    response = auditor_api.get("/api/v1/audit-events/export/?as=jsonl")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-ndjson"
    assert 'filename="hangar-audit.jsonl"' in response["Content-Disposition"]
    lines = [json.loads(line) for line in _body(response).splitlines()]
    assert [e["seq"] for e in lines] == [1, 2, 3]
    assert lines[0]["changes"] == {"name": ["a", "b"]}
    assert [e["prev_hash"] for e in lines[1:]] == [e["hash"] for e in lines[:-1]]


def test_export_as_csv_with_filters_and_formula_cells_neutralised(auditor_api, log):
    response = auditor_api.get("/api/v1/audit-events/export/?as=csv&action=inventory.change")

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv"
    rows = list(csv.DictReader(io.StringIO(_body(response))))
    assert [r["seq"] for r in rows] == ["1", "3"]
    assert json.loads(rows[0]["changes"]) == {"name": ["a", "b"]}
    assert rows[1]["actor_name"].startswith("'=")


def test_an_export_of_nothing_as_csv_is_its_header(auditor_api, log):
    response = auditor_api.get("/api/v1/audit-events/export/?as=csv&actor=nobody")

    assert _body(response).splitlines() == [",".join(FIELDS)]


def test_an_export_longer_than_a_chunk_has_every_event_once(auditor_api, log, monkeypatch):
    from apps.audit import export

    for n in range(6):
        recorder.record("test.more", changes={"n": n})
    monkeypatch.setattr(export, "CHUNK_EVENTS", 4)

    body = _body(auditor_api.get("/api/v1/audit-events/export/?as=jsonl"))

    assert [json.loads(line)["seq"] for line in body.splitlines()] == list(range(1, 10))


def test_export_filters_by_actor(auditor_api, log):
    response = auditor_api.get("/api/v1/audit-events/export/?as=jsonl&actor=bob")

    assert [json.loads(line)["seq"] for line in _body(response).splitlines()] == [2]


def test_an_unknown_export_format_is_refused(auditor_api, log):
    response = auditor_api.get("/api/v1/audit-events/export/?as=xml")

    assert response.status_code == 400
    assert "jsonl or csv" in str(response.json())


def test_reading_the_log_writes_no_event(auditor_api, log):
    auditor_api.get("/api/v1/audit-events/")
    auditor_api.get("/api/v1/audit-events/export/")

    assert _seqs(auditor_api, "") == [3, 2, 1]
