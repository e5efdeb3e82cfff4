"""Pages: open alerts (acknowledge with a note) and the header's firing count.

Acknowledging calls apps.alerts.services.acknowledge, as the API does; the
request's audit event is described there."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _

from apps.accounts.permissions import requires
from apps.accounts.policy import can, restrict
from apps.alerts import services
from apps.alerts.api.serializers import AcknowledgeSerializer
from apps.alerts.models import Alert, Severity
from apps.audit import recorder
from apps.core.pages import visible_or_404
from apps.inventory.models import Cluster

ALERTS_PER_PAGE = 100


def visible_alerts(user):
    return restrict(Alert.objects.all(), user, "alerts.view")


@requires("alerts.view")
def alert_list(request):
    params = request.GET
    alerts = visible_alerts(request.user).select_related("node", "cluster", "acknowledged_by")
    state = params.get("state", "open")
    if state == "open":
        alerts = alerts.filter(state__in=Alert.OPEN)
    elif state in Alert.State.values:
        alerts = alerts.filter(state=state)
    severity = params.get("severity", "")
    if severity in Severity.values:
        alerts = alerts.filter(severity=severity)
    cluster = params.get("cluster", "")
    if cluster.isdigit():
        alerts = alerts.filter(cluster_id=int(cluster))
    page = Paginator(alerts.order_by("-started_at", "-id"), ALERTS_PER_PAGE).get_page(
        params.get("page")
    )
    acknowledgeable = {
        cid
        for cid in {a.cluster_id for a in page.object_list}
        if can(request.user, "alerts.acknowledge", cid)
    }
    return render(
        request,
        "alerts/list.html",
        {
            "page": page,
            "alerts": page.object_list,
            "acknowledgeable": acknowledgeable,
            "states": Alert.State.values,
            "severities": Severity.values,
            "clusters": restrict(Cluster.objects.all(), request.user, "inventory.view"),
            "filters": {"state": state, "severity": severity, "cluster": cluster},
        },
    )


@requires("alerts.acknowledge", methods=("POST",))
def alert_acknowledge(request, pk: int):
    alert = visible_or_404(Alert.objects.all(), request.user, "alerts.view", pk)
    recorder.describe(target=alert)
    if not can(request.user, "alerts.acknowledge", alert):
        raise PermissionDenied
    body = AcknowledgeSerializer(data=request.POST)
    body.is_valid(raise_exception=False)
    note = body.validated_data.get("note", "") if not body.errors else ""
    try:
        services.acknowledge(alert, request.user, note)
    except ValueError as exc:
        recorder.describe(outcome=recorder.Outcome.FAILED, changes={"reason": str(exc)})
        messages.error(
            request,
            _("Only a firing alert can be acknowledged; this one is %(state)s.")
            % {"state": alert.state},
        )
    else:
        messages.success(request, _("Alert acknowledged: %(alert)s.") % {"alert": alert.rule_name})
    return redirect(request.POST.get("next") or "alert-list")


@requires("alerts.view")
def alert_count(request):
    """The header badge: firing alerts the user may see (htmx polls it)."""
    firing = visible_alerts(request.user).filter(state=Alert.State.FIRING).count()
    return render(request, "alerts/_count.html", {"firing": firing})
