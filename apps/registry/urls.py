from django.urls import path

from apps.registry import views

urlpatterns = [
    path("models/", views.model_list, name="model-list"),
    path("models/new/", views.model_create, name="model-create"),
    path("models/versions/", views.version_create, name="version-create"),
    path("models/versions/<int:pk>/retire/", views.version_retire, name="version-retire"),
]
