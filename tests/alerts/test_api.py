"""The alert API: who may read and change rules, alerts, silences, receivers, deliveries."""

from datetime import timedelta

import pytest
from django.core import mail
from django.db import connection
from django.utils import timezone

from apps.alerts import services
from apps.alerts.defaults import DEFAULT_RULES, install_default_rules
from apps.alerts.models import Alert, AlertRule, Delivery, Receiver, Silence
from apps.audit.models import AuditEvent
from apps.inventory.models import Node
from tests.alerts.conftest import make_rule

HOT = {"gpu.0.temperature": 95.0}
COOL = {"gpu.0.temperature": 40.0}


@pytest.fixture
def node(cluster):
    return Node.objects.create(cluster=cluster, hostname="gpu-a1", state="online")


@pytest.fixture
def far_node(other_cluster):
    return Node.objects.create(cluster=other_cluster, hostname="gpu-b1", state="online")


@pytest.fixture
def eager_celery():
    """Deliveries run in this process (so e-mail lands in Django's locmem outbox)."""
    from console.celery import app

    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


def fire(node, values=HOT) -> Alert:
    services.evaluate_values(node, values)
    return Alert.objects.filter(node=node).order_by("-id").first()


# --- rules ---------------------------------------------------------------------------


def test_the_shipped_rules_install_once_and_stay_editable(db):
    assert install_default_rules(AlertRule) == len(DEFAULT_RULES)
    assert install_default_rules(AlertRule) == 0
    metrics = set(AlertRule.objects.filter(builtin=True).values_list("metric", flat=True))
    assert {
        "gpu.*.memory_used_percent",
        "gpu.*.temperature",
        "gpu.*.xid_errors",
        "gpu.*.ecc_errors",
        "node.offline",
        "worker.*.p99_ms",
        "worker.*.error_rate",
        "worker.*.availability",
        "worker.*.crashloop",
        "deployment.*.http_5xx_rate",
        "deployment.*.latency_p99_ms",
    } == metrics
    temperature = AlertRule.objects.get(metric="gpu.*.temperature")
    assert (temperature.threshold, temperature.for_seconds) == (85.0, 120)


