from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    name = "apps.deployments"
    label = "deployments"

    def ready(self) -> None:
        from apps.deployments.services import on_gpu_health_changed
        from apps.inventory.signals import gpu_health_changed

        gpu_health_changed.connect(on_gpu_health_changed, dispatch_uid="deployments-gpu-health")
