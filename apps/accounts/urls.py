from django.urls import path

from apps.accounts import pages, views

urlpatterns = [
    path("login/", views.login_view, name="login"),
    path("logout/", views.logout_view, name="logout"),
    path("i18n/setlang/", pages.set_language, name="set_language"),
    path("tokens/", pages.api_tokens, name="api-tokens"),
    path("tokens/<int:pk>/revoke/", pages.api_token_revoke, name="api-token-revoke"),
    path("users/", pages.user_list, name="user-list"),
    path("users/new/", pages.user_create, name="user-create"),
    path("users/<int:pk>/deactivate/", pages.user_deactivate, name="user-deactivate"),
    path("users/bindings/", pages.binding_create, name="binding-create"),
    path("users/bindings/<int:pk>/delete/", pages.binding_delete, name="binding-delete"),
]
