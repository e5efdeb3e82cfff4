"""Issue #3, "Done means", end to end with a real directory:

An LDAP user whose group is bound to `operator` on one cluster logs in, sees
only that cluster, can act only there, and every action, allowed or denied, is
in the audit log that `audit verify` proves intact.
"""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from rest_framework.test import APIClient

from apps.accounts.policy import can
from apps.audit.models import AuditEvent
from apps.deployments.models import Deployment
from apps.inventory.models import Cluster, Node
from apps.registry.models import Model, ModelVersion
from tests.accounts.helpers import fast_password_hashing, login, use_ldap
from tests.support.responses import body_of

__all__ = ["fast_password_hashing"]

OPERATORS = "cn=gpu-operators,ou=groups,dc=hangar,dc=test"
AUDITORS = "cn=auditors,ou=groups,dc=hangar,dc=test"


def _deployment(cluster: Cluster, version: ModelVersion) -> Deployment:
    return Deployment.objects.create(
        name=f"chat-{cluster.name}", cluster=cluster, model_version=version, engine="vllm",
        port=8000,
    )  # fmt: skip


@pytest.mark.django_db
def test_ldap_operator_of_one_cluster_sees_and_acts_only_there_and_all_is_on_record(
    slapd_fresh, settings, monkeypatch, admin_api
):
    use_ldap(settings, monkeypatch, slapd_fresh.hangar_env())
    campus = Cluster.objects.create(name="campus")
    hospital = Cluster.objects.create(name="hospital")
    Node.objects.create(cluster=campus, hostname="gpu-campus-1")
    Node.objects.create(cluster=hospital, hostname="gpu-hospital-1")
    model = Model.objects.create(name="llama")
    version = ModelVersion.objects.create(model=model, label="v1", path="/m/llama", format="gguf")
    ours, theirs = _deployment(campus, version), _deployment(hospital, version)

    # An administrator binds the directory groups (through the API, so on record too).
    for role, group, cluster in (("operator", OPERATORS, campus.pk), ("auditor", AUDITORS, None)):
        bound = admin_api.post(
            "/api/v1/role-bindings/",
            {"role": role, "ldap_group": group, "cluster": cluster},
            format="json",
        )
        assert bound.status_code == 201, bound.content

    # alice (in gpu-operators) logs in with her directory password.
    alice_browser = APIClient()
    assert login(alice_browser, "alice", "alice-pw").status_code == 302
    alice = get_user_model().objects.get(username="alice")

    # She sees only her cluster, in the API and on the pages.
    assert [c["name"] for c in alice_browser.get("/api/v1/clusters/").json()["results"]] == [
        "campus"
    ]
    assert [n["hostname"] for n in alice_browser.get("/api/v1/nodes/").json()["results"]] == [
        "gpu-campus-1"
    ]
    assert [d["name"] for d in alice_browser.get("/api/v1/deployments/").json()["results"]] == [
        "chat-campus"
    ]
    page = alice_browser.get("/nodes/").content.decode()
    assert "gpu-campus-1" in page and "gpu-hospital-1" not in page
    assert alice_browser.get(f"/api/v1/clusters/{hospital.pk}/").status_code == 404

    # She can act there, and only there.
    assert can(alice, "deployments.operate", campus)
    assert not can(alice, "deployments.operate", hospital)
    stopped = alice_browser.post(f"/api/v1/deployments/{ours.pk}/stop/")
    assert stopped.status_code == 200, stopped.content
    assert alice_browser.post(f"/api/v1/deployments/{theirs.pk}/stop/").status_code == 404
    assert (
        alice_browser.patch(
            f"/api/v1/clusters/{campus.pk}/", {"description": "mine now"}, format="json"
        ).status_code
        == 403
    )  # operators run deployments; they do not edit the inventory
    assert (
        alice_browser.post(
            "/api/v1/role-bindings/", {"role": "admin", "user": alice.pk}, format="json"
        ).status_code
        == 403
    )
    assert alice_browser.get("/api/v1/audit-events/").status_code == 403
    ours.refresh_from_db()
    theirs.refresh_from_db()
    assert (ours.desired_state, theirs.desired_state) == ("stopped", "running")

    # Every action, allowed or denied, is on record...
    alices = [
        (e.action, e.outcome, e.target_type, e.target_id)
        for e in AuditEvent.objects.filter(actor_name="alice").order_by("seq")
    ]
    assert alices == [
        ("auth.login", "allowed", "auth.user", str(alice.pk)),
        ("deployments.stop", "allowed", "deployments.deployment", str(ours.pk)),
        ("deployments.operate", "denied", "deployments.deployment", str(theirs.pk)),
        ("inventory.change", "denied", "inventory.cluster", str(campus.pk)),
        ("accounts.manage", "denied", "", ""),
    ]

    # ...an auditor from the directory (dave) can export it...
    dave_browser = APIClient()
    assert login(dave_browser, "dave", "dave-pw").status_code == 302
    export = dave_browser.get("/api/v1/audit-events/export/?as=jsonl&actor=alice")
    exported = [json.loads(line) for line in body_of(export).splitlines()]
    assert [(e["action"], e["outcome"]) for e in exported] == [a[:2] for a in alices]

    # ...and the chain is intact.
    out = StringIO()
    call_command("audit", "verify", stdout=out)
    assert "chain intact" in out.getvalue()
