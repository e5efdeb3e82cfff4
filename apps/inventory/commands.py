"""Commands to a node's agent: Celery tasks on the node's own queue `node.<id>`.

The queue, its bookkeeping and the results live under the node's key prefix
(apps/inventory/broker.py), where only that node's broker identity and the
console can reach them. The console publishes with a connection that carries
the prefix, and reads answers itself: a JSON result under the prefix, checked
against the protocol before anyone uses it (agents/protocol.py), never
unpickled and never trusted for more than its shape.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis
from django.utils.translation import gettext_lazy as _

from agents.protocol import ProtocolError, validate_command_answer
from apps.core.i18n import lazy_message
from apps.inventory import broker
from console.celery import app

RESULT_KEY = "celery-task-meta-"


class NodeUnreachable(Exception):
    """The node's agent did not answer in time."""


class BadAnswer(ProtocolError):
    """The node's agent answered something that is not a valid answer to the command."""


def send_to_node(node, verb: str, kwargs: dict | None = None, **options: Any):
    """Queue `hangar.agent.<verb>` on the node's own queue; returns the task id."""
    connection = app.connection_for_write(
        transport_options={"global_keyprefix": broker.key_prefix(node.pk)}
    )
    with connection:
        result = app.send_task(
            f"hangar.agent.{verb}",
            kwargs=kwargs or {},
            queue=broker.node_queue(node.pk),
            connection=connection,
            **options,
        )
    return result.id


def ask_node(node, verb: str, timeout: float = 10.0, kwargs: dict | None = None):
    """Send a command and wait for its answer (for quick, read-only verbs).

    The command expires with the wait, so an agent that comes back later does not
    run a question nobody waits for any more.
    """
    task_id = str(uuid.uuid4())
    key = broker.key_prefix(node.pk) + RESULT_KEY + task_id
    client = broker.admin_client()
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(key)  # before sending, so the answer can't slip past
        send_to_node(node, verb, kwargs, task_id=task_id, expires=timeout)
        raw = _wait_for_message(pubsub, timeout)
        client.delete(key)
    except redis.RedisError as exc:
        raise NodeUnreachable(
            lazy_message(
                _("Cannot reach the broker for %(node)s: %(error)s"), node=str(node), error=str(exc)
            )
        ) from None
    finally:
        pubsub.close()
    if raw is None:
        raise NodeUnreachable(
            lazy_message(
                _("%(node)s did not answer %(verb)s within %(seconds).0f s"),
                node=str(node),
                verb=verb,
                seconds=timeout,
            )
        )
    return read_answer(verb, raw)


def _wait_for_message(pubsub, timeout: float) -> bytes | None:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        message = pubsub.get_message(timeout=min(left, 1.0))
        if message is not None and message.get("type") == "message":
            return message["data"]
    return None


def read_answer(verb: str, raw: bytes | str) -> Any:
    """A Celery result stored by an agent, as JSON, checked against the protocol."""
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadAnswer(lazy_message(_("The answer to %(verb)s is not JSON."), verb=verb)) from None
    if not isinstance(meta, dict) or meta.get("status") not in ("SUCCESS", "FAILURE"):
        raise BadAnswer(
            lazy_message(_("The answer to %(verb)s is not a finished task result."), verb=verb)
        )
    if meta["status"] == "FAILURE":
        failure = meta.get("result") if isinstance(meta.get("result"), dict) else {}
        kind = str(failure.get("exc_type", "error"))[:100]
        message = str(failure.get("exc_message", ""))[:300]
        raise BadAnswer(
            lazy_message(
                _("%(verb)s failed on the node: %(error)s"), verb=verb, error=f"{kind}: {message}"
            )
        )
    try:
        return validate_command_answer(verb, meta.get("result"))
    except ProtocolError as exc:
        raise BadAnswer(
            lazy_message(_("The answer to %(verb)s is invalid: %(error)s"), verb=verb, error=exc)
        ) from None
