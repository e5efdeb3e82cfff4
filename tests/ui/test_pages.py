"""Server-rendered pages: what each role sees, what the forms do, and that list
pages cost a fixed number of queries however many rows they show."""

from __future__ import annotations

import json
import re

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from apps.accounts.models import ApiToken, RoleBinding
from apps.audit.models import AuditEvent
from apps.inventory.models import GPU, EnrollmentToken, Node, NodeState
from tests.accounts.helpers import fast_password_hashing

__all__ = ["fast_password_hashing"]

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser_for(make_user):
    def build(*roles, username="person"):
        client = Client()
        client.force_login(make_user(username, *roles))
        return client

    return build


def add_nodes(cluster, count: int, gpus: int = 2) -> list[Node]:
    nodes = []
    for i in range(count):
        node = Node.objects.create(
            cluster=cluster, hostname=f"gpu-{len(nodes)}-{i}", state=NodeState.ONLINE
        )
        GPU.objects.bulk_create(GPU(node=node, index=g, name="H100") for g in range(gpus))
        nodes.append(node)
    return nodes


def query_count(client, path: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(path)
    assert response.status_code == 200, response.content[:300]
    return len(queries)


@pytest.mark.parametrize(
    "path",
    ["/", "/nodes/", "/audit/", "/users/", "/enroll/", "/alerts/", "/models/", "/deployments/"],
)
def test_list_pages_cost_the_same_queries_for_many_rows(path, browser_for, cluster):
    client = browser_for("admin")
    add_nodes(cluster, 2)
    few = query_count(client, path)
    add_nodes(cluster, 30)
    for i in range(10):
        browser_for("viewer", username=f"extra-{i}")

    assert query_count(client, path) == few


def test_dashboard_counts_nodes_by_state_and_gpus(browser_for, cluster):
    add_nodes(cluster, 3, gpus=4)
    Node.objects.create(cluster=cluster, hostname="quiet", state=NodeState.OFFLINE)

    body = browser_for("viewer").get("/").content.decode()

    assert "3 online" in body and "1 offline" in body
    grid = json.loads(re.search(r'id="gpu-grid-data"[^>]*>(.*?)</script>', body, re.S)[1])
    assert sum(len(node["gpus"]) for node in grid) == 12


def test_a_viewer_sees_no_admin_controls(browser_for, cluster):
    [node] = add_nodes(cluster, 1)
    client = browser_for("viewer")

    page = client.get(f"/nodes/{node.pk}/").content.decode()
    nav = client.get("/").content.decode()

    assert 'id="node-actions"' not in page
    for link in ('href="/enroll/"', 'href="/audit/"', 'href="/users/"'):
        assert link not in nav


def test_an_admin_sees_the_node_actions(browser_for, cluster):
    [node] = add_nodes(cluster, 1)

    page = browser_for("admin").get(f"/nodes/{node.pk}/").content.decode()

    assert 'id="drain"' in page and 'id="retire"' in page and 'id="revoke"' in page


def test_a_viewer_who_posts_anyway_is_refused_and_nothing_changes(browser_for, cluster):
    [node] = add_nodes(cluster, 1)

    response = browser_for("viewer").post(f"/nodes/{node.pk}/drain/")

    assert response.status_code == 403
    node.refresh_from_db()
    assert node.state == NodeState.ONLINE
    assert AuditEvent.objects.filter(action="inventory.change", outcome="denied").exists()


def test_drain_from_the_page_moves_the_node_and_is_audited(browser_for, cluster):
    [node] = add_nodes(cluster, 1)

    response = browser_for("admin").post(f"/nodes/{node.pk}/drain/")

    assert response.status_code == 302
    node.refresh_from_db()
    assert node.state == NodeState.DRAINING
    event = AuditEvent.objects.get(action="inventory.change")
    assert (event.target_type, event.target_id) == ("inventory.node", str(node.pk))
    assert event.changes["state"] == ["online", "draining"]


def test_node_list_filters_by_cluster_state_and_label(browser_for, cluster, other_cluster):
    a, _b = add_nodes(cluster, 2)
    a.labels = {"rack": "r1"}
    a.save()
    add_nodes(other_cluster, 1)
    client = browser_for("viewer")

    def shown(query):
        body = client.get(f"/nodes/{query}").content.decode()
        return body.count('<tr data-node="')

    assert shown("") == 3
    assert shown(f"?cluster={cluster.pk}") == 2
    assert shown("?label=rack:r1") == 1
    assert shown("?state=offline") == 0


def test_enrollment_page_shows_the_exact_command_once(browser_for, cluster):
    client = browser_for("admin")

    response = client.post("/enroll/", {"cluster": cluster.pk, "hours": 2})

    body = response.content.decode()
    assert response.status_code == 200
    assert "hangar-agent enroll --console http://testserver --token hge_" in body
    token = EnrollmentToken.objects.get()
    assert token.cluster == cluster
    assert "hge_" not in client.get("/enroll/").content.decode()


def test_api_token_secret_is_shown_once_and_can_be_revoked(browser_for):
    client = browser_for("viewer")

    body = client.post("/tokens/", {"name": "ci", "days": 7}).content.decode()

    token = ApiToken.objects.get()
    assert f"hgr_{token.prefix}_" in body
    assert f"hgr_{token.prefix}_" + "…" in client.get("/tokens/").content.decode()
    assert body.count(f"hgr_{token.prefix}_") == 2  # the secret box and the table row
    assert client.post(f"/tokens/{token.pk}/revoke/").status_code == 302
    token.refresh_from_db()
    assert token.state == "revoked"


def test_someone_elses_token_cannot_be_revoked(browser_for, make_user):
    other = make_user("other")
    client = browser_for("viewer")
    from apps.accounts.tokens import create_api_token

    token, _secret = create_api_token(other, "theirs", 1)

    assert client.post(f"/tokens/{token.pk}/revoke/").status_code == 404
    token.refresh_from_db()
    assert token.state == "active"


def test_admin_binds_an_ldap_group_to_a_role(browser_for, cluster):
    client = browser_for("admin")

    response = client.post(
        "/users/bindings/",
        {"role": "operator", "ldap_group": "CN=GPU-Ops,dc=example,dc=org", "cluster": cluster.pk},
    )

    assert response.status_code == 302
    binding = RoleBinding.objects.get(ldap_group="cn=gpu-ops,dc=example,dc=org")
    assert (binding.role, binding.cluster) == ("operator", cluster)
    assert "cn=gpu-ops,dc=example,dc=org" in client.get("/users/").content.decode()


def test_a_binding_with_two_subjects_is_refused_with_the_reason(browser_for, make_user):
    person = make_user("someone")

    response = browser_for("admin").post(
        "/users/bindings/", {"role": "viewer", "user": person.pk, "ldap_group": "cn=x,dc=y"}
    )

    assert response.status_code == 400
    assert "exactly one subject" in response.content.decode()


def test_audit_page_filters_and_offers_exports(browser_for):
    from apps.audit import recorder

    recorder.record("inventory.node-state", changes={"x": 1})
    recorder.record("accounts.initial-admin")
    client = browser_for("auditor")

    body = client.get("/audit/?action_prefix=inventory.").content.decode()

    assert "inventory.node-state" in body and "accounts.initial-admin" not in body
    assert "/api/v1/audit-events/export/?as=csv&amp;action_prefix=inventory." in body


def test_chain_state_says_intact(browser_for):
    from apps.audit import recorder

    recorder.record("one")
    body = browser_for("auditor").get("/audit/chain/").content.decode()

    assert 'data-state="ok"' in body


def test_chinese_is_chosen_from_the_browser_and_sticks_from_the_switch(browser_for):
    client = browser_for("viewer")

    chosen = client.get("/nodes/", HTTP_ACCEPT_LANGUAGE="zh-CN,zh;q=0.9").content.decode()
    assert "节点" in chosen

    response = client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/nodes/"})
    assert response.status_code == 302
    assert response.cookies["django_language"]["max-age"]
    assert "节点" in client.get("/nodes/", HTTP_ACCEPT_LANGUAGE="en").content.decode()


def firing_alert(node, **fields):
    from django.utils import timezone

    from apps.alerts.models import Alert

    values = {
        "rule_name": "GPU hot",
        "series": "gpu.0.temperature",
        "node": node,
        "cluster": node.cluster,
        "severity": "critical",
        "state": Alert.State.FIRING,
        "value": 91.0,
        "comparison": ">",
        "threshold": 85.0,
        "started_at": timezone.now(),
        "fired_at": timezone.now(),
    }
    return Alert.objects.create(**(values | fields))


def test_the_header_counts_firing_alerts_in_the_callers_clusters(
    browser_for, cluster, other_cluster
):
    [mine] = add_nodes(cluster, 1)
    [theirs] = add_nodes(other_cluster, 1)
    firing_alert(mine)
    firing_alert(theirs)
    client = browser_for(("viewer", cluster))

    badge = client.get("/alerts/count/").content.decode()

    assert 'data-firing="1"' in badge
    assert "1 firing" in badge


def test_an_operator_acknowledges_a_firing_alert_with_a_note(browser_for, cluster):
    [node] = add_nodes(cluster, 1)
    alert = firing_alert(node)
    client = browser_for("operator")
    assert "Acknowledge</button>" in client.get("/alerts/").content.decode()

    response = client.post(f"/alerts/{alert.pk}/acknowledge/", {"note": "on it"})

    assert response.status_code == 302
    alert.refresh_from_db()
    assert (alert.state, alert.note) == ("acknowledged", "on it")


def test_a_viewer_cannot_acknowledge(browser_for, cluster):
    [node] = add_nodes(cluster, 1)
    alert = firing_alert(node)
    client = browser_for("viewer")

    assert "Acknowledge</button>" not in client.get("/alerts/").content.decode()
    assert client.post(f"/alerts/{alert.pk}/acknowledge/").status_code == 403


def test_a_model_manager_registers_a_version_and_sees_its_checksum_progress(
    browser_for, settings, tmp_path, monkeypatch
):
    from apps.registry import tasks
    from apps.registry.models import Model, ModelVersion

    queued = []
    monkeypatch.setattr(tasks.hash_version_task, "delay", queued.append)
    from django.db import transaction

    monkeypatch.setattr(transaction, "on_commit", lambda run, *a, **k: run())
    settings.MODEL_ROOTS = [str(tmp_path)]
    (tmp_path / "qwen").mkdir()
    client = browser_for("model-manager")
    assert client.post("/models/new/", {"name": "qwen", "task": "chat"}).status_code == 302
    model = Model.objects.get(name="qwen")

    response = client.post(
        "/models/versions/",
        {"model": model.pk, "label": "v1", "path": str(tmp_path / "qwen"), "format": "gguf"},
    )

    assert response.status_code == 302
    version = ModelVersion.objects.get(model=model, label="v1")
    page = client.get("/models/").content.decode()
    assert "<progress" in page and 'hx-trigger="every 2s"' in page
    assert version.state == "draft" and queued == [version.pk]


def test_a_version_outside_the_model_roots_is_refused_with_the_reason(
    browser_for, settings, tmp_path
):
    from apps.registry.models import Model

    settings.MODEL_ROOTS = [str(tmp_path)]
    model = Model.objects.create(name="qwen")

    response = browser_for("admin").post(
        "/models/versions/", {"model": model.pk, "label": "v1", "path": "/etc", "format": "gguf"}
    )

    assert response.status_code == 400
    assert 'class="error"' in response.content.decode()


def test_a_viewer_sees_models_but_no_forms(browser_for):
    from apps.registry.models import Model

    Model.objects.create(name="qwen")
    client = browser_for("viewer")

    page = client.get("/models/").content.decode()

    assert "qwen" in page and 'id="version-form"' not in page
    assert client.post("/models/new/", {"name": "x"}).status_code == 403


def ready_version(label="v1"):
    from apps.registry.models import Model, ModelVersion

    model, _created = Model.objects.get_or_create(name="qwen")
    return ModelVersion.objects.create(
        model=model, label=label, path=f"/srv/models/qwen/{label}", format="gguf", state="ready"
    )


def test_an_admin_deploys_on_pinned_gpus_and_sees_the_workers(browser_for, cluster):
    from apps.deployments.models import Deployment

    [node] = add_nodes(cluster, 1, gpus=2)
    version = ready_version()
    client = browser_for("admin")
    page = client.get("/deployments/").content.decode()
    gpu = node.gpus.get(index=1)
    assert f'name="pin" value="{gpu.pk}"' in page

    response = client.post(
        "/deployments/new/",
        {
            "name": "chat",
            "cluster": cluster.pk,
            "model_version": version.pk,
            "engine": "reference",
            "replicas": 1,
            "port": 9300,
            "placement_mode": "pinned",
            "pin": gpu.pk,
        },
    )

    deployment = Deployment.objects.get(name="chat")
    assert response.status_code == 302, response.content.decode()[:2000]
    assert response["Location"] == f"/deployments/{deployment.pk}/"
    [worker] = deployment.workers.all()
    assert (worker.node, worker.gpus) == (node, [1])
    detail = client.get(response["Location"]).content.decode()
    assert f'data-worker="{worker.pk}"' in detail and 'id="deployment-actions"' in detail
    assert "GPU 1</s>" in client.get("/deployments/").content.decode()  # now in use


def test_a_deployment_that_cannot_be_placed_says_why(browser_for, cluster):
    add_nodes(cluster, 1, gpus=1)
    version = ready_version()

    response = browser_for("admin").post(
        "/deployments/new/",
        {
            "name": "big",
            "cluster": cluster.pk,
            "model_version": version.pk,
            "engine": "reference",
            "replicas": 1,
            "port": 9300,
            "gpus_per_replica": 4,
        },
    )

    assert response.status_code == 400
    assert "free GPU" in response.content.decode()


def test_a_viewer_sees_deployments_without_controls(browser_for, cluster):
    from apps.deployments.models import Deployment

    add_nodes(cluster, 1)
    deployment = Deployment.objects.create(
        name="chat",
        cluster=cluster,
        model_version=ready_version(),
        engine="reference",
        port=9300,
        placement={"mode": "auto"},
    )
    client = browser_for("viewer")

    assert 'id="deploy-form"' not in client.get("/deployments/").content.decode()
    page = client.get(f"/deployments/{deployment.pk}/").content.decode()
    assert 'id="deployment-actions"' not in page
    assert client.post(f"/deployments/{deployment.pk}/stop/").status_code == 403


def test_node_detail_lists_the_workers_on_it(browser_for, cluster):
    from apps.deployments.models import Deployment, Worker

    [node] = add_nodes(cluster, 1)
    deployment = Deployment.objects.create(
        name="chat",
        cluster=cluster,
        model_version=ready_version(),
        engine="reference",
        port=9300,
        placement={"mode": "auto"},
    )
    Worker.objects.create(
        deployment=deployment, node=node, model_version=deployment.model_version, slot=0,
        gpus=[0], port=9300, state="ready",
    )  # fmt: skip

    page = browser_for("viewer").get(f"/nodes/{node.pk}/").content.decode()

    assert 'id="node-workers"' in page and f"/deployments/{deployment.pk}/" in page