def test_admins_create_rules_and_a_node_rule_belongs_to_the_nodes_cluster(admin_api, node):
    response = admin_api.post(
        "/api/v1/alert-rules/",
        {
            "name": "hot gpu-a1",
            "metric": "gpu.*.temperature",
            "scope": "node",
            "node": node.pk,
            "comparison": ">",
            "threshold": 80,
            "clear_threshold": 75,
            "for_seconds": 60,
            "severity": "warning",
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["cluster"] == node.cluster_id
    event = AuditEvent.objects.get(action="alerts.manage")
    assert event.actor_type == "user" and event.target_id == str(response.json()["id"])


def test_a_deployment_rule_fires_for_its_workers_only_and_follows_scaling(admin_api, cluster):
    from apps.deployments.models import Deployment, Worker
    from tests.deployments.conftest import make_node, ready_version

    version = ready_version()
    node = make_node(cluster, "gpu-d1", gpus=3)

    def deployment(name, slots):
        d = Deployment.objects.create(
            name=name,
            cluster=cluster,
            model_version=version,
            engine="reference",
            replicas=slots,
            port=9000,
        )
        return d, [
            Worker.objects.create(
                deployment=d, node=node, model_version=version, slot=i, gpus=[i], port=9000 + i
            )
            for i in range(slots)
        ]

    (chat, (chat_0,)), (batch, (batch_0,)) = deployment("chat", 1), deployment("batch", 1)
    response = admin_api.post(
        "/api/v1/alert-rules/",
        {
            "name": "chat p99 above 150 ms",
            "metric": "worker.*.p99_ms",
            "scope": "deployment",
            "deployment": chat.pk,
            "comparison": ">",
            "threshold": 150,
            "severity": "critical",
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["cluster"] == cluster.pk and response.json()["node"] is None
    services.rules.clear()
    slow = {f"worker.{chat_0.pk}.p99_ms": 180.0, f"worker.{batch_0.pk}.p99_ms": 180.0}
    services.evaluate_values(node, slow)
    fired = Alert.objects.filter(rule__name="chat p99 above 150 ms")
    assert list(fired.values_list("series", flat=True)) == [f"worker.{chat_0.pk}.p99_ms"]
    # A replica added later is covered once the rules reload.
    chat_1 = Worker.objects.create(
        deployment=chat, node=node, model_version=version, slot=1, gpus=[2], port=9002
    )
    services.rules.clear()
    services.evaluate_values(node, {f"worker.{chat_1.pk}.p99_ms": 400.0})
    assert fired.count() == 2
    # A deployment rule on a non-worker series could never match: refused.
    refused = admin_api.post(
        "/api/v1/alert-rules/",
        {
            "name": "x",
            "metric": "gpu.*.temperature",
            "scope": "deployment",
            "deployment": batch.pk,
            "comparison": ">",
            "threshold": 1,
        },
        format="json",
    )
    assert refused.status_code == 400 and "metric" in refused.json()["fields"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"metric": "GPU temperature"}, "metric"),
        ({"clear_threshold": 90}, "clear_threshold"),
        ({"scope": "cluster"}, "cluster"),
        ({"scope": "deployment", "metric": "worker.*.p99_ms"}, "deployment"),
    ],
)
def test_a_rule_that_cannot_work_is_refused_with_the_field_named(admin_api, change, field):
    body = {
        "name": "bad",
        "metric": "gpu.*.temperature",
        "comparison": ">",
        "threshold": 85,
        **change,
    }
    response = admin_api.post("/api/v1/alert-rules/", body, format="json")
    assert response.status_code == 400 and field in response.json()["fields"]


def test_operators_read_rules_but_cannot_change_them(make_user, client_for, cluster):
    rule = make_rule()
    operator = client_for(make_user("olga", "operator"))
    assert operator.get("/api/v1/alert-rules/").json()["count"] == 1
    assert operator.patch(f"/api/v1/alert-rules/{rule.pk}/", {"threshold": 1}).status_code == 403


def test_cluster_viewers_see_rules_for_everywhere_and_their_clusters_only(
    make_user, client_for, cluster, other_cluster
):
    make_rule(name="everywhere")
    make_rule(name="ours", scope="cluster", cluster=cluster)
    make_rule(name="theirs", scope="cluster", cluster=other_cluster)
    viewer = client_for(make_user("vic", ("viewer", cluster)))
    names = [r["name"] for r in viewer.get("/api/v1/alert-rules/").json()["results"]]
    assert names == ["everywhere", "ours"]


def test_disabling_a_rule_resolves_its_open_alerts(admin_api, node):
    rule = make_rule()
    alert = fire(node)
    assert alert.state == "firing"
    response = admin_api.patch(f"/api/v1/alert-rules/{rule.pk}/", {"enabled": False})
    assert response.status_code == 200
    alert.refresh_from_db()
    assert (alert.state, alert.resolved_reason) == ("resolved", "rule disabled")
    assert AuditEvent.objects.filter(action="alerts.resolved", actor_type="system").count() == 1


# --- alerts ----------------------------------------------------------------------------


def test_alerts_filter_by_state_severity_and_cluster(admin_api, node, far_node):
    make_rule()
    make_rule(name="warm", threshold=50.0, severity="info")
    fire(node)
    fire(far_node, {"gpu.1.temperature": 60.0})

    def series(query):
        response = admin_api.get(f"/api/v1/alerts/?{query}")
        assert response.status_code == 200, response.content
        return sorted((a["rule_name"], a["node"]) for a in response.json()["results"])

    assert series("severity=info") == sorted([("warm", far_node.pk), ("warm", node.pk)])
    assert series(f"cluster={far_node.cluster_id}") == [("warm", far_node.pk)]
    assert series("state=firing&severity=critical") == [("hot GPU", node.pk)]
    assert series("state=resolved") == []
    assert admin_api.get("/api/v1/alerts/?state=burning").status_code == 400


def test_people_see_only_alerts_of_clusters_they_may_see(make_user, client_for, node, far_node):
    make_rule()
    fire(node)
    fire(far_node)
    viewer = client_for(make_user("vic", ("viewer", node.cluster)))
    listed = viewer.get("/api/v1/alerts/").json()["results"]
    assert [a["node"] for a in listed] == [node.pk]
    hidden = Alert.objects.get(node=far_node)
    assert viewer.get(f"/api/v1/alerts/{hidden.pk}/").status_code == 404


def test_an_operator_acknowledges_with_a_note_and_receivers_hear_of_it(
    make_user, client_for, node, webhook, receiver
):
    make_rule(receivers=[receiver])
    alert = fire(node)
    operator = client_for(make_user("olga", ("operator", node.cluster)))
    response = operator.post(
        f"/api/v1/alerts/{alert.pk}/acknowledge/", {"note": "fan swap at 14:00"}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["state"], body["acknowledged_by"], body["note"]) == (
        "acknowledged",
        "olga",
        "fan swap at 14:00",
    )
    event = AuditEvent.objects.get(action="alerts.acknowledge")
    assert (event.actor_name, event.target_id) == ("olga", str(alert.pk))
    assert event.changes["note"] == "fan swap at 14:00"
    assert event.changes["state"] == ["firing", "acknowledged"]
    assert list(Delivery.objects.values_list("event", flat=True)) == ["acknowledged", "firing"]

    # Acknowledged is not the end: the alert still resolves by itself.
    services.evaluate_values(node, COOL)
    alert.refresh_from_db()
    assert alert.state == "resolved"
    again = operator.post(f"/api/v1/alerts/{alert.pk}/acknowledge/", {}, format="json")
    assert again.status_code == 409


def test_viewers_cannot_acknowledge(make_user, client_for, node):
    make_rule()
    alert = fire(node)
    viewer = client_for(make_user("vic", "viewer"))
    assert viewer.post(f"/api/v1/alerts/{alert.pk}/acknowledge/", {}).status_code == 403
    assert Alert.objects.get(pk=alert.pk).state == "firing"


# --- silences --------------------------------------------------------------------------


def test_a_silenced_alert_that_resolves_before_the_silence_ends_notifies_nobody(
    node, receiver, cluster
):
    make_rule(receivers=[receiver])
    Silence.objects.create(
        cluster=cluster,
        severity="critical",
        starts_at=timezone.now(),
        ends_at=timezone.now() + timedelta(hours=1),
        reason="maintenance window",
    )
    fire(node)
    services.evaluate_values(node, COOL)
    assert Alert.objects.get().state == "resolved"
    assert Delivery.objects.count() == 0
    assert services.sweep()["released"] == 0


def test_operators_silence_a_node_and_expire_the_silence(make_user, client_for, node):
    operator = client_for(make_user("olga", ("operator", node.cluster)))
    ends = (timezone.now() + timedelta(hours=2)).isoformat()
    response = operator.post(
        "/api/v1/silences/", {"node": node.pk, "ends_at": ends, "reason": "reboot"}, format="json"
    )
    assert response.status_code == 201, response.content
    silence = response.json()
    assert (silence["cluster"], silence["created_by"], silence["active"]) == (
        node.cluster_id,
        "olga",
        True,
    )
    assert AuditEvent.objects.filter(action="alerts.silence", actor_name="olga").count() == 1
    expired = operator.post(f"/api/v1/silences/{silence['id']}/expire/")
    assert expired.status_code == 200 and expired.json()["active"] is False
    assert AuditEvent.objects.filter(action="alerts.silence.expire").count() == 1
    assert operator.get("/api/v1/silences/?active=true").json()["count"] == 0


def test_a_cluster_operator_cannot_silence_everything(make_user, client_for, cluster):
    operator = client_for(make_user("olga", ("operator", cluster)))
    ends = (timezone.now() + timedelta(hours=2)).isoformat()
    response = operator.post(
        "/api/v1/silences/", {"ends_at": ends, "reason": "quiet please"}, format="json"
    )
    assert response.status_code == 403
    assert Silence.objects.count() == 0


# --- receivers and deliveries ------------------------------------------------------------


def test_receiver_secrets_are_write_only_and_redacted_in_the_audit_log(admin_api):
    response = admin_api.post(
        "/api/v1/receivers/",
        {"name": "pager", "kind": "webhook", "url": "https://pager.example.org/h", "secret": "s3"},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert "secret" not in body and body["has_secret"] is True
    assert Receiver.objects.get().secret == "s3"
    listed = admin_api.get("/api/v1/receivers/").json()["results"][0]
    assert "secret" not in listed
    event = AuditEvent.objects.get(action="alerts.manage")
    assert "s3" not in str(event.changes)


def test_receivers_and_deliveries_are_for_administrators_only(make_user, client_for):
    operator = client_for(make_user("olga", "operator"))
    assert operator.get("/api/v1/receivers/").status_code == 403
    assert operator.get("/api/v1/alert-deliveries/").status_code == 403


def test_a_webhook_receiver_needs_a_url_and_an_email_receiver_addresses(admin_api):
    hook = admin_api.post("/api/v1/receivers/", {"name": "h", "kind": "webhook"}, format="json")
    assert hook.status_code == 400 and "url" in hook.json()["fields"]
    mail_receiver = admin_api.post(
        "/api/v1/receivers/", {"name": "m", "kind": "email", "emails": ["x"]}, format="json"
    )
    assert mail_receiver.status_code == 400 and "emails" in mail_receiver.json()["fields"]


def test_email_receivers_get_one_message_per_notified_transition(
    node, eager_celery, django_capture_on_commit_callbacks
):
    oncall = Receiver.objects.create(name="oncall", kind="email", emails=["oncall@example.org"])
    make_rule(receivers=[oncall])
    with django_capture_on_commit_callbacks(execute=True):
        fire(node)
    with django_capture_on_commit_callbacks(execute=True):
        services.evaluate_values(node, {"gpu.0.temperature": 96.0})  # still firing: nothing
    with django_capture_on_commit_callbacks(execute=True):
        services.evaluate_values(node, COOL)
    assert [m.subject for m in mail.outbox] == [
        "[Hangar critical] firing: hot GPU on gpu-a1",
        "[Hangar critical] resolved: hot GPU on gpu-a1",
    ]
    alert = Alert.objects.get()
    assert f"/api/v1/alerts/{alert.pk}/" in mail.outbox[0].body
    assert mail.outbox[0].to == ["oncall@example.org"]
    assert set(Delivery.objects.values_list("state", "attempts")) == {("sent", 1)}


def test_a_receiver_that_never_answers_is_given_up_after_the_last_attempt(
    node, eager_celery, django_capture_on_commit_callbacks, monkeypatch
):
    from apps.alerts import tasks

    monkeypatch.setattr(tasks, "MAX_ATTEMPTS", 3)
    dead = Receiver.objects.create(name="dead", kind="webhook", url="http://127.0.0.1:9/")
    make_rule(receivers=[dead])
    with django_capture_on_commit_callbacks(execute=True):
        fire(node)
    delivery = Delivery.objects.get()
    assert (delivery.state, delivery.attempts) == ("failed", 3)
    assert delivery.last_error.startswith("could not reach http://127.0.0.1:9/")


# --- Prometheus ----------------------------------------------------------------------------


def test_prometheus_exports_firing_alerts_by_severity_and_rule(client, make_user, node):
    make_rule()
    fire(node)
    client.force_login(make_user("vic", "viewer"))
    body = client.get("/metrics").content.decode()
    assert "# TYPE hangar_alerts_firing gauge" in body
    assert 'hangar_alerts_firing{severity="critical",rule="hot GPU"} 1' in body


def test_an_acknowledgement_made_while_a_rule_s_alerts_are_being_resolved_is_kept(make_user, node):
    """resolve_rule_alerts reads the open alerts first, then closes each: an
    acknowledgement in between (made here right after that read) must stay."""
    rule = make_rule()
    alert = fire(node)
    olga = make_user("olga", ("operator", node.cluster))
    acknowledged = []

    def acknowledge_after_the_list_is_read(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if not acknowledged and sql.startswith('SELECT "alerts_alert"'):
            acknowledged.append(True)  # first: acknowledging queries alerts too
            services.acknowledge(alert, olga, "fan swap at 14:00")
        return result

    with connection.execute_wrapper(acknowledge_after_the_list_is_read):
        assert services.resolve_rule_alerts(rule, "rule disabled") == 1

    alert.refresh_from_db()
    assert acknowledged and alert.state == "resolved"
    assert (alert.acknowledged_by, alert.note) == (olga, "fan swap at 14:00")
