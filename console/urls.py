from django.urls import include, path
from django.views.decorators.http import require_safe
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from apps.accounts.api.views import MeView
from apps.accounts.permissions import public_view
from apps.core import views as core
from apps.gateway.api import views as gateway
from apps.inventory.api.views import EnrollAgentView
from apps.telemetry.views import prometheus_metrics
from console.api import router

handler400 = "apps.core.errors.bad_request"
handler403 = "apps.core.errors.permission_denied"
handler404 = "apps.core.errors.not_found"
handler500 = "apps.core.errors.server_error"

api_v1 = [
    path("", core.ApiRootView.as_view(), name="api-root"),
    path("me/", MeView.as_view(), name="me"),
    path("agent/enroll/", EnrollAgentView.as_view(), name="agent-enroll"),
    path("gateway-policy/", gateway.GatewayPolicyView.as_view(), name="gateway-policy"),
    path("open-routes/", gateway.OpenRoutesView.as_view(), name="open-routes"),
    path("usage/", gateway.UsageView.as_view(), name="usage"),
    path("usage/energy/", gateway.EnergyView.as_view(), name="usage-energy"),
    *router.urls,
]

urlpatterns = [
    path("healthz", require_safe(core.healthz), name="healthz"),
    path("metrics", prometheus_metrics, name="metrics"),
    # Namespaced so API route names ("api:node-list") never shadow page names ("node-list").
    path("api/v1/", include((api_v1, "api"), namespace="api")),
    path("api/schema/", public_view(SpectacularAPIView.as_view()), name="schema"),
    path(
        "api/docs/",
        public_view(SpectacularSwaggerView.as_view(url_name="schema")),
        name="swagger-ui",
    ),
    path("", include("apps.accounts.urls")),
    path("", include("apps.inventory.urls")),
    path("", include("apps.audit.urls")),
    path("", include("apps.alerts.urls")),
    path("", include("apps.registry.urls")),
    path("", include("apps.deployments.urls")),
    path("", include("apps.gateway.urls")),
]
