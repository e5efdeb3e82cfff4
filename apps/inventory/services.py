"""Inventory operations: enrollment, credentials, node states and reported facts."""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from apps.audit import recorder
from apps.core.i18n import lazy_message
from apps.inventory import broker, signals
from apps.inventory.models import GPU, EnrollmentToken, Node, NodeState

ENROLLMENT_PREFIX = "hge_"
CREDENTIAL_PREFIX = "hnc_"
log = logging.getLogger(__name__)
# States the agent's reports may move a node between; the rest are set by people.
AGENT_STATES = {NodeState.PENDING, NodeState.ONLINE, NodeState.DEGRADED, NodeState.OFFLINE}


class EnrollmentRefused(Exception):
    """The enrollment token is unknown, used or expired."""


class NodeRetired(Exception):
    """A retired node takes no more state changes from people."""


def enrollment_command(console_url: str, secret: str) -> str:
    """The exact command an administrator runs on the host to enroll it."""
    return f"hangar-agent enroll --console {console_url.rstrip('/')} --token {secret}"


def move_node(node, state: str, reason: str) -> None:
    """A person's transition (drain, undrain, retire); refused for a retired node."""
    if node.state == NodeState.RETIRED:
        raise NodeRetired(lazy_message(_("%(node)s is retired."), node=str(node)))
    transition_node(node, state, reason, by_person=True)


def retire_node(node: Node, reason: str) -> None:
    """Retire the node for good: its credential stops working and it takes no more work.

    One transaction, the node's row locked: an already-retired node (or one another
    request retires meanwhile) is refused before anything changes, so a refusal
    leaves its credential and the audit log as they were. The API and the page both
    call this."""
    with transaction.atomic():
        current = Node.objects.select_for_update().only("state", "state_reason").get(pk=node.pk)
        node.state, node.state_reason = current.state, current.state_reason
        if node.state == NodeState.RETIRED:
            raise NodeRetired(lazy_message(_("%(node)s is retired."), node=str(node)))
        revoke_node_credential(node)
        transition_node(node, NodeState.RETIRED, reason, by_person=True)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def create_enrollment_token(
    cluster, user, hours: int = 24, description: str = ""
) -> tuple[EnrollmentToken, str]:
    """A one-time token and its secret (only its hash is kept), on the request's record."""
    secret = ENROLLMENT_PREFIX + secrets.token_urlsafe(24)
    token = EnrollmentToken.objects.create(
        cluster=cluster,
        created_by=user,
        description=description,
        token_hash=sha256(secret),
        prefix=secret[len(ENROLLMENT_PREFIX) :][:8],
        expires_at=timezone.now() + timedelta(hours=hours),
    )
    recorder.describe(target=token, changes={"created": recorder.snapshot(token)})
    return token, secret


@transaction.atomic
def enroll_node(
    secret: str, hostname: str, facts: dict, source_address: str | None
) -> tuple[Node, str]:
    """Exchange a one-time token for a new node and its credential."""
    token = EnrollmentToken.objects.select_for_update().filter(token_hash=sha256(secret)).first()
    if token is None or token.used_at is not None or token.expires_at <= timezone.now():
        reason = "unknown" if token is None else ("used" if token.used_at else "expired")
        raise EnrollmentRefused(reason)
    credential = CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
    node = Node.objects.create(
        cluster=token.cluster, hostname=hostname[:255], credential_hash=sha256(credential)
    )
    apply_facts(node, facts)
    token.used_at = timezone.now()
    token.used_by_node = node
    token.save(update_fields=["used_at", "used_by_node"])
    transaction.on_commit(lambda: grant_broker_identity(node))
    recorder.describe(
        action="inventory.enroll",
        target=node,
        changes={
            "cluster": token.cluster.name,
            "enrolled_with": token.prefix,
            "hostname": hostname,
        },
    )
    return node, credential


def node_for_credential(credential: str) -> Node | None:
    if not credential.startswith(CREDENTIAL_PREFIX):
        return None
    node = Node.objects.filter(credential_hash=sha256(credential)).first()
    if node is None or node.credential_revoked_at is not None or node.state == NodeState.RETIRED:
        return None
    return node


def grant_broker_identity(node: Node) -> None:
    """The node's own Redis user; if Redis can't be reached now, beat's sync makes it."""
    try:
        broker.ensure_identity(node)
    except broker.BrokerIdentityError as exc:
        log.warning("%s; the next sync will retry", exc)


def withdraw_broker_identity(node: Node) -> None:
    """Cut the node off the broker now: its user goes and its connections close."""
    try:
        broker.remove_identity(node.pk)
    except broker.BrokerIdentityError as exc:
        log.error("%s; the next sync will retry", exc)


def revoke_node_credential(node: Node) -> None:
    node.credential_revoked_at = timezone.now()
    node.save(update_fields=["credential_revoked_at"])
    recorder.describe(target=node, changes={"agent_access": "revoked"})
    withdraw_broker_identity(node)
    signals.node_credential_revoked.send(sender=Node, node=node)


