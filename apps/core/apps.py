from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "apps.core"
    label = "core"

    def ready(self) -> None:
        # Bind shared tasks to the console's Celery app in every process
        # (Daphne, manage.py), not only in the Celery worker.
        import console.celery  # noqa: F401
        from apps.core import checks  # noqa: F401 (registers the deploy checks)
