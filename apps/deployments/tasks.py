from celery import shared_task

from apps.deployments.services import reconcile


@shared_task(name="deployments.reconcile")
def reconcile_task() -> dict:
    return reconcile()
