"""The append-only, hash-chained audit log.

Each event stores the hash of the one before it; `manage.py audit verify` walks
the chain. The ORM refuses updates and deletes so that no code path in Hangar
can rewrite history; archiving (apps/audit/archive.py) is the one exception and
goes around the ORM on purpose.
"""

from __future__ import annotations

from django.db import models


class AuditImmutable(Exception):
    """Raised on an attempt to change or delete an audit event."""


class AuditEventQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AuditImmutable("audit events cannot be changed")

    def delete(self):
        raise AuditImmutable("audit events cannot be deleted")

    def _raw_delete(self, using):
        raise AuditImmutable("audit events cannot be deleted")


class AuditEvent(models.Model):
    class ActorType(models.TextChoices):
        USER = "user"
        NODE = "node"
        SYSTEM = "system"
        ANONYMOUS = "anonymous"

    class Outcome(models.TextChoices):
        ALLOWED = "allowed"
        DENIED = "denied"
        FAILED = "failed"

    seq = models.BigIntegerField(unique=True)
    time = models.DateTimeField(db_index=True)
    actor_type = models.CharField(max_length=16, choices=ActorType.choices)
    actor_id = models.CharField(max_length=64, blank=True, default="")
    actor_name = models.CharField(max_length=255, blank=True, default="")
    source_address = models.GenericIPAddressField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True, default="")
    action = models.CharField(max_length=100, db_index=True)
    target_type = models.CharField(max_length=64, blank=True, default="")
    target_id = models.CharField(max_length=64, blank=True, default="")
    target_repr = models.CharField(max_length=255, blank=True, default="")
    changes = models.JSONField(default=dict, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-seq"]
        indexes = [
            models.Index(fields=["actor_type", "actor_name"]),
            models.Index(fields=["target_type", "target_id"]),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} by {self.actor_name or self.actor_type}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AuditImmutable("audit events cannot be changed")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AuditImmutable("audit events cannot be deleted")


class ChainHead(models.Model):
    """The single row holding the newest link; locked while appending."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    last_seq = models.BigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, default="0" * 64)
    # Where the hot chain starts once older events were archived.
    archived_through_seq = models.BigIntegerField(default=0)
    archived_through_hash = models.CharField(max_length=64, default="0" * 64)

    def __str__(self) -> str:
        return f"audit chain head at #{self.last_seq}"


class ArchiveSegment(models.Model):
    """A compressed JSON Lines file holding archived events first_seq..last_seq."""

    path = models.CharField(max_length=500)
    first_seq = models.BigIntegerField()
    last_seq = models.BigIntegerField()
    first_prev_hash = models.CharField(max_length=64)
    last_hash = models.CharField(max_length=64)
    sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["first_seq"]

    def __str__(self) -> str:
        return f"audit archive #{self.first_seq}-#{self.last_seq}"


class ForwardCursor(models.Model):
    """How far the audit chain has been forwarded (one row per destination).

    The hot table is the queue: an event is forwarded from it in seq order, so a
    receiver that is down only delays forwarding and nothing is lost unless the
    events are archived first, which is reported as a gap.
    """

    destination = models.CharField(max_length=32, unique=True)
    forwarded_through_seq = models.BigIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    last_error_at = models.DateTimeField(null=True, blank=True)
    gaps = models.JSONField(default=list)

    def __str__(self) -> str:
        return f"{self.destination} forwarded through #{self.forwarded_through_seq}"