FACT_FIELDS = (
    "os",
    "kernel",
    "driver_version",
    "cuda_version",
    "cpu_count",
    "memory_total",
    "addresses",
    "simulated",
    "worker_host",
    "accelerator",
)


def apply_facts(
    node: Node, facts: dict, agent_version: str = "", seen_at: datetime | None = None
) -> None:
    """Store what the agent reports about its host and GPUs (validated upstream).

    Writes the fact columns only: `node` may be old (the agent's socket keeps
    the Node it loaded at connect for its whole life, collect_facts waits up to
    30 s for the agent), and a whole-row save would put back the state, cluster,
    labels and revocation it had then, undoing a drain, a move or a revocation.
    """
    changed = []
    for name in FACT_FIELDS:
        if facts.get(name) is not None:
            setattr(node, name, facts[name])
            changed.append(name)
    if agent_version:
        node.agent_version = agent_version[:64]
        changed.append("agent_version")
    if seen_at is not None:
        node.last_seen = seen_at
        changed.append("last_seen")
    if changed:
        node.save(update_fields=changed)
    seen = set()
    for gpu in facts.get("gpus", []):
        seen.add(gpu["index"])
        GPU.objects.update_or_create(
            node=node,
            index=gpu["index"],
            defaults={
                "uuid": gpu.get("uuid") or "",
                "name": gpu.get("name") or "",
                "memory_total": gpu.get("memory_total"),
                "pci_bus_id": gpu.get("pci_bus_id") or "",
                "power_limit": gpu.get("power_limit"),
                "mig_mode": bool(gpu.get("mig_mode")),
                "state": GPU.State.OK,
                "fault": "",
            },
        )
    node.gpus.exclude(index__in=seen).update(state=GPU.State.MISSING, fault="not reported")


def edit_node(node: Node, changes: dict) -> None:
    """A person's edit of name, labels or cluster: only those columns are written
    (the row may have changed since `node` was loaded), and the node's agent
    socket re-reads them (a cluster move changes who sees its telemetry)."""
    for name, value in changes.items():
        setattr(node, name, value)
    node.save(update_fields=list(changes))
    signals.node_edited.send(sender=Node, node=node)


def transition_node(
    node: Node,
    state: str,
    reason: str = "",
    by_person: bool = False,
    judged_at: float | None = None,
) -> bool:
    """Move a node to `state`, recording the transition. Returns False if unchanged.

    A transition made by a person is described on their request's event; one made
    by the system (heartbeats, the offline sweep) is its own event, actor system.
    `judged_at` (Unix time) is when the system decided it, where that may be long
    before the write (kept while the database was away, apps/core/outbox.py).
    """
    if node.state == state:
        return False
    old = node.state
    updated = Node.objects.filter(pk=node.pk, state=old).update(
        state=state, state_reason=reason[:255]
    )
    if not updated:  # someone else moved it first; theirs stands
        node.refresh_from_db(fields=["state", "state_reason"])
        return False
    node.state, node.state_reason = state, reason[:255]
    if state == NodeState.RETIRED:
        withdraw_broker_identity(node)
    changes = {"state": [old, state], "reason": reason}
    if judged_at is not None:
        changes["judged_at"] = datetime.fromtimestamp(judged_at, tz=UTC).isoformat()
    if by_person:
        recorder.describe(target=node, changes=changes)
    else:
        recorder.record("inventory.node-state", target=node, changes=changes)
    signals.node_state_changed.send(sender=Node, node=node, old_state=old)
    return True


def copy_last_seen(last_seen: dict[int, float]) -> int:
    """Copy the live last-seen times (Redis) into Node.last_seen; returns rows changed.

    The beat sweep calls this every few seconds with the times it reads anyway, so
    the stream never writes the database per node for it: at 1,000 nodes those
    single-row UPDATEs were a steady load on Daphne's one database thread
    (docs/benchmarks.md). One bulk UPDATE here replaces them.
    """
    changed = []
    for node in Node.objects.filter(pk__in=list(last_seen)).only("pk", "last_seen"):
        seen = datetime.fromtimestamp(last_seen[node.pk], tz=UTC)
        if node.last_seen is None or seen > node.last_seen:
            node.last_seen = seen
            changed.append(node)
    Node.objects.bulk_update(changed, ["last_seen"], batch_size=1000)
    return len(changed)


def mark_offline_nodes(
    last_seen: dict[int, float], now: float, listening_since: float = 0.0
) -> list[int]:
    """Nodes silent for longer than the grace period go offline.

    Silence counts only from `listening_since`, when the console's web processes
    began to listen (apps/telemetry/listening.py): time when nobody could hear a
    node is not the node's fault."""
    grace = settings.NODE_GRACE_SECONDS
    moved = []
    for node in Node.objects.filter(state__in=[NodeState.ONLINE, NodeState.DEGRADED]):
        seen = last_seen.get(node.pk)
        heard_at = listening_since if seen is None else max(seen, listening_since)
        if now - heard_at > grace:
            silent = "never" if seen is None else f"{now - seen:.0f} s"
            if transition_node(node, NodeState.OFFLINE, f"no heartbeat for {silent}"):
                moved.append(node.pk)
    return moved
