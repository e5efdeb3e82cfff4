"""三员分立: with HANGAR_SEPARATION_OF_DUTIES=true the admin role is split in three,
no account holds two duties, and every administrator's work is on the audit record."""

from __future__ import annotations

import pytest

from apps.accounts.models import RoleBinding
from apps.accounts.policy import can, forget_rights
from apps.accounts.services import ensure_initial_admin
from apps.audit.models import AuditEvent
from tests.support.responses import body_of

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def separated(settings):
    settings.SEPARATION_OF_DUTIES = True


def test_binding_a_second_duty_is_refused_with_a_clear_400(make_user, client_for):
    security = make_user("sec", "security-admin")
    person = make_user("pat", "system-admin")
    api = client_for(security)

    refused = api.post("/api/v1/role-bindings/", {"role": "audit-admin", "user": person.pk})

    assert refused.status_code == 400
    assert "Separation of duties is on" in str(refused.json()), refused.json()
    assert list(RoleBinding.objects.filter(user=person).values_list("role", flat=True)) == [
        "system-admin"
    ]
    event = AuditEvent.objects.filter(action__startswith="accounts").last()
    assert (event.actor_name, event.outcome) == ("sec", "failed")


def test_a_duty_cannot_be_added_to_an_account_with_another_role(make_user, client_for):
    api = client_for(make_user("sec", "security-admin"))
    person = make_user("pat", "operator")

    refused = api.post("/api/v1/role-bindings/", {"role": "audit-admin", "user": person.pk})

    assert refused.status_code == 400


def test_the_admin_role_cannot_be_bound_and_grants_nothing(make_user, client_for):
    old_admin = make_user("old", "admin")
    api = client_for(make_user("sec", "security-admin"))

    refused = api.post("/api/v1/role-bindings/", {"role": "admin", "user": old_admin.pk})

    assert refused.status_code == 400
    assert not can(old_admin, "accounts.manage")
    assert not can(old_admin, "inventory.view")


def test_each_administrator_acts_only_through_their_own_functions(make_user):
    system = make_user("sys", "system-admin")
    security = make_user("sec", "security-admin")
    audit = make_user("aud", "audit-admin")

    assert can(system, "deployments.manage") and can(system, "settings.manage")
    assert not can(system, "accounts.manage") and not can(system, "audit.view")
    assert can(security, "accounts.manage") and can(security, "keys.manage")
    assert not can(security, "inventory.change") and not can(security, "audit.view")
    assert can(audit, "audit.view") and can(audit, "audit.export")
    assert not can(audit, "inventory.view") and not can(audit, "accounts.view")


def test_duties_meeting_through_directory_groups_grant_nothing(make_user):
    from apps.accounts.models import DirectoryMembership

    person = make_user("pat")
    DirectoryMembership.objects.create(user=person, group_dns=["cn=sys,dc=x", "cn=aud,dc=x"])
    RoleBinding.objects.create(role="system-admin", ldap_group="cn=sys,dc=x")
    RoleBinding.objects.create(role="audit-admin", ldap_group="cn=aud,dc=x")
    forget_rights(person)

    assert not can(person, "audit.view")
    assert not can(person, "deployments.manage")


def test_the_audit_administrator_sees_the_others_actions_and_their_own_reads(make_user, client_for):
    security = make_user("sec", "security-admin")
    client_for(security).post("/api/v1/users/", {"username": "new", "password": "x Y 1 long pass"})
    auditor = client_for(make_user("aud", "audit-admin"))

    listed = auditor.get("/api/v1/audit-events/", {"actor": "sec"})
    exported = auditor.get("/api/v1/audit-events/export/")
    body_of(exported)

    assert listed.status_code == 200
    assert any(e["actor_name"] == "sec" for e in listed.json()["results"])
    reads = AuditEvent.objects.filter(actor_name="aud").order_by("seq")
    reads = reads.values_list("action", flat=True)
    assert list(reads) == ["audit.read", "audit.export"]


def test_the_first_account_of_a_separated_console_is_the_security_administrator():
    password = ensure_initial_admin()

    assert password
    assert list(RoleBinding.objects.values_list("role", flat=True)) == ["security-admin"]
