from django.apps import AppConfig


class TelemetryConfig(AppConfig):
    name = "apps.telemetry"
    label = "telemetry"

    def ready(self) -> None:
        # The standard Django place to connect signal receivers (inventory's hooks),
        # and to register the ingest's kept writes (apps/core/outbox.py).
        from apps.telemetry import ingest, receivers  # noqa: F401
