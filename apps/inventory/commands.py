"""Commands to a node's agent: Celery tasks on the node's own queue `node.<id>`."""

from __future__ import annotations

from celery.exceptions import TimeoutError as CeleryTimeout
from django.utils.translation import gettext_lazy as _

from apps.core.i18n import lazy_message
from console.celery import app


class NodeUnreachable(Exception):
    """The node's agent did not answer in time."""


def send_to_node(node, verb: str, kwargs: dict | None = None):
    """Queue `hangar.agent.<verb>` for the node; returns the AsyncResult."""
    return app.send_task(f"hangar.agent.{verb}", kwargs=kwargs or {}, queue=f"node.{node.pk}")


def ask_node(node, verb: str, timeout: float = 10.0, kwargs: dict | None = None):
    """Send a command and wait for its answer (for quick, read-only verbs)."""
    result = send_to_node(node, verb, kwargs)
    try:
        return result.get(timeout=timeout)
    except CeleryTimeout:
        result.revoke()
        raise NodeUnreachable(
            lazy_message(
                _("%(node)s did not answer %(verb)s within %(seconds).0f s"),
                node=str(node),
                verb=verb,
                seconds=timeout,
            )
        ) from None
