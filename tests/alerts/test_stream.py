"""Alerts on the live stream: a real agent websocket into a real Daphne, a real Celery
worker delivering to a local webhook, real Redis. Durations run on sample time."""

import json
import time
from datetime import timedelta

from django.utils import timezone

from apps.alerts import services
from apps.alerts.models import Alert, Delivery, Silence
from apps.audit.models import AuditEvent
from apps.inventory.models import Node, NodeState
from apps.inventory.services import mark_offline_nodes
from tests.alerts.conftest import Agent, make_rule, signature_valid
from tests.support.processes import wait_for
from tests.telemetry.conftest import browser_socket, receive_until, session_for

SERIES = "gpu.0.temperature"


def alert_states() -> list[str]:
    return list(Alert.objects.order_by("id").values_list("state", flat=True))


def wait_for_state(state: str, count: int = 1) -> None:
    wait_for(
        lambda: Alert.objects.filter(state=state).count() == count,
        what=f"{count} alert(s) {state}",
    )


def transitions() -> list[tuple[str, str]]:
    return [
        (e.action, e.actor_type)
        for e in AuditEvent.objects.filter(action__startswith="alerts.").order_by("seq")
    ]


def test_a_crossing_goes_pending_firing_resolved_with_one_webhook_per_notified_transition(
    daphne, celery_worker, enrolled, webhook, receiver, settings
):
    node, credential = enrolled
    make_rule(for_seconds=2, receivers=[receiver])
    agent = Agent(daphne.url, credential)
    agent.temperatures(70, 90, 91, 92, 93, 94)
    wait_for_state("firing")
    agent.temperatures(70)
    wait_for_state("resolved")
    agent.close()

    assert transitions() == [
        ("alerts.pending", "system"),
        ("alerts.firing", "system"),
        ("alerts.resolved", "system"),
    ]
    alert = Alert.objects.get()
    assert (alert.series, alert.node_id, alert.value) == (SERIES, node.pk, 70.0)
    # Pending began at the first hot sample; it fired two sample-seconds later.
    assert (alert.fired_at - alert.started_at).total_seconds() == 2.0
    received = webhook.wait_for_count(2)
    assert webhook.events() == [("firing", SERIES), ("resolved", SERIES)]
    assert Delivery.objects.count() == 2  # made at the transitions: no more will come
    assert all(signature_valid(r) for r in received)
    assert received[0]["body"]["alert"]["url"] == (
        f"{settings.HANGAR_PUBLIC_URL}/api/v1/alerts/{alert.pk}/"
    )
    assert received[0]["headers"]["X-Hangar-Event"] == "firing"
    wait_for(lambda: set(Delivery.objects.values_list("state", flat=True)) == {"sent"})


def test_values_hovering_at_the_threshold_do_not_flap(
    daphne, celery_worker, enrolled, webhook, receiver
):
    _node, credential = enrolled
    make_rule(threshold=85.0, clear_threshold=80.0, receivers=[receiver])
    agent = Agent(daphne.url, credential)
    agent.temperatures(86, 84, 86, 83, 85.5, 80.5, 86, 81, 85, 84)
    agent.temperatures(79)  # the only value below the clear threshold
    wait_for_state("resolved")
    agent.close()

    assert alert_states() == ["resolved"]
    assert transitions() == [("alerts.firing", "system"), ("alerts.resolved", "system")]
    assert Delivery.objects.count() == 2
    webhook.wait_for_count(2)
    assert webhook.events() == [("firing", SERIES), ("resolved", SERIES)]


def test_a_silence_holds_notifications_back_until_it_expires(
    daphne, celery_worker, enrolled, webhook, receiver, cluster
):
    node, credential = enrolled
    make_rule(receivers=[receiver])
    Silence.objects.create(
        node=node,
        cluster=cluster,
        starts_at=timezone.now(),
        ends_at=timezone.now() + timedelta(seconds=2),
        reason="firmware update",
    )
    agent = Agent(daphne.url, credential)
    agent.temperatures(95)
    wait_for_state("firing")
    # Deliveries are made with the transition, in its transaction: none means none.
    assert Delivery.objects.count() == 0
    assert Alert.objects.get().notified_at is None

    # The beat sweep sends what a silence held back once it has ended.
    wait_for(lambda: services.sweep()["released"] == 1, what="the silence to end")
    webhook.wait_for_count(1)
    assert webhook.events() == [("firing", SERIES)]
    agent.temperatures(60)
    wait_for_state("resolved")
    agent.close()
    webhook.wait_for_count(2)
    assert webhook.events() == [("firing", SERIES), ("resolved", SERIES)]
    assert services.sweep()["released"] == 0


def test_a_failing_receiver_is_retried_and_its_attempts_are_visible_to_admins(
    daphne, celery_worker, enrolled, webhook, receiver, admin_api
):
    _node, credential = enrolled
    make_rule(receivers=[receiver])
    webhook.fail_next = 2
    agent = Agent(daphne.url, credential)
    agent.temperatures(95)
    webhook.wait_for_count(1)
    agent.close()
    assert webhook.failed == 2
    wait_for(lambda: Delivery.objects.get().state == "sent", what="the delivery to be sent")

    listed = admin_api.get(f"/api/v1/alert-deliveries/?receiver={receiver.pk}").json()["results"]
    assert [(d["event"], d["state"], d["attempts"]) for d in listed] == [("firing", "sent", 3)]
    assert listed[0]["last_error"] == f"HTTP 500 from {webhook.url}"


def test_browsers_watching_the_cluster_get_each_transition(daphne, enrolled, make_user, cluster):
    _node, credential = enrolled
    make_rule(for_seconds=1)
    viewer = make_user("vera", ("viewer", cluster))
    browser = browser_socket(daphne.url, session_for(viewer))
    browser.send(json.dumps({"action": "subscribe", "cluster": cluster.pk}))
    receive_until(browser, lambda m: m["type"] == "snapshot")
    agent = Agent(daphne.url, credential)
    agent.temperatures(90, 91, 50)
    states = [
        receive_until(browser, lambda m: m["type"] == "alert")["alert"]["state"] for _ in range(3)
    ]
    assert states == ["pending", "firing", "resolved"]
    agent.close()
    browser.close()


def test_a_node_that_goes_offline_fires_and_resolves_when_it_is_back(
    daphne, celery_worker, enrolled, webhook, receiver
):
    node, credential = enrolled
    make_rule(
        name="node offline",
        metric="node.offline",
        comparison=">=",
        threshold=1.0,
        receivers=[receiver],
    )
    agent = Agent(daphne.url, credential)
    wait_for(lambda: Node.objects.get(pk=node.pk).state == NodeState.ONLINE, what="online")
    agent.close()
    assert mark_offline_nodes({}, time.time()) == [node.pk]  # the beat sweep, in this process
    assert alert_states() == ["firing"]
    Agent(daphne.url, credential).close()  # hello: online again, in Daphne
    wait_for_state("resolved")
    webhook.wait_for_count(2)
    assert webhook.events() == [("firing", "node.offline"), ("resolved", "node.offline")]
