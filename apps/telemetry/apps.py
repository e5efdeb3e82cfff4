from django.apps import AppConfig


class TelemetryConfig(AppConfig):
    name = "apps.telemetry"
    label = "telemetry"

    def ready(self) -> None:
        # The standard Django place to connect signal receivers (inventory's hooks).
        from apps.telemetry import receivers  # noqa: F401
