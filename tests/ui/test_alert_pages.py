"""Alert pages: rules, silences, receivers and deliveries. Each form goes through
the API's serializer and services, is audited, and is refused to roles without
the right; list pages cost a fixed number of queries however many rows they show."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.alerts.models import Alert, AlertRule, Delivery, Receiver, Silence
from apps.audit.models import AuditEvent
from apps.inventory.models import Cluster, Node, NodeState
from tests.accounts.helpers import fast_password_hashing

__all__ = ["fast_password_hashing"]

pytestmark = pytest.mark.django_db

SECRET = "hook-secret-9f3a7c"


@pytest.fixture
def browser_for(make_user):
    def build(*roles, username="person"):
        client = Client()
        client.force_login(make_user(username, *roles))
        return client

    return build


def rule_form(cluster: Cluster, **changes) -> dict:
    return {
        "name": "hot GPUs",
        "metric": "gpu.*.temperature",
        "scope": "cluster",
        "cluster": cluster.pk,
        "comparison": ">",
        "threshold": "90",
        "clear_threshold": "",
        "for_seconds": "60",
        "severity": "critical",
        "enabled": "on",
        **changes,
    }


def make_rule(cluster: Cluster | None = None, name: str = "existing") -> AlertRule:
    return AlertRule.objects.create(
        name=name,
        metric="gpu.*.temperature",
        scope="cluster" if cluster else "everywhere",
        cluster=cluster,
        comparison=">",
        threshold=85,
    )


def firing_alert(rule: AlertRule, node: Node) -> Alert:
    now = timezone.now()
    return Alert.objects.create(
        rule=rule,
        rule_name=rule.name,
        series="gpu.0.temperature",
        node=node,
        cluster=node.cluster,
        severity=rule.severity,
        state=Alert.State.FIRING,
        value=91,
        comparison=">",
        threshold=85,
        started_at=now,
        fired_at=now,
    )


def last_event(action: str) -> AuditEvent:
    return AuditEvent.objects.filter(action=action).order_by("-seq").first()


# --- rules ---------------------------------------------------------------------------


def test_an_admin_creates_a_rule_through_the_page(browser_for, cluster):
    receiver = Receiver.objects.create(name="pager", kind="email", emails=["ops@example.org"])

    response = browser_for("admin").post(
        "/alerts/rules/new/", {**rule_form(cluster), "receivers": [receiver.pk]}
    )

    assert response.status_code == 302
    rule = AlertRule.objects.get(name="hot GPUs")
    assert (rule.cluster, rule.threshold, rule.severity) == (cluster, 90, "critical")
    assert list(rule.receivers.all()) == [receiver]
    event = last_event("alerts.manage")
    assert (event.target_type, event.target_id) == ("alerts.alertrule", str(rule.pk))
    assert event.changes["created"]["name"] == "hot GPUs"


def test_an_admin_scopes_a_rule_to_one_deployment_through_the_page(browser_for, cluster):
    from apps.deployments.models import Deployment
    from tests.deployments.conftest import ready_version

    chat = Deployment.objects.create(
        name="chat", cluster=cluster, model_version=ready_version(), engine="reference", port=9000
    )
    admin = browser_for("admin")
    assert f'<option value="{chat.pk}" >chat (campus-a)</option>' in (
        admin.get("/alerts/rules/").content.decode()
    )
    form = rule_form(cluster, metric="worker.*.p99_ms", scope="deployment", deployment=chat.pk)
    assert admin.post("/alerts/rules/new/", form).status_code == 302
    rule = AlertRule.objects.get(name="hot GPUs")
    assert (rule.scope, rule.deployment, rule.cluster) == ("deployment", chat, cluster)
    page = admin.get("/alerts/rules/").content.decode()
    assert "deployment chat" in page
    edit = admin.get(f"/alerts/rules/{rule.pk}/").content.decode()
    assert f'<option value="{chat.pk}" selected>chat (campus-a)</option>' in edit


def test_an_invalid_rule_is_shown_again_with_the_serializers_error(browser_for, cluster):
    response = browser_for("admin").post(
        "/alerts/rules/new/", rule_form(cluster, clear_threshold="95")
    )

    assert response.status_code == 400
    assert "at most the threshold" in response.content.decode()
    assert not AlertRule.objects.filter(name="hot GPUs").exists()


def test_an_admin_edits_a_rule_and_a_changed_condition_resolves_its_alerts(browser_for, cluster):
    rule = make_rule(cluster)
    node = Node.objects.create(cluster=cluster, hostname="gpu-1", state=NodeState.ONLINE)
    alert = firing_alert(rule, node)
    client = browser_for("admin")

    assert client.get(f"/alerts/rules/{rule.pk}/").status_code == 200
    response = client.post(
        f"/alerts/rules/{rule.pk}/", rule_form(cluster, name="existing", metric="gpu.*.fan")
    )

    assert response.status_code == 302
    rule.refresh_from_db()
    alert.refresh_from_db()
    assert rule.metric == "gpu.*.fan"
    assert (alert.state, alert.resolved_reason) == ("resolved", "rule changed")
    event = last_event("alerts.manage")
    assert event.target_id == str(rule.pk)
    assert event.changes["metric"] == ["gpu.*.temperature", "gpu.*.fan"]


def test_disabling_a_rule_from_the_page_resolves_its_open_alerts(browser_for, cluster):
    rule = make_rule(cluster)
    node = Node.objects.create(cluster=cluster, hostname="gpu-1", state=NodeState.ONLINE)
    alert = firing_alert(rule, node)

    response = browser_for("admin").post(f"/alerts/rules/{rule.pk}/enable/", {"enabled": "false"})

    assert response.status_code == 302
    rule.refresh_from_db()
    alert.refresh_from_db()
    assert rule.enabled is False
    assert (alert.state, alert.resolved_reason) == ("resolved", "rule disabled")
    assert last_event("alerts.manage").changes["enabled"] == [True, False]


def test_an_admin_deletes_a_rule_and_the_deletion_is_audited(browser_for, cluster):
    rule = make_rule(cluster)

    response = browser_for("admin").post(f"/alerts/rules/{rule.pk}/delete/")

    assert response.status_code == 302
    assert not AlertRule.objects.filter(pk=rule.pk).exists()
    event = last_event("alerts.manage")
    assert (event.target_type, event.target_id) == ("alerts.alertrule", str(rule.pk))
    assert event.changes["deleted"]["name"] == "existing"


def test_a_viewer_sees_rules_without_edit_controls(browser_for, cluster):
    rule = make_rule(cluster)

    page = browser_for("viewer").get("/alerts/rules/").content.decode()

    assert f'data-rule="{rule.pk}"' in page
    assert 'id="rule-form"' not in page
    assert f"/alerts/rules/{rule.pk}/delete/" not in page
    assert f"/alerts/rules/{rule.pk}/enable/" not in page
    assert 'href="/alerts/receivers/"' not in page


def test_a_viewer_who_posts_anyway_is_refused_and_nothing_changes(browser_for, cluster):
    rule = make_rule(cluster)
    client = browser_for("viewer")

    responses = [
        client.post("/alerts/rules/new/", rule_form(cluster)),
        client.post(f"/alerts/rules/{rule.pk}/", rule_form(cluster)),
        client.post(f"/alerts/rules/{rule.pk}/enable/", {"enabled": "false"}),
        client.post(f"/alerts/rules/{rule.pk}/delete/"),
    ]

    assert [r.status_code for r in responses] == [403] * 4
    rule.refresh_from_db()
    assert (rule.name, rule.enabled) == ("existing", True)
    assert not AlertRule.objects.filter(name="hot GPUs").exists()
    assert AuditEvent.objects.filter(action="alerts.manage", outcome="denied").count() == 4


# --- silences ------------------------------------------------------------------------


def silence_form(cluster: Cluster | None, **changes) -> dict:
    ends = (timezone.localtime() + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M")
    form = {"ends_at": ends, "reason": "replacing fans", **changes}
    if cluster is not None:
        form["cluster"] = cluster.pk
    return form


def test_an_operator_silences_their_cluster(browser_for, cluster):
    client = browser_for(("operator", cluster))

    response = client.post("/alerts/silences/new/", silence_form(cluster))

    assert response.status_code == 302
    silence = Silence.objects.get()
    assert (silence.cluster, silence.reason) == (cluster, "replacing fans")
    assert silence.created_by.username == "person"
    event = last_event("alerts.silence")
    assert (event.target_type, event.target_id) == ("alerts.silence", str(silence.pk))
    page = client.get("/alerts/silences/").content.decode()
    assert f"/alerts/silences/{silence.pk}/expire/" in page


def test_an_operator_cannot_silence_another_cluster_or_every_cluster(
    browser_for, cluster, other_cluster
):
    client = browser_for(("operator", cluster))

    elsewhere = client.post("/alerts/silences/new/", silence_form(other_cluster))
    everywhere = client.post("/alerts/silences/new/", silence_form(None))

    assert (elsewhere.status_code, everywhere.status_code) == (403, 403)
    assert not Silence.objects.exists()


def test_an_operator_expires_silences_in_their_cluster_only(browser_for, cluster, other_cluster):
    now = timezone.now()
    mine, theirs = (
        Silence.objects.create(
            cluster=c, starts_at=now, ends_at=now + timedelta(hours=1), reason="work"
        )
        for c in (cluster, other_cluster)
    )
    client = browser_for(("operator", cluster))

    assert client.post(f"/alerts/silences/{mine.pk}/expire/").status_code == 302
    assert client.post(f"/alerts/silences/{theirs.pk}/expire/").status_code == 404

    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert mine.ends_at <= timezone.now() < theirs.ends_at
    assert last_event("alerts.silence.expire").target_id == str(mine.pk)
    page = client.get("/alerts/silences/").content.decode()
    assert f'data-silence="{theirs.pk}"' not in page


def test_a_viewer_sees_silences_without_the_form(browser_for, cluster):
    now = timezone.now()
    Silence.objects.create(
        cluster=cluster, starts_at=now, ends_at=now + timedelta(hours=1), reason="work"
    )
    client = browser_for("viewer")

    page = client.get("/alerts/silences/").content.decode()

    assert "work" in page and 'id="silence-form"' not in page and "/expire/" not in page
    assert client.post("/alerts/silences/new/", silence_form(cluster)).status_code == 403


# --- receivers and deliveries --------------------------------------------------------


def test_a_receiver_secret_never_appears_in_any_page(browser_for, cluster):
    client = browser_for("admin")
    created = client.post(
        "/alerts/receivers/new/",
        {"name": "pager", "kind": "webhook", "url": "https://pager.example.org/h",
         "secret": SECRET, "enabled": "on"},
    )  # fmt: skip
    assert created.status_code == 302
    receiver = Receiver.objects.get(name="pager")
    assert receiver.secret == SECRET
    rule = make_rule(cluster)
    rule.receivers.add(receiver)
    node = Node.objects.create(cluster=cluster, hostname="gpu-1", state=NodeState.ONLINE)
    Delivery.objects.create(
        alert=firing_alert(rule, node), receiver=receiver, event="firing", state="failed",
        attempts=8, last_error="HTTP 502 from pager",
    )  # fmt: skip
    # An edit that keeps the secret (empty field), and one that fails validation.
    kept = client.post(
        f"/alerts/receivers/{receiver.pk}/",
        {"name": "pager", "kind": "webhook", "url": "https://pager.example.org/h2"},
    )
    invalid = client.post(
        f"/alerts/receivers/{receiver.pk}/",
        {"name": "pager", "kind": "webhook", "url": "ftp://x", "secret": SECRET},
    )

    assert kept.status_code == 302 and invalid.status_code == 400
    receiver.refresh_from_db()
    assert (receiver.url, receiver.secret) == ("https://pager.example.org/h2", SECRET)
    pages = [invalid.content.decode()] + [
        client.get(path).content.decode()
        for path in (
            "/alerts/receivers/",
            f"/alerts/receivers/{receiver.pk}/",
            "/alerts/deliveries/",
            "/alerts/rules/",
            f"/alerts/rules/{rule.pk}/",
            "/audit/",
        )
    ]
    assert all(SECRET not in page for page in pages)
    assert "HTTP 502 from pager" in pages[3]
    assert '<td class="num"><a class="error"' in pages[1]  # one failing delivery


def test_an_admin_edits_and_deletes_a_receiver(browser_for):
    receiver = Receiver.objects.create(name="pager", kind="email", emails=["a@example.org"])
    client = browser_for("admin")

    edited = client.post(
        f"/alerts/receivers/{receiver.pk}/",
        {"name": "oncall", "kind": "email", "emails": "a@example.org\nb@example.org"},
    )
    receiver.refresh_from_db()
    assert edited.status_code == 302
    assert (receiver.name, receiver.emails) == ("oncall", ["a@example.org", "b@example.org"])
    assert last_event("alerts.manage").changes["name"] == ["pager", "oncall"]

    assert client.post(f"/alerts/receivers/{receiver.pk}/delete/").status_code == 302
    assert not Receiver.objects.exists()


def test_receivers_are_for_administrators_only(browser_for):
    receiver = Receiver.objects.create(name="pager", kind="email", emails=["a@example.org"])
    client = browser_for("operator")

    assert client.get("/alerts/receivers/").status_code == 403
    assert client.get("/alerts/deliveries/").status_code == 403
    assert client.post(f"/alerts/receivers/{receiver.pk}/delete/").status_code == 403
    assert 'href="/alerts/receivers/"' not in client.get("/alerts/").content.decode()
    assert Receiver.objects.exists()


# --- links and query counts ----------------------------------------------------------


def test_the_nav_and_the_alerts_page_link_the_alert_pages(browser_for):
    admin = browser_for("admin", username="admin").get("/alerts/").content.decode()
    viewer = browser_for("viewer", username="viewer").get("/alerts/").content.decode()

    for link in (
        "/alerts/rules/",
        "/alerts/silences/",
        "/alerts/receivers/",
        "/alerts/deliveries/",
    ):
        assert f'href="{link}"' in admin
    assert 'href="/alerts/rules/"' in viewer and 'href="/alerts/silences/"' in viewer


def add_alerting_rows(cluster: Cluster, count: int) -> None:
    now = timezone.now()
    node = Node.objects.create(
        cluster=cluster, hostname=f"gpu-x{Node.objects.count()}", state=NodeState.ONLINE
    )
    for i in range(count):
        n = AlertRule.objects.count()
        rule = make_rule(cluster if i % 2 else None, name=f"rule {n}")
        receiver = Receiver.objects.create(
            name=f"hook {n}", kind="webhook", url="https://h.example"
        )
        rule.receivers.add(receiver)
        alert = firing_alert(rule, node)
        Delivery.objects.create(alert=alert, receiver=receiver, event="firing", state="failed")
        Silence.objects.create(
            cluster=cluster, node=node, rule=rule, starts_at=now,
            ends_at=now + timedelta(hours=1 if i % 2 else -1), reason=f"silence {n}",
        )  # fmt: skip


def query_count(client, path: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(path)
    assert response.status_code == 200, response.content[:300]
    return len(queries)


OPERATOR_IN_CLUSTER = "operator in the cluster, viewer elsewhere"


@pytest.mark.parametrize(
    ("path", "role"),
    [
        *((p, "admin") for p in ("/alerts/rules/", "/alerts/silences/", "/alerts/receivers/")),
        ("/alerts/deliveries/", "admin"),
        ("/alerts/rules/", OPERATOR_IN_CLUSTER),
        ("/alerts/silences/", OPERATOR_IN_CLUSTER),
    ],
)
def test_alert_pages_cost_the_same_queries_for_many_rows(path, role, browser_for, cluster):
    roles = ("admin",) if role == "admin" else (("operator", cluster), "viewer")
    client = browser_for(*roles)
    add_alerting_rows(cluster, 2)
    few = query_count(client, path)
    add_alerting_rows(cluster, 30)

    assert query_count(client, path) == few
