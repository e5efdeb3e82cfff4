"""The rules Hangar ships with (installed by migrations 0002 and 0006, editable afterwards).

Worker rules watch names the deployments app feeds in (docs/alerts.md): until a
node runs workers they simply never match.
"""

from __future__ import annotations

DEFAULT_RULES: list[dict] = [
    {
        "name": "GPU memory above 90%",
        "metric": "gpu.*.memory_used_percent",
        "comparison": ">",
        "threshold": 90.0,
        "clear_threshold": 85.0,
        "for_seconds": 300,
        "severity": "warning",
        "description": "GPU memory use above 90% for 5 minutes; clears below 85%.",
    },
    {
        "name": "GPU temperature above 85 °C",
        "metric": "gpu.*.temperature",
        "comparison": ">",
        "threshold": 85.0,
        "clear_threshold": 80.0,
        "for_seconds": 120,
        "severity": "critical",
        "description": "GPU temperature above 85 °C for 2 minutes; clears below 80 °C.",
    },
    {
        "name": "GPU XID error",
        "metric": "gpu.*.xid_errors",
        "comparison": ">",
        "threshold": 0.0,
        "for_seconds": 0,
        "severity": "critical",
        "description": "The agent saw an XID critical error since it started.",
    },
    {
        "name": "GPU ECC error",
        "metric": "gpu.*.ecc_errors",
        "comparison": ">",
        "threshold": 0.0,
        "for_seconds": 0,
        "severity": "critical",
        "description": "Uncorrected ECC errors since the driver loaded.",
    },
    {
        "name": "Node offline",
        "metric": "node.offline",
        "comparison": ">=",
        "threshold": 1.0,
        "for_seconds": 0,
        "severity": "critical",
        "description": "The node's agent stopped reporting (HANGAR_NODE_GRACE_SECONDS).",
    },
    {
        "name": "Worker p99 latency above 200 ms",
        "metric": "worker.*.p99_ms",
        "comparison": ">",
        "threshold": 200.0,
        "clear_threshold": 180.0,
        "for_seconds": 300,
        "severity": "warning",
        "description": "p99 request latency above 200 ms for 5 minutes.",
    },
    {
        "name": "Worker error rate above 0.1%",
        "metric": "worker.*.error_rate",
        "comparison": ">",
        "threshold": 0.001,
        "for_seconds": 300,
        "severity": "warning",
        "description": "More than 0.1% of requests failing (error_rate is a fraction) "
        "over 5 minutes.",
    },
    {
        "name": "Worker availability below 99.9%",
        "metric": "worker.*.availability",
        "comparison": "<",
        "threshold": 99.9,
        "for_seconds": 0,
        "severity": "warning",
        "description": "Availability (percent of the last hour ready) below 99.9%.",
    },
    {
        "name": "Deployment 5xx rate above 0.1%",
        "metric": "deployment.*.http_5xx_rate",
        "comparison": ">",
        "threshold": 0.001,
        "for_seconds": 300,
        "severity": "warning",
        "description": "More than 0.1% of the gateway's requests to the deployment answered "
        "with a 5xx status (a fraction) for 5 minutes.",
    },
    {
        "name": "Deployment p99 latency above 200 ms",
        "metric": "deployment.*.latency_p99_ms",
        "comparison": ">",
        "threshold": 200.0,
        "clear_threshold": 180.0,
        "for_seconds": 300,
        "severity": "warning",
        "description": "p99 latency of the gateway's requests to the deployment above "
        "200 ms for 5 minutes; clears below 180 ms.",
    },
    {
        "name": "Worker in crashloop",
        "metric": "worker.*.crashloop",
        "comparison": ">=",
        "threshold": 1.0,
        "for_seconds": 0,
        "severity": "critical",
        "description": "The agent gave up restarting the worker quickly (crashloop).",
    },
]


# Added by migration 0006 (the gateway's request metrics); 0002 installed the rest.
GATEWAY_RULES = ("Deployment 5xx rate above 0.1%", "Deployment p99 latency above 200 ms")


def install_default_rules(rule_model, names: tuple[str, ...] | None = None) -> int:
    """Create the shipped rules (or those of `names`) that do not exist yet (by name);
    returns how many. A later migration names its own, so a rule deleted on purpose
    is not brought back."""
    created = 0
    for fields in DEFAULT_RULES:
        if names is not None and fields["name"] not in names:
            continue
        _rule, new = rule_model.objects.get_or_create(
            name=fields["name"], defaults={**fields, "builtin": True}
        )
        created += new
    return created
