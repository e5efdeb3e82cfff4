"""Reading rolled-up history back for charts and the API."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext as _
from rest_framework.exceptions import ValidationError

from apps.telemetry.models import NodeMetricMinute
from apps.telemetry.series import GPU_METRICS, HOST_METRICS, WORKER_METRICS

SERIES = re.compile(
    rf"^(worker\.\d{{1,12}}\.({'|'.join(WORKER_METRICS)})|"
    rf"gpu\.\d{{1,2}}\.({'|'.join(GPU_METRICS)})|host\.({'|'.join(HOST_METRICS)}))$"
)
MAX_RANGE = timedelta(days=31)


def _time(params, name: str, default: datetime) -> datetime:
    raw = params.get(name)
    if not raw:
        return default
    value = parse_datetime(raw)
    if value is None:
        raise ValidationError({name: _("%(value)r is not an ISO 8601 time.") % {"value": raw}})
    return value if value.tzinfo else timezone.make_aware(value)


def metric_history(node, params) -> dict:
    metric = params.get("metric", "")
    if not SERIES.match(metric):
        raise ValidationError(
            {
                "metric": _(
                    "Use gpu.<index>.<metric>, host.<metric> or worker.<id>.<metric>; "
                    "metrics: %(metrics)s"
                )
                % {"metrics": ", ".join(GPU_METRICS + HOST_METRICS + WORKER_METRICS)}
            }
        )
    now = timezone.now()
    end = _time(params, "to", now)
    start = _time(params, "from", end - timedelta(hours=1))
    if start >= end:
        raise ValidationError({"from": _("from must be before to.")})
    if end - start > MAX_RANGE:
        raise ValidationError({"from": _("Ask for at most 31 days at a time.")})
    rows = (
        NodeMetricMinute.objects.filter(node=node, minute__gte=start, minute__lt=end)
        .order_by("minute")
        .values_list("minute", "series")
    )
    points = [
        {"t": minute.isoformat(), "min": s[metric][0], "mean": s[metric][1], "max": s[metric][2]}
        for minute, s in rows
        if metric in s
    ]
    return {
        "node": node.pk,
        "metric": metric,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "resolution": "1m",
        "points": points,
    }
