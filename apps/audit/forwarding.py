"""Forward every audit event, in order, to a central collector (docs/identity.md).

The hot table is the queue. Each destination has a cursor (`ForwardCursor`): the
events after it are sent oldest first and the cursor moves only past events the
receiver took. Writing an event never waits on the network: a commit only asks
a Celery worker to forward (`request_forwarding`), and beat asks again every few
seconds, so a receiver that is down delays forwarding without blocking or losing
a mutation. Delivery is at least once: a connection that breaks after a send but
before the cursor moves sends that event again, and each message carries its
`seq` so a collector can drop the repeat.

If events are archived before they were forwarded (a receiver down for longer
than the hot period), the cursor jumps over them; the jump is a gap, kept on the
cursor and written to the audit log itself as `audit.forward.gap`.

Two formats: syslog RFC 5424 over TCP (octet-counted frames, RFC 6587), with
optional TLS (RFC 5425), or JSON Lines appended to a file for a log shipper.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from datetime import UTC
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.audit.export import jsonl_line
from apps.audit.models import AuditEvent, ChainHead, ForwardCursor

log = logging.getLogger(__name__)

BATCH_EVENTS = 500
CONNECT_SECONDS = 5
# facility authpriv (10): security and authorisation messages (RFC 5424 §6.2.1).
FACILITY = 10
SEVERITY = {"allowed": 5, "denied": 4, "failed": 4}  # notice; warning
# An example private enterprise number, as RFC 5424 itself uses for its SD-IDs.
SD_ID = "hangar@32473"


def destination() -> str:
    return (settings.AUDIT_FORWARD or "").strip().lower()


def request_forwarding() -> None:
    """After the current transaction commits, ask a worker to forward (never here)."""
    if not destination():
        return

    def ask() -> None:
        try:
            from celery import current_app

            current_app.send_task("audit.forward_events")
        except Exception:
            # The broker is down: beat's next round forwards these too.
            log.warning("could not ask for audit forwarding", exc_info=True)

    transaction.on_commit(ask)


def _sd_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def syslog_message(event: AuditEvent, hostname: str | None = None) -> bytes:
    """One event as an RFC 5424 message; the MSG is the event's JSON line."""
    pri = FACILITY * 8 + SEVERITY.get(event.outcome, 5)
    host = (hostname or socket.gethostname() or "-")[:255]
    msgid = "".join(c for c in event.action if 33 <= ord(c) <= 126)[:32] or "-"
    sd = (
        f'[{SD_ID} seq="{event.seq}" outcome="{_sd_value(event.outcome)}" '
        f'hash="{event.hash}" prev="{event.prev_hash}"]'
    )
    timestamp = event.time.astimezone(UTC).isoformat().replace("+00:00", "Z")
    body = jsonl_line(event).rstrip("\n")
    return f"<{pri}>1 {timestamp} {host} hangar - {msgid} {sd} \ufeff{body}".encode()


def frame(message: bytes) -> bytes:
    """Octet counting (RFC 6587 §3.4.1): the message may hold any byte."""
    return str(len(message)).encode() + b" " + message


class SyslogSender:
    def __init__(self) -> None:
        host, _, port = settings.AUDIT_SYSLOG_ADDRESS.rpartition(":")
        self.address = (host.strip("[]") or "127.0.0.1", int(port))
        self.sock = None

    def __enter__(self):
        sock = socket.create_connection(self.address, timeout=CONNECT_SECONDS)
        if settings.AUDIT_SYSLOG_TLS:
            context = ssl.create_default_context(cafile=settings.AUDIT_SYSLOG_CA or None)
            sock = context.wrap_socket(sock, server_hostname=self.address[0])
        self.sock = sock
        return self

    def send(self, event: AuditEvent) -> None:
        self.sock.sendall(frame(syslog_message(event)))

    def __exit__(self, *exc) -> None:
        if self.sock is not None:
            self.sock.close()


class FileSender:
    def __init__(self) -> None:
        self.path = Path(settings.AUDIT_FORWARD_FILE)
        self.handle = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a", encoding="utf-8")
        return self

    def send(self, event: AuditEvent) -> None:
        self.handle.write(jsonl_line(event))

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()


SENDERS = {"syslog": SyslogSender, "file": FileSender}


def forward_events(batch: int = BATCH_EVENTS) -> int:
    """Send the events after the cursor, oldest first; returns how many were sent.

    One forwarder at a time per destination (the cursor row is locked; another
    finds it locked and leaves). A failure keeps the cursor at the last event the
    receiver took and is remembered on the cursor for the status page and logs.
    """
    name = destination()
    if name not in SENDERS:
        return 0
    ForwardCursor.objects.get_or_create(destination=name)
    sent = 0
    with transaction.atomic():
        cursor = (
            ForwardCursor.objects.select_for_update(skip_locked=True)
            .filter(destination=name)
            .first()
        )
        if cursor is None:
            return 0
        _note_gap(cursor)
        events = list(
            AuditEvent.objects.filter(seq__gt=cursor.forwarded_through_seq).order_by("seq")[:batch]
        )
        if not events:
            return 0
        try:
            with SENDERS[name]() as sender:
                for event in events:
                    sender.send(event)
                    cursor.forwarded_through_seq = event.seq
                    sent += 1
        except OSError as error:
            cursor.last_error = f"{type(error).__name__}: {error}"[:1000]
            cursor.last_error_at = timezone.now()
            log.warning(
                "audit forwarding to %s stopped after #%s: %s",
                name,
                cursor.forwarded_through_seq,
                error,
            )
        else:
            cursor.last_error = ""
        cursor.save()
    return sent


def _note_gap(cursor: ForwardCursor) -> None:
    """Archived events the cursor never reached: skip them, and say so."""
    head = ChainHead.objects.filter(id=1).first()
    archived = head.archived_through_seq if head else 0
    if archived <= cursor.forwarded_through_seq:
        return
    gap = {"first_seq": cursor.forwarded_through_seq + 1, "last_seq": archived}
    cursor.gaps = [*cursor.gaps, gap]
    cursor.forwarded_through_seq = archived
    cursor.save(update_fields=["gaps", "forwarded_through_seq"])
    from apps.audit.recorder import record

    record("audit.forward.gap", changes={"destination": cursor.destination, **gap})


def forwarding_state() -> list[dict]:
    """Per destination: how far forwarding got, the backlog, the last error, the gaps."""
    head = ChainHead.objects.filter(id=1).first()
    last = head.last_seq if head else 0
    return [
        {
            "destination": c.destination,
            "forwarded_through_seq": c.forwarded_through_seq,
            "behind": max(last - c.forwarded_through_seq, 0),
            "last_error": c.last_error,
            "last_error_at": c.last_error_at,
            "gaps": c.gaps,
        }
        for c in ForwardCursor.objects.order_by("destination")
    ]
