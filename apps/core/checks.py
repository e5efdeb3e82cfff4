"""Deployment checks of our own, shown by `manage.py check --deploy`."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import Warning, register


@register(deploy=True)
def redis_requires_authentication(app_configs, **kwargs):
    """The console's Redis is its message bus: it must not be open to whoever reaches it."""
    if urlsplit(settings.REDIS_URL).password:
        return []
    return [
        Warning(
            "HANGAR_REDIS_URL has no password: anyone who reaches that Redis controls "
            "the console's queues, live telemetry and browser channels.",
            hint="Give the console an ACL user (docs/agent.md, 'The broker') and put it "
            "in the URL: redis://hangar:PASSWORD@host:6379/0.",
            id="hangar.W001",
        )
    ]
