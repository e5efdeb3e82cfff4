"""What a notification says and how it reaches a receiver (webhook or e-mail).

The payload is built once, when the transition happens, and stored on the
delivery: every retry sends the same body. docs/alerts.md documents the
payload and how to check the signature.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import time
import urllib.error
import urllib.request

from django.conf import settings
from django.core.mail import send_mail

from apps.alerts import robots
from apps.alerts.models import Alert, Delivery, Receiver

PAYLOAD_VERSION = 1
WEBHOOK_TIMEOUT_SECONDS = 10
SIGNATURE_HEADER = "X-Hangar-Signature"


class DeliveryFailed(Exception):
    """The receiver did not take the notification; the message says why."""


def alert_url(alert: Alert) -> str:
    # The API view of the alert, until the console has an alert page.
    return settings.HANGAR_PUBLIC_URL.rstrip("/") + f"/api/v1/alerts/{alert.pk}/"


def alert_page_url(alert_id: int) -> str:
    """The console page showing this alert, for messages a person reads."""
    return settings.HANGAR_PUBLIC_URL.rstrip("/") + f"/alerts/?state=all&id={alert_id}"


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def payload(alert: Alert, event: str) -> dict:
    return {
        "version": PAYLOAD_VERSION,
        "event": event,
        "alert": {
            "id": alert.pk,
            "url": alert_url(alert),
            "page_url": alert_page_url(alert.pk),
            "rule": {"id": alert.rule_id, "name": alert.rule_name},
            "state": alert.state,
            "severity": alert.severity,
            "series": alert.series,
            "value": alert.value,
            "comparison": alert.comparison,
            "threshold": alert.threshold,
            "summary": alert.summary,
            "detail": alert.detail,
            "node": {"id": alert.node_id, "name": str(alert.node)} if alert.node_id else None,
            "deployment": {"id": alert.deployment_id, "name": alert.deployment.name}
            if alert.deployment_id
            else None,
            "cluster": {"id": alert.cluster_id, "name": str(alert.cluster)},
            "started_at": _iso(alert.started_at),
            "fired_at": _iso(alert.fired_at),
            "acknowledged_at": _iso(alert.acknowledged_at),
            "acknowledged_by": alert.acknowledged_by.get_username()
            if alert.acknowledged_by
            else None,
            "note": alert.note,
            "resolved_at": _iso(alert.resolved_at),
        },
    }


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """`t=<unix time>,sha256=<hex HMAC-SHA256 of "<t>." + body>`: the time is signed too,
    so a captured request cannot be replayed later with a fresh time."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},sha256={mac.hexdigest()}"


def send(delivery: Delivery) -> None:
    """Send one delivery; any failure, foreseen or not, is raised as DeliveryFailed.

    The deliver task records and retries DeliveryFailed only, so an error that
    escaped here would leave the delivery queued forever with no attempt recorded.
    """
    receiver = delivery.receiver
    try:
        if receiver.kind == Receiver.Kind.WEBHOOK:
            post_webhook(receiver, delivery)
        elif receiver.kind == Receiver.Kind.EMAIL:
            send_email(receiver, delivery.payload)
        elif receiver.kind in Receiver.ROBOTS:
            post_robot(receiver, delivery)
        else:
            raise DeliveryFailed(f"unknown receiver kind {receiver.kind!r}")
    except DeliveryFailed:
        raise
    except Exception as exc:
        raise DeliveryFailed(
            f"sending to {receiver.name} failed: {type(exc).__name__}: {exc}"
        ) from exc


def post_webhook(receiver: Receiver, delivery: Delivery) -> None:
    body = json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True).encode()
    headers = {
        "X-Hangar-Event": delivery.event,
        "X-Hangar-Delivery": str(delivery.pk),
    }
    if receiver.secret:
        headers[SIGNATURE_HEADER] = signature(receiver.secret, int(time.time()), body)
    _post_json(receiver.url, body, headers)


def post_robot(receiver: Receiver, delivery: Delivery) -> None:
    """A group robot answers HTTP 200 even when it refuses a message (bad signature,
    unknown key, rate limit): its JSON answer says so, and that is a failure to retry."""
    url, body = robots.request(receiver, delivery.payload, int(time.time() * 1000))
    answer = _post_json(url, json.dumps(body, ensure_ascii=False).encode(), {})
    refusal = robots.refusal(receiver.kind, answer)
    if refusal:
        raise DeliveryFailed(f"{receiver.get_kind_display()} refused the message: {refusal}")


def _post_json(url: str, body: bytes, headers: dict[str, str]) -> bytes:
    """POST a JSON body; any answer but a 2xx is DeliveryFailed. Returns the answer's body."""
    headers = {"Content-Type": "application/json", "User-Agent": "hangar-alerts/1", **headers}
    if not url.startswith(("http://", "https://")):
        raise DeliveryFailed(f"{url!r} is not an http(s) URL")
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 (scheme checked)
    shown = robots.redacted(url)
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS) as response:  # noqa: S310
            status = response.status
            answer = response.read(64 * 1024)
    except urllib.error.HTTPError as exc:
        raise DeliveryFailed(f"HTTP {exc.code} from {shown}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryFailed(f"could not reach {shown}: {reason}") from exc
    except http.client.HTTPException as exc:  # BadStatusLine, LineTooLong, too many headers
        raise DeliveryFailed(
            f"{shown} did not answer in HTTP: {type(exc).__name__}: {exc}"
        ) from exc
    if not 200 <= status < 300:
        raise DeliveryFailed(f"HTTP {status} from {shown}")
    return answer


def send_email(receiver: Receiver, body: dict) -> None:
    alert = body["alert"]
    subject = (
        f"[Hangar {alert['severity']}] {body['event']}: {alert['rule']['name']} "
        f"on {alert['node']['name']}"
    )
    lines = [
        f"{alert['rule']['name']} is {alert['state']} on {alert['node']['name']} "
        f"(cluster {alert['cluster']['name']}).",
        "",
        f"{alert['summary']}",
        f"Since {alert['started_at']}",
    ]
    if alert["acknowledged_by"]:
        lines.append(f"Acknowledged by {alert['acknowledged_by']}: {alert['note']}")
    lines += ["", f"Open in Hangar: {alert['url']}"]
    try:
        send_mail(subject, "\n".join(lines), None, list(receiver.emails), fail_silently=False)
    except Exception as exc:  # smtplib and socket errors, whatever the backend raises
        raise DeliveryFailed(f"mail to {', '.join(receiver.emails)} failed: {exc}") from exc
