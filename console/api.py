"""The REST API: every app's viewsets on one router under /api/v1/."""

from rest_framework.routers import SimpleRouter

from apps.accounts.api import views as accounts
from apps.alerts.api import views as alerts
from apps.audit.api import views as audit
from apps.deployments.api import views as deployments
from apps.gateway.api import views as gateway
from apps.inventory.api import views as inventory
from apps.registry.api import views as registry

router = SimpleRouter()
router.register("users", accounts.UserViewSet, basename="user")
router.register("role-bindings", accounts.RoleBindingViewSet, basename="rolebinding")
router.register("tokens", accounts.ApiTokenViewSet, basename="apitoken")
router.register("audit-events", audit.AuditEventViewSet, basename="auditevent")
router.register("clusters", inventory.ClusterViewSet, basename="cluster")
router.register("nodes", inventory.NodeViewSet, basename="node")
router.register("gpus", inventory.GPUViewSet, basename="gpu")
router.register("enrollment-tokens", inventory.EnrollmentTokenViewSet, basename="enrollmenttoken")
router.register("models", registry.ModelViewSet, basename="model")
router.register("model-versions", registry.ModelVersionViewSet, basename="modelversion")
router.register("deployments", deployments.DeploymentViewSet, basename="deployment")
router.register("workers", deployments.WorkerViewSet, basename="worker")
router.register("alert-rules", alerts.AlertRuleViewSet, basename="alertrule")
router.register("alerts", alerts.AlertViewSet, basename="alert")
router.register("silences", alerts.SilenceViewSet, basename="silence")
router.register("receivers", alerts.ReceiverViewSet, basename="receiver")
router.register("alert-deliveries", alerts.DeliveryViewSet, basename="alertdelivery")
router.register("routes", gateway.RouteViewSet, basename="route")
router.register("service-accounts", gateway.ServiceAccountViewSet, basename="serviceaccount")
router.register("consumer-keys", gateway.ConsumerKeyViewSet, basename="consumerkey")
router.register("projects", gateway.ProjectViewSet, basename="project")
router.register("project-members", gateway.ProjectMemberViewSet, basename="projectmember")
router.register("limits", gateway.LimitViewSet, basename="limit")

API_ENDPOINTS = [(basename, prefix) for prefix, _viewset, basename in router.registry]
API_ENDPOINTS.append(("me", "me"))
API_ENDPOINTS += [("gateway-policy", "gateway-policy"), ("usage", "usage")]
API_ENDPOINTS += [("usage-energy", "usage/energy"), ("open-routes", "open-routes")]
