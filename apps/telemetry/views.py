"""Prometheus exposition of the latest GPU and node gauges, and the gateways'
request numbers per deployment."""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework.decorators import api_view, permission_classes, renderer_classes
from rest_framework.renderers import BaseRenderer

from apps.accounts.permissions import PolicyPermission
from apps.accounts.policy import restrict
from apps.alerts.models import Alert
from apps.alerts.services import firing_counts
from apps.deployments.models import Deployment
from apps.gateway import traffic
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
    deployments = restrict(
        Deployment.objects.select_related("cluster"), request.user, "deployments.view"
    )
    body += deployment_exposition(deployments, traffic.current_numbers()["deployments"])
    return HttpResponse(body, content_type="text/plain; version=0.0.4")


# (name, help, field of apps/gateway/traffic.py's numbers, factor: ms -> s)
DEPLOYMENT_GAUGES = (
    ("requests_per_second", "Requests/s through the gateways.", "requests_per_s", 1),
    ("http_5xx_ratio", "Share of requests answered with a 5xx status.", "http_5xx_rate", 1),
    ("http_4xx_ratio", "Share of requests answered with a 4xx status.", "http_4xx_rate", 1),
    ("latency_p50_seconds", "Median time to the whole answer.", "latency_p50_ms", 0.001),
    ("latency_p95_seconds", "95th percentile time to the whole answer.", "latency_p95_ms", 0.001),
    ("latency_p99_seconds", "99th percentile time to the whole answer.", "latency_p99_ms", 0.001),
    ("first_token_p50_seconds", "Median time to a stream's first chunk.", "ttft_p50_ms", 0.001),
    ("first_token_p99_seconds", "99th percentile time to first chunk.", "ttft_p99_ms", 0.001),
    ("tokens_per_second", "Prompt and completion tokens/s.", "tokens_per_s", 1),
    ("in_flight", "Requests in flight now.", "in_flight", 1),
)


def deployment_exposition(deployments, numbers: dict[str, dict]) -> str:
    """hangar_deployment_* gauges: the gateways' latest window (a few seconds) per deployment."""
    rows = [(d, numbers[str(d.pk)]) for d in deployments if str(d.pk) in numbers]
    lines: list[str] = []
    for name, help_text, field, factor in DEPLOYMENT_GAUGES:
        lines += [f"# HELP hangar_deployment_{name} {help_text}"]
        lines += [f"# TYPE hangar_deployment_{name} gauge"]
        for deployment, window in rows:
            value = window.get(field)
            if value is not None:
                labels = (
                    f'deployment="{_label(deployment.name)}",id="{deployment.pk}",'
                    f'cluster="{_label(deployment.cluster.name)}"'
                )
                lines.append(f"hangar_deployment_{name}{{{labels}}} {value * factor:g}")
    return "\n".join(lines) + "\n"


prometheus_metrics.cls.policy = {"get": "telemetry.view"}
