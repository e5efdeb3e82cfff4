from django.urls import path

from apps.gateway import views

urlpatterns = [
    path("routes/", views.route_list, name="route-list"),
    path("routes/new/", views.route_create, name="route-create"),
    path("routes/<int:pk>/", views.route_edit, name="route-edit"),
    path("routes/<int:pk>/delete/", views.route_delete, name="route-delete"),
    path("keys/", views.my_keys, name="my-keys"),
    path("keys/all/", views.all_keys, name="all-keys"),
    path("keys/<int:pk>/revoke/", views.key_revoke, name="key-revoke"),
    path("demo/remove/", views.demo_remove, name="demo-remove"),
]
