"""Alert objects for the role matrix's World (tests/endpoints.py): placeholders
{rule} {alert} {silence} inside and outside the scoped role's clusters, and the
global {receiver} and {delivery}."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from apps.alerts.models import Alert, AlertRule, Delivery, Receiver, Silence


def alerting_world(world) -> dict[str, dict[str, int]]:
    receiver = Receiver.objects.create(
        name="matrix-hook", kind="webhook", url="https://hooks.example.org/h", secret="k"
    )
    placed: dict[str, dict[str, int]] = {"rule": {}, "alert": {}, "silence": {}}
    for place, cluster in world.clusters.items():
        node = world.nodes[place]
        rule = AlertRule.objects.create(
            name=f"matrix rule {place}",
            metric="gpu.*.temperature",
            scope="cluster",
            cluster=cluster,
            comparison=">",
            threshold=85.0,
        )
        alert = Alert.objects.create(
            rule=rule,
            rule_name=rule.name,
            series="gpu.0.temperature",
            node=node,
            cluster=cluster,
            severity=rule.severity,
            state=Alert.State.FIRING,
            value=91.0,
            comparison=">",
            threshold=85.0,
            started_at=timezone.now(),
            fired_at=timezone.now(),
        )
        silence = Silence.objects.create(
            cluster=cluster,
            starts_at=timezone.now(),
            ends_at=timezone.now() + timedelta(hours=1),
            reason="matrix",
        )
        placed["rule"][place], placed["alert"][place] = rule.pk, alert.pk
        placed["silence"][place] = silence.pk
    delivery = Delivery.objects.create(
        alert_id=placed["alert"]["in"], receiver=receiver, event="firing"
    )
    placed["receiver"] = dict.fromkeys(world.clusters, receiver.pk)
    placed["delivery"] = dict.fromkeys(world.clusters, delivery.pk)
    return placed
