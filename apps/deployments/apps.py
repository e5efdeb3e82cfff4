from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    name = "apps.deployments"
    label = "deployments"

    def ready(self) -> None:
        # The standard Django place to connect signal receivers (inventory's hooks).
        from apps.deployments import receivers  # noqa: F401
