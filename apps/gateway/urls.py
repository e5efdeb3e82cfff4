from django.urls import path

from apps.gateway import pages, views

urlpatterns = [
    path("routes/", views.route_list, name="route-list"),
    path("routes/new/", views.route_create, name="route-create"),
    path("routes/<int:pk>/", views.route_edit, name="route-edit"),
    path("routes/<int:pk>/delete/", views.route_delete, name="route-delete"),
    path("keys/", views.my_keys, name="my-keys"),
    path("keys/all/", views.all_keys, name="all-keys"),
    path("keys/<int:pk>/revoke/", views.key_revoke, name="key-revoke"),
    path("keys/<int:pk>/approve/", pages.key_approve, name="key-approve"),
    path("projects/", pages.project_list, name="project-list"),
    path("projects/new/", pages.project_create, name="project-create"),
    path("projects/<int:pk>/", pages.project_detail, name="project-detail"),
    path("projects/<int:pk>/members/", pages.member_add, name="project-member-add"),
    path("projects/members/<int:pk>/delete/", pages.member_remove, name="project-member-remove"),
    path("projects/<int:pk>/limits/", pages.limit_add, name="project-limit-add"),
    path("limits/<int:pk>/delete/", pages.limit_delete, name="limit-delete"),
    path("policy/", pages.policy, name="gateway-policy"),
    path("usage/", pages.usage, name="usage"),
    path("usage/mine/", pages.my_usage, name="my-usage"),
    path("usage/export/", pages.usage_export, name="usage-export"),
]
