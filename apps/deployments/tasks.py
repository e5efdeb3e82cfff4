from celery import shared_task

from apps.deployments.availability import judge_availability
from apps.deployments.services import reconcile


@shared_task(name="deployments.reconcile")
def reconcile_task() -> dict:
    return reconcile()


@shared_task(name="deployments.judge_availability")
def judge_availability_task() -> dict:
    return judge_availability()
