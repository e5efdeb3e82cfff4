"""The console's Celery app (worker and beat). The agent has its own app."""

import os
import sys

from celery import Celery

from console.config import ConfigError

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

try:
    # Load settings now so a misconfiguration ends with one line, not a traceback.
    from django.conf import settings

    settings.INSTALLED_APPS  # noqa: B018
except ConfigError as exc:
    sys.exit(f"hangar: configuration error: {exc}")

app = Celery("hangar")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(
    [
        "apps.core",
        "apps.inventory",
        "apps.telemetry",
        "apps.audit",
        "apps.registry",
        "apps.deployments",
        "apps.alerts",
        "apps.gateway",
    ]
)
