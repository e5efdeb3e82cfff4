from django.urls import path

from apps.inventory import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("nodes/", views.node_list, name="node-list"),
    path("nodes/<int:pk>/", views.node_detail, name="node-detail"),
    path("nodes/<int:pk>/drain/", views.node_drain, name="node-drain"),
    path("nodes/<int:pk>/undrain/", views.node_undrain, name="node-undrain"),
    path("nodes/<int:pk>/gpus/<int:index>/cordon/", views.gpu_cordon, name="gpu-cordon"),
    path("nodes/<int:pk>/gpus/<int:index>/uncordon/", views.gpu_uncordon, name="gpu-uncordon"),
    path("nodes/<int:pk>/preflight/", views.node_preflight, name="node-preflight"),
    path(
        "nodes/<int:pk>/preflight/override/",
        views.node_preflight_override,
        name="node-preflight-override",
    ),
    path("nodes/<int:pk>/retire/", views.node_retire, name="node-retire"),
    path(
        "nodes/<int:pk>/revoke-credential/",
        views.node_revoke_credential,
        name="node-revoke-credential",
    ),
    path("enroll/", views.enrollment, name="enrollment"),
]
