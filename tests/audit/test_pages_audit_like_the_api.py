"""A page's write is on record exactly as the same write through the API is.

Both go through one mechanism (apps.audit.recorder.watch / watch_form, described
by the middleware), so the same edit by either road names the same kind of target
and the same changes."""

from __future__ import annotations

import pytest
from django.test import Client

from apps.alerts.models import AlertRule, Receiver
from apps.audit.models import AuditEvent
from tests.alerts.conftest import make_rule

pytestmark = pytest.mark.django_db

REQUEST_FIELDS = ("status", "path")


@pytest.fixture
def admin_page(admin_user) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


def last_event() -> AuditEvent:
    return AuditEvent.objects.order_by("-seq").first()


def what_changed(event: AuditEvent) -> dict:
    return {k: v for k, v in event.changes.items() if k not in REQUEST_FIELDS}


def rule_form(rule: AlertRule, **changes) -> dict:
    form = {
        "name": rule.name,
        "description": rule.description,
        "metric": rule.metric,
        "scope": rule.scope,
        "comparison": rule.comparison,
        "threshold": f"{rule.threshold:g}",
        "for_seconds": str(rule.for_seconds),
        "severity": rule.severity,
        "enabled": "on" if rule.enabled else "",
    }
    return {**form, **changes}


def test_a_rule_edited_on_its_page_records_the_changes_the_api_records(admin_page, admin_api):
    by_page, by_api = make_rule(name="by page"), make_rule(name="by API")

    page = admin_page.post(f"/alerts/rules/{by_page.pk}/", rule_form(by_page, threshold="90"))
    page_event = last_event()
    api = admin_api.patch(f"/api/v1/alert-rules/{by_api.pk}/", {"threshold": 90}, format="json")
    api_event = last_event()

    assert (page.status_code, api.status_code) == (302, 200)
    assert what_changed(page_event) == what_changed(api_event) == {"threshold": [85.0, 90.0]}
    assert (page_event.target_type, page_event.target_id) == ("alerts.alertrule", str(by_page.pk))
    assert (api_event.target_type, api_event.target_id) == ("alerts.alertrule", str(by_api.pk))


def test_a_receiver_edited_on_its_page_records_the_changes_the_api_records(admin_page, admin_api):
    old = "http://127.0.0.1:9/old"
    by_page = Receiver.objects.create(name="page", kind="webhook", url=old)
    by_api = Receiver.objects.create(name="api", kind="webhook", url=old)
    new = "http://127.0.0.1:9/new"

    page = admin_page.post(
        f"/alerts/receivers/{by_page.pk}/", {"name": "page", "kind": "webhook", "url": new}
    )
    page_event = last_event()
    api = admin_api.patch(
        f"/api/v1/receivers/{by_api.pk}/", {"url": new, "enabled": False}, format="json"
    )
    api_event = last_event()

    assert (page.status_code, api.status_code) == (302, 200)
    expected = {"url": [old, new], "enabled": [True, False]}
    assert what_changed(page_event) == what_changed(api_event) == expected
    assert page_event.target_type == api_event.target_type == "alerts.receiver"


def test_a_rule_deleted_on_its_page_records_what_the_api_records(admin_page, admin_api):
    by_page, by_api = make_rule(name="by page"), make_rule(name="by API")

    page = admin_page.post(f"/alerts/rules/{by_page.pk}/delete/")
    page_event = last_event()
    api = admin_api.delete(f"/api/v1/alert-rules/{by_api.pk}/")
    api_event = last_event()

    assert (page.status_code, api.status_code) == (302, 204)
    page_deleted, api_deleted = page_event.changes["deleted"], api_event.changes["deleted"]
    assert (page_deleted.pop("id"), api_deleted.pop("id")) == (by_page.pk, by_api.pk)
    assert (page_deleted.pop("name"), api_deleted.pop("name")) == ("by page", "by API")
    assert page_deleted == api_deleted
    assert (page_event.target_type, page_event.target_id) == ("alerts.alertrule", str(by_page.pk))
    assert (api_event.target_type, api_event.target_id) == ("alerts.alertrule", str(by_api.pk))


def test_a_receiver_created_on_its_page_records_what_the_api_records(admin_page, admin_api):
    body = {"kind": "webhook", "url": "http://127.0.0.1:9/hook"}

    page = admin_page.post("/alerts/receivers/new/", {**body, "name": "page", "enabled": "on"})
    page_event = last_event()
    api = admin_api.post("/api/v1/receivers/", {**body, "name": "api"}, format="json")
    api_event = last_event()

    assert (page.status_code, api.status_code) == (302, 201)
    page_created, api_created = page_event.changes["created"], api_event.changes["created"]
    for created in (page_created, api_created):
        del created["id"], created["name"]
    assert page_created == api_created
    assert page_event.target_type == api_event.target_type == "alerts.receiver"
