"""Template helpers the console's pages share: translated state and role names,
the user's roles with cluster names, and query strings for paging."""

from __future__ import annotations

from django import template
from django.utils.translation import gettext_lazy as _

from apps.inventory.models import Cluster

register = template.Library()

# Stored values are English identifiers (also in the API); people read these.
STATE_LABELS = {
    "pending": _("pending"),
    "online": _("online"),
    "degraded": _("degraded"),
    "offline": _("offline"),
    "draining": _("draining"),
    "retired": _("retired"),
    "ok": _("ok"),
    "faulted": _("faulted"),
    "missing": _("missing"),
    "healthy": _("healthy"),
    "unknown": _("unknown"),
    "cordoned": _("cordoned"),
    "pass": _("pass"),
    "warn": _("warn"),
    "fail": _("fail"),
    "skip": _("skip"),
    "error": _("error"),
    "active": _("active"),
    "expired": _("expired"),
    "revoked": _("revoked"),
    "unused": _("unused"),
    "used": _("used"),
    "allowed": _("allowed"),
    "denied": _("denied"),
    "failed": _("failed"),
    "user": _("user"),
    "node": _("node"),
    "deployment": _("deployment"),
    "everywhere": _("everywhere"),
    "cluster": _("cluster"),
    "system": _("system"),
    "anonymous": _("anonymous"),
    "draft": _("draft"),
    "running": _("running"),
    "stopped": _("stopped"),
    "idle": _("idle"),
    "rolling": _("rolling"),
    "fetching": _("fetching"),
    "verifying": _("verifying"),
    "starting": _("starting"),
    "unhealthy": _("unhealthy"),
    "crashloop": _("crash loop"),
    "stopping": _("stopping"),
    "ready": _("ready"),
    "firing": _("firing"),
    "acknowledged": _("acknowledged"),
    "resolved": _("resolved"),
    "info": _("info"),
    "warning": _("warning"),
    "critical": _("critical"),
}

ROLE_LABELS = {
    "viewer": _("Viewer"),
    "operator": _("Operator"),
    "model-manager": _("Model manager"),
    "auditor": _("Auditor"),
    "admin": _("Administrator"),
    "system-admin": _("System administrator"),
    "security-admin": _("Security administrator"),
    "audit-admin": _("Audit administrator"),
    "consumer": _("Consumer"),
}


@register.filter
def state_label(value) -> str:
    return STATE_LABELS.get(value, value)


@register.filter
def role_label(value) -> str:
    return ROLE_LABELS.get(value, value)


@register.simple_tag
def js_labels() -> dict:
    """The state names live.js writes into the page, in the page's language."""
    return {key: str(label) for key, label in STATE_LABELS.items()}


@register.simple_tag
def user_roles(rights: dict) -> list[tuple[str, str | None]]:
    """[(role label, cluster name or None for everywhere)] for the user menu."""
    roles: list[tuple[str, str | None]] = [(role_label(r), None) for r in rights.get("global", [])]
    scoped = rights.get("clusters") or {}
    if scoped:
        names = dict(Cluster.objects.filter(pk__in=scoped).values_list("pk", "name"))
        for cluster_id, cluster_roles in scoped.items():
            name = names.get(int(cluster_id), f"#{cluster_id}")
            roles += [(role_label(r), name) for r in cluster_roles]
    return roles


@register.simple_tag(takes_context=True)
def query_with(context, **changes) -> str:
    """The current query string with some parameters replaced (for pagers)."""
    params = context["request"].GET.copy()
    for key, value in changes.items():
        if value in (None, ""):
            params.pop(key, None)
        else:
            params[key] = value
    encoded = params.urlencode()
    return f"?{encoded}" if encoded else "?"


@register.simple_tag(takes_context=True)
def nav_class(context, prefix: str) -> str:
    path = context["request"].path
    active = path == "/" if prefix == "/" else path.startswith(prefix)
    return "active" if active else ""
