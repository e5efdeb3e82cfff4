"""Prometheus exposition of the latest GPU and node gauges."""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework.decorators import api_view, permission_classes, renderer_classes
from rest_framework.renderers import BaseRenderer

from apps.accounts.permissions import PolicyPermission
from apps.accounts.policy import restrict
from apps.alerts.models import Alert
from apps.alerts.services import firing_counts
from apps.inventory.models import Node
from apps.telemetry import live
from apps.telemetry.series import GPU_METRICS, HOST_METRICS


class PlainTextRenderer(BaseRenderer):
    media_type = "text/plain"
    format = "txt"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        # Only error details reach here; the exposition itself is an HttpResponse.
        return str(data.get("detail", data) if isinstance(data, dict) else data).encode()


def _label(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def exposition(nodes, latest: dict[int, dict]) -> str:
    lines: list[str] = []
    states = [
        f'hangar_node_up{{node="{_label(n.hostname)}",cluster="{_label(n.cluster.name)}",'
        f'state="{n.state}"}} {1 if n.state in ("online", "degraded") else 0}'
        for n in nodes
    ]
    lines += [
        "# HELP hangar_node_up 1 when the node's agent reports, by state.",
        "# TYPE hangar_node_up gauge",
        *states,
    ]
    for metric in GPU_METRICS:
        lines += [f"# TYPE hangar_gpu_{metric} gauge"]
        for node in nodes:
            for gpu in (latest.get(node.pk) or {}).get("gpus", ()):
                value = gpu.get(metric)
                if value is not None:
                    lines.append(
                        f'hangar_gpu_{metric}{{node="{_label(node.hostname)}",'
                        f'gpu="{gpu["index"]}",uuid="{_label(gpu.get("uuid", ""))}"}} {value}'
                    )
    for metric in HOST_METRICS:
        lines += [f"# TYPE hangar_host_{metric} gauge"]
        for node in nodes:
            value = ((latest.get(node.pk) or {}).get("host") or {}).get(metric)
            if value is not None:
                lines.append(f'hangar_host_{metric}{{node="{_label(node.hostname)}"}} {value}')
    return "\n".join(lines) + "\n"


@extend_schema(exclude=True)  # Prometheus text format, not part of the JSON API
@api_view(["GET"])
@permission_classes([PolicyPermission])
@renderer_classes([PlainTextRenderer])
def prometheus_metrics(request):
    """Scrape with an API token of a viewer (Prometheus `authorization` bearer)."""
    nodes = list(restrict(Node.objects.select_related("cluster"), request.user, "telemetry.view"))
    body = exposition(nodes, live.latest_samples([n.pk for n in nodes]))
    alerts = restrict(Alert.objects.all(), request.user, "alerts.view")
    body += "# HELP hangar_alerts_firing Firing (incl. acknowledged) alerts.\n"
    body += "# TYPE hangar_alerts_firing gauge\n" + "".join(
        f'hangar_alerts_firing{{severity="{severity}",rule="{_label(rule)}"}} {count}\n'
        for severity, rule, count in firing_counts(alerts)
    )
    return HttpResponse(body, content_type="text/plain; version=0.0.4")


prometheus_metrics.cls.policy = {"get": "telemetry.view"}
