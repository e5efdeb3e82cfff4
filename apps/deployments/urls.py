from django.urls import path

from apps.deployments import views

urlpatterns = [
    path("deployments/", views.deployment_list, name="deployment-list"),
    path("deployments/new/", views.deployment_create, name="deployment-create"),
    path("deployments/<int:pk>/", views.deployment_detail, name="deployment-detail"),
    path("deployments/<int:pk>/start/", views.deployment_start, name="deployment-start"),
    path("deployments/<int:pk>/stop/", views.deployment_stop, name="deployment-stop"),
    path("deployments/<int:pk>/scale/", views.deployment_scale, name="deployment-scale"),
    path("deployments/<int:pk>/rollout/", views.deployment_rollout, name="deployment-rollout"),
    path("deployments/<int:pk>/rollback/", views.deployment_rollback, name="deployment-rollback"),
    path("deployments/workers/<int:pk>/restart/", views.worker_restart, name="worker-restart"),
]
