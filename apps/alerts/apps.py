from django.apps import AppConfig


class AlertsConfig(AppConfig):
    name = "apps.alerts"
    label = "alerts"

    def ready(self) -> None:
        # The standard Django place to connect signal receivers (inventory's hooks).
        from apps.alerts import receivers  # noqa: F401
