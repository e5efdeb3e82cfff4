from django.urls import path

from apps.accounts import pages, views
from apps.accounts.sso import views as sso_views

urlpatterns = [
    path("login/", views.login_view, name="login"),
    path("logout/", views.logout_view, name="logout"),
    path("login/code/", views.login_code_view, name="login-code"),
    path("account/password/", views.password_change, name="password-change"),
    path("account/second-factor/", views.second_factor, name="second-factor"),
    path("security/policy/", views.security_policy, name="security-policy"),
    path("sso/cas/login/", sso_views.cas_login, name="sso-cas-login"),
    path("sso/oidc/login/", sso_views.oidc_login, name="sso-oidc-login"),
    path("sso/oidc/callback/", sso_views.oidc_callback, name="sso-oidc-callback"),
    path("i18n/setlang/", pages.set_language, name="set_language"),
    path("tokens/", pages.api_tokens, name="api-tokens"),
    path("tokens/<int:pk>/revoke/", pages.api_token_revoke, name="api-token-revoke"),
    path("users/", pages.user_list, name="user-list"),
    path("users/new/", pages.user_create, name="user-create"),
    path("users/<int:pk>/deactivate/", pages.user_deactivate, name="user-deactivate"),
    path("users/bindings/", pages.binding_create, name="binding-create"),
    path("users/bindings/<int:pk>/delete/", pages.binding_delete, name="binding-delete"),
]
