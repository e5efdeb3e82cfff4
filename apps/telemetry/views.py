"""Prometheus exposition of the latest GPU and node gauges, and the gateways'
request numbers per deployment."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpResponse
from django.utils.translation import gettext as _
from drf_spectacular.utils import extend_schema
from rest_framework.decorators import api_view, permission_classes, renderer_classes
from rest_framework.renderers import BaseRenderer

from apps.accounts.permissions import PolicyPermission
from apps.accounts.policy import restrict
from apps.alerts.models import Alert
from apps.alerts.services import firing_counts
from apps.core import outbox
from apps.deployments.models import Deployment, Worker, WorkerState
from apps.gateway import traffic
from apps.gateway.models import Route
from apps.inventory.models import GPU, Node
from apps.telemetry import exposition, live


class PlainTextRenderer(BaseRenderer):
    media_type = "text/plain"
    format = "txt"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        # Only error details reach here; the exposition itself is an HttpResponse.
        return str(data.get("detail", data) if isinstance(data, dict) else data).encode()


@extend_schema(exclude=True)  # Prometheus text format, not part of the JSON API
@api_view(["GET"])
@permission_classes([PolicyPermission])
@renderer_classes([PlainTextRenderer])
def prometheus_metrics(request):
    """Scrape with an API token of a viewer (Prometheus `authorization` bearer).

    `?names=hangar|dcgm|both` picks the GPU families' names for this scrape
    (default HANGAR_METRICS_GPU_NAMES); docs/metrics.md lists every family."""
    names = request.GET.get("names", settings.METRICS_GPU_NAMES)
    if names not in exposition.NAME_SCHEMES:
        return HttpResponse(
            _("names must be one of: %(choices)s.")
            % {"choices": ", ".join(exposition.NAME_SCHEMES)},
            status=400,
            content_type="text/plain; charset=utf-8",
        )
    user = request.user
    nodes = list(restrict(Node.objects.select_related("cluster"), user, "telemetry.view"))
    latest = live.latest_samples([n.pk for n in nodes])
    gpu_rows = list(
        GPU.objects.filter(node__in=nodes).select_related("node").order_by("node", "index")
    )
    gpus = {(g.node_id, g.index): {"name": g.name, "pci_bus_id": g.pci_bus_id} for g in gpu_rows}
    out = exposition.Exposition()
    exposition.node_and_gpu_families(out, nodes, latest, gpus, names)
    exposition.gpu_health_families(out, gpu_rows, names)
    exposition.worker_families(out, _worker_rows(user, nodes, latest))
    alerts = restrict(Alert.objects.all(), user, "alerts.view")
    out.family(
        "hangar_alerts_firing",
        "gauge",
        "Firing (incl. acknowledged) alerts, by severity and rule.",
        (
            (exposition.labels(severity=severity, rule=rule), count)
            for severity, rule, count in firing_counts(alerts)
        ),
    )
    numbers = traffic.current_numbers()
    deployments = restrict(Deployment.objects.select_related("cluster"), user, "deployments.view")
    exposition.traffic_families(
        out,
        "deployment",
        [
            (
                {"deployment": d.name, "id": d.pk, "cluster": d.cluster.name},
                numbers["deployments"][key],
            )
            for d in deployments
            if (key := str(d.pk)) in numbers["deployments"]
        ],
    )
    routes = restrict(Route.objects.all(), user, "gateway.view").values_list("name", flat=True)
    exposition.traffic_families(
        out,
        "route",
        [
            ({"route": name}, numbers["routes"][name])
            for name in routes
            if name in numbers["routes"]
        ],
    )
    exposition.outbox_families(out, outbox.state())
    return HttpResponse(out.text(), content_type="text/plain; version=0.0.4; charset=utf-8")


def _worker_rows(user, nodes, latest: dict[int, dict]) -> list[tuple[dict, dict]]:
    """Each worker of a deployment the user may see, on a node they may see: its state
    and availability from the database, and its agent's latest measurements."""
    reported = {
        w["worker_id"]: w
        for node in nodes
        for w in (latest.get(node.pk) or {}).get("workers") or ()
    }
    visible = restrict(Deployment.objects.all(), user, "deployments.view")
    workers = (
        Worker.objects.filter(deployment__in=visible, node__in=nodes)
        .exclude(state=WorkerState.STOPPED)
        .select_related("deployment", "node")
        .order_by("deployment_id", "slot", "pk")
    )
    rows = []
    for w in workers:
        numbers = dict(reported.get(w.pk) or {})
        numbers["state"] = w.state
        if w.availability is not None:
            numbers["availability"] = w.availability
        lbl = {
            "node": w.node.hostname,
            "worker": w.pk,
            "deployment": w.deployment.name,
            "deployment_id": w.deployment_id,
        }
        rows.append((lbl, numbers))
    return rows


prometheus_metrics.cls.policy = {"get": "telemetry.view"}
