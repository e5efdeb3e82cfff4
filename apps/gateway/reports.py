"""Usage reports from UsageMinute and EnergyMinute, aggregated in SQL.

One set of functions serves the usage pages, the CSV export and the REST API,
so the three always show the same numbers to the same people:

- `usage_visible_to(user)`: admins (`projects.manage`) every row; a project's
  owners its rows; everyone their own (the rows of keys they own).
- `totals` (grouped by project, user, key, route or deployment, largest first:
  the top consumers) and `series` (the same, per time bucket, for the charts).
- `energy_by_project`: each deployment's joules and GPU-seconds of a minute split
  among projects by their share of that minute's tokens on it; minutes without
  requests are "idle", charged to nobody (docs/limits.md).
- `limits_with_use`: each limit against what was used in its current window
  (the gateways' windows: apps.gateway.proxy.limits.Windows).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis
from django.conf import settings
from django.db import connection
from django.db.models import F, Q, QuerySet, Sum
from django.db.models.functions import TruncDay, TruncHour, TruncMinute
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext_lazy as _

from apps.core.i18n import lazy_message
from apps.gateway import projects, usage
from apps.gateway.models import EnergyMinute, Limit, Project, UsageMinute
from apps.gateway.proxy.limits import Windows

# The range a report covers when none is given, and the longest one allowed: a
# year of minute rows is what an appliance keeps (docs/limits.md).
DEFAULT_RANGE = timedelta(hours=24)
MAX_RANGE = timedelta(days=366)
RANGES = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}
RANGES["30d"] = timedelta(days=30)

# Buckets by range: about 60 to 720 points per chart line.
BUCKETS = (
    (timedelta(hours=3), "minute", TruncMinute),
    (timedelta(days=3), "hour", TruncHour),
    (MAX_RANGE, "day", TruncDay),
)

# group name -> the columns that name a group (the first non-empty one labels it)
GROUPS: dict[str, tuple[str, ...]] = {
    "project": ("project__name",),
    "user": ("user__username", "service_account__name"),
    "key": ("key__prefix", "key__name"),
    "route": ("route",),
    "deployment": ("deployment__name",),
}
SERIES_LINES = 8  # the largest groups get a line each; the rest one "other" line
SUMS = ("requests", "prompt_tokens", "completion_tokens", "streams", "first_token_ms")
SUMS += ("duration_ms", "queued_ms")


class ReportRefused(ValueError):
    """A report asked for badly; str() says what to change."""


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    bucket: str

    @property
    def trunc(self):
        return next(t for _limit, name, t in BUCKETS if name == self.bucket)


def window_from(params, now: datetime | None = None) -> Window:
    """`range` (1h, 24h, 7d, 30d) or `start`/`end` (ISO 8601); the bucket follows the length."""
    now = now or timezone.now()
    end = _instant(params.get("end"), "end") or now
    if params.get("start"):
        start = _instant(params["start"], "start")
    else:
        chosen = params.get("range") or ""
        if chosen and chosen not in RANGES:
            raise ReportRefused(
                lazy_message(_("Choose a range of %(choices)s."), choices=", ".join(RANGES))
            )
        start = end - RANGES.get(chosen, DEFAULT_RANGE)
    if start >= end:
        raise ReportRefused(_("A report's start comes before its end."))
    if end - start > MAX_RANGE:
        raise ReportRefused(_("A report covers at most 366 days."))
    bucket = next(name for limit, name, _t in BUCKETS if end - start <= limit)
    return Window(start, end, bucket)


def _instant(text, name: str) -> datetime | None:
    if not text:
        return None
    try:
        value = parse_datetime(str(text))
    except ValueError:
        value = None
    if value is None:
        raise ReportRefused(
            lazy_message(_("%(name)s is not a time: write it as 2026-12-01T08:00:00Z."), name=name)
        )
    return value if timezone.is_aware(value) else timezone.make_aware(value, UTC)


# --- who sees which rows ---------------------------------------------------------------


def own_usage(user) -> Q:
    return Q(user=user) | Q(key__user=user)


def usage_visible_to(user) -> QuerySet:
    rows = UsageMinute.objects.all()
    if projects.manages_projects(user):
        return rows
    owned = projects.owned_project_ids(user)
    return rows.filter(own_usage(user) | Q(project__in=owned))


def filtered(rows: QuerySet, params) -> QuerySet:
    """Narrow by project (name), user (username), key (prefix or id), route and
    deployment (name or id)."""
    if params.get("project"):
        rows = rows.filter(project__name=params["project"])
    if params.get("user"):
        rows = rows.filter(user__username=params["user"])
    key = str(params.get("key") or "")
    if key:
        rows = rows.filter(key_id=int(key)) if key.isdigit() else rows.filter(key__prefix=key)
    if params.get("route"):
        rows = rows.filter(route=params["route"])
    deployment = str(params.get("deployment") or "")
    if deployment:
        rows = (
            rows.filter(deployment_id=int(deployment))
            if deployment.isdigit()
            else rows.filter(deployment__name=deployment)
        )
    return rows


def group_of(params) -> str:
    group = params.get("group_by") or "project"
    if group not in GROUPS:
        raise ReportRefused(
            lazy_message(_("Group by one of %(choices)s."), choices=", ".join(GROUPS))
        )
    return group


def in_window(rows: QuerySet, window: Window) -> QuerySet:
    return rows.filter(minute__gte=window.start, minute__lt=window.end)


# --- totals and series ------------------------------------------------------------------


def _label(row: dict, group: str) -> str:
    columns = GROUPS[group]
    if group == "key":
        prefix, name = row.get("key__prefix"), row.get("key__name")
        return f"{name} (hk-{prefix})" if prefix else "—"
    if group == "user" and not row.get("user__username") and row.get("service_account__name"):
        return f"service:{row['service_account__name']}"
    return str(row.get(columns[0]) or "—")


def totals(rows: QuerySet, group: str) -> list[dict]:
    """One line per group, the largest (tokens, then requests) first: the top consumers."""
    aggregated = (
        rows.values(*GROUPS[group])
        .annotate(**{f"sum_{name}": Sum(name) for name in SUMS})
        .annotate(errors=Sum("requests", filter=~Q(status="2xx")))
        .order_by()
    )
    lines = []
    for row in aggregated:
        sums = {name: row[f"sum_{name}"] or 0 for name in SUMS}
        requests, streams = sums["requests"], sums["streams"]
        lines.append(
            {
                "group": _label(row, group),
                "requests": requests,
                "errors": row["errors"] or 0,
                "prompt_tokens": sums["prompt_tokens"],
                "completion_tokens": sums["completion_tokens"],
                "tokens": sums["prompt_tokens"] + sums["completion_tokens"],
                # Means, from sums: first token over streams, the rest over requests.
                "mean_first_token_ms": round(sums["first_token_ms"] / streams) if streams else None,
                "mean_duration_ms": round(sums["duration_ms"] / requests) if requests else None,
                "mean_queued_ms": round(sums["queued_ms"] / requests) if requests else None,
            }
        )
    lines.sort(key=lambda line: (-line["tokens"], -line["requests"], line["group"]))
    return lines


def series(rows: QuerySet, group: str, window: Window) -> dict:
    """Tokens and requests per bucket and group, for uPlot: shared times, one line per group.

    The SERIES_LINES largest groups get their own line, the rest are summed as "other".
    """
    per_bucket = (
        rows.annotate(bucket=window.trunc("minute"))
        .values("bucket", *GROUPS[group])
        .annotate(
            bucket_tokens=Sum(F("prompt_tokens") + F("completion_tokens")),
            bucket_requests=Sum("requests"),
        )
        .order_by("bucket")
    )
    times: list[datetime] = []
    lines: dict[str, dict[datetime, list[int]]] = {}
    for row in per_bucket:
        if not times or times[-1] != row["bucket"]:
            times.append(row["bucket"])
        cell = lines.setdefault(_label(row, group), {}).setdefault(row["bucket"], [0, 0])
        cell[0] += row["bucket_tokens"] or 0
        cell[1] += row["bucket_requests"] or 0
    ranked = sorted(lines, key=lambda name: -sum(c[0] for c in lines[name].values()))
    kept, rest = ranked[:SERIES_LINES], ranked[SERIES_LINES:]
    if rest:
        other: dict[datetime, list[int]] = {}
        for name in rest:
            for t, (tokens, requests) in lines[name].items():
                cell = other.setdefault(t, [0, 0])
                cell[0] += tokens
                cell[1] += requests
        lines[str(_("other"))] = other
        kept.append(str(_("other")))
    return {
        "bucket": window.bucket,
        "times": [t.isoformat() for t in times],
        "lines": [
            {
                "group": name,
                "tokens": [lines[name].get(t, [0, 0])[0] for t in times],
                "requests": [lines[name].get(t, [0, 0])[1] for t in times],
            }
            for name in kept
        ],
    }


def report(user, params, now: datetime | None = None) -> dict:
    """The usage report the page, the CSV and the API share."""
    window = window_from(params, now)
    group = group_of(params)
    rows = in_window(filtered(usage_visible_to(user), params), window)
    return {
        "start": window.start.isoformat(),
        "end": window.end.isoformat(),
        "bucket": window.bucket,
        "group_by": group,
        "totals": totals(rows, group),
        "series": series(rows, group, window),
    }


CSV_COLUMNS = ("group", "requests", "errors", "prompt_tokens", "completion_tokens", "tokens")
CSV_COLUMNS += ("mean_first_token_ms", "mean_duration_ms", "mean_queued_ms")


def report_csv(data: dict) -> str:
    """The report's totals, one line per group, and its time series below them."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["start", data["start"], "end", data["end"], "group_by", data["group_by"]])
    writer.writerow([_csv_safe(c) for c in CSV_COLUMNS])
    for line in data["totals"]:
        writer.writerow([_csv_safe(line[c]) for c in CSV_COLUMNS])
    writer.writerow([])
    writer.writerow(["time", "group", "tokens", "requests"])
    for line in data["series"]["lines"]:
        for t, tokens, requests in zip(
            data["series"]["times"], line["tokens"], line["requests"], strict=True
        ):
            if tokens or requests:
                writer.writerow([t, _csv_safe(line["group"]), tokens, requests])
    return out.getvalue()


def _csv_safe(value):
    """A name starting with = + - @ would be a formula in a spreadsheet: quote it as text."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return "" if value is None else value


# --- energy --------------------------------------------------------------------------

# Per deployment and minute: each project's tokens (prompt + completion) and
# requests, and the minute's totals. A minute's energy goes to projects by their
# share of its tokens; by requests when no request of the minute reported tokens
# (all failed early, say); to nobody ("idle") when it had no request at all.
_ENERGY_SQL = """
WITH used AS (
    SELECT deployment_id, minute, project_id,
           SUM(prompt_tokens + completion_tokens) AS tokens, SUM(requests) AS requests
      FROM {usage}
     WHERE minute >= %s AND minute < %s AND deployment_id IS NOT NULL {deployment_filter}
     GROUP BY deployment_id, minute, project_id
), shared AS (
    SELECT deployment_id, minute, project_id, tokens, requests,
           CASE WHEN SUM(tokens) OVER w > 0 THEN 1.0 * tokens / SUM(tokens) OVER w
                ELSE 1.0 * requests / NULLIF(SUM(requests) OVER w, 0) END AS share
      FROM used WINDOW w AS (PARTITION BY deployment_id, minute)
)
SELECT s.project_id, SUM(e.joules * s.share), SUM(e.gpu_seconds * s.share),
       SUM(s.tokens), SUM(s.requests)
  FROM shared s
  JOIN {energy} e ON e.deployment_id = s.deployment_id AND e.minute = s.minute
 WHERE s.share IS NOT NULL
 GROUP BY s.project_id
"""

_IDLE_SQL = """
SELECT COALESCE(SUM(e.joules), 0), COALESCE(SUM(e.gpu_seconds), 0)
  FROM {energy} e
 WHERE e.minute >= %s AND e.minute < %s {energy_filter}
   AND NOT EXISTS (SELECT 1 FROM {usage} u WHERE u.deployment_id = e.deployment_id
                   AND u.minute = e.minute AND u.requests > 0)
"""

JOULES_PER_KWH = 3_600_000


def energy_by_project(user, params, now: datetime | None = None) -> dict:
    """kWh and GPU-hours per project in the window (the ones `user` may see), and idle.

    Admins see every project, the keys without a project ("no project") and the idle
    line; owners their projects' lines only; others nothing.
    """
    window = window_from(params, now)
    deployment = str(params.get("deployment") or "")
    tables = {"usage": UsageMinute._meta.db_table, "energy": EnergyMinute._meta.db_table}
    args: list = [window.start, window.end]
    usage_filter = energy_filter = ""
    if deployment.isdigit():
        usage_filter, energy_filter = "AND deployment_id = %s", "AND e.deployment_id = %s"
    # One window-function pass shares each minute out (no self-join): about 5.8 s for
    # 30 days of 1M rows on a 2-core test machine (docs/limits.md).
    with connection.cursor() as cursor:
        extra = [int(deployment)] if deployment.isdigit() else []
        cursor.execute(
            _ENERGY_SQL.format(
                **tables, deployment_filter=usage_filter, energy_filter=energy_filter
            ),
            [*args, *extra],
        )
        charged = cursor.fetchall()
        cursor.execute(_IDLE_SQL.format(**tables, energy_filter=energy_filter), [*args, *extra])
        idle_joules, idle_gpu_seconds = cursor.fetchone()
    admin = projects.manages_projects(user)
    visible = None if admin else projects.owned_project_ids(user)
    names = dict(Project.objects.values_list("pk", "name"))
    lines = []
    for project_id, joules, gpu_seconds, tokens, requests in charged:
        if project_id is None and not admin:
            continue
        if visible is not None and project_id not in visible:
            continue
        lines.append(
            _energy_line(
                names.get(project_id, str(_("no project"))) if project_id else str(_("no project")),
                joules,
                gpu_seconds,
                kind="project" if project_id else "no-project",
                tokens=int(tokens or 0),
                requests=int(requests or 0),
            )
        )
    lines.sort(key=lambda line: -line["kwh"])
    if admin:
        lines.append(_energy_line(str(_("idle")), idle_joules, idle_gpu_seconds, kind="idle"))
    return {"start": window.start.isoformat(), "end": window.end.isoformat(), "lines": lines}


def _energy_line(name: str, joules, gpu_seconds, kind: str, tokens=0, requests=0) -> dict:
    return {
        "group": name,
        "kind": kind,
        "joules": round(float(joules or 0), 3),
        "kwh": round(float(joules or 0) / JOULES_PER_KWH, 6),
        "gpu_hours": round(float(gpu_seconds or 0) / 3600, 6),
        "tokens": tokens,
        "requests": requests,
    }


# --- limits against use ------------------------------------------------------------------

# The window each ceiling counts in, as the gateway's limit script counts it
# (apps.gateway.proxy.limits.FIELDS): the minute, the day, the week from Monday,
# in the console's time zone (HANGAR_TIME_ZONE).
WINDOW_OF = {
    "requests_per_minute": "minute",
    "tokens_per_minute": "minute",
    "tokens_per_day": "day",
    "tokens_per_week": "week",
    "concurrent_requests": None,
}
# Shown from the gateways' live counters (Redis); the day's and week's use from the
# table, which holds every settled minute.
LIVE_FIELDS = frozenset({"requests_per_minute", "tokens_per_minute", "concurrent_requests"})


def window_bounds(now: datetime) -> dict[str, tuple[datetime, datetime]]:
    """Start and end of the current minute, day and week, as the gateways count them."""
    bounds = Windows(settings.TIME_ZONE).bounds(now.timestamp())
    return {
        name: (datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC))
        for name, (start, end) in bounds.items()
    }


def _rows_of_limit(limit: Limit) -> QuerySet:
    rows = UsageMinute.objects.all()
    if limit.scope == "key":
        rows = rows.filter(key_id=limit.key_id)
    elif limit.scope == "user":
        rows = rows.filter(user_id=limit.user_id)
    else:
        rows = rows.filter(project_id=limit.project_id)
    if limit.route_id:
        rows = rows.filter(route=limit.route.name)
    return rows


def use_of_limit(limit: Limit, now: datetime | None = None) -> dict:
    """Each ceiling of `limit` with the use in its current window and when it resets.

    Per-minute and concurrent use come from the gateways' live counters
    (apps.gateway.usage.live_use) for key, user and project limits; the day's and
    the week's from UsageMinute. Where no live figure can be had (each-member and
    each-key limits, Redis unreachable) the table's number is shown, which lags
    the gateways by up to about a minute, and concurrency is unknown. For
    each-member and each-key limits the figure is the busiest member's or key's.
    """
    now = now or timezone.now()
    bounds = window_bounds(now)
    live = _live_use(limit, now)
    use: dict[str, dict] = {}
    for field, ceiling in limit.values().items():
        window = WINDOW_OF[field]
        used = None
        if field in live:
            used = live[field]["used"]
        elif field.startswith("tokens_"):
            used = _tokens_since(limit, bounds[window][0])
        elif field == "requests_per_minute":
            used = _requests_since(limit, bounds["minute"][0])
        use[field] = {
            "limit": ceiling,
            "used": used,
            "percent": round(100 * used / ceiling, 1) if used is not None and ceiling else None,
            "live": field in live,
            "resets_at": bounds[window][1].isoformat() if window else None,
        }
    return use


def _per_subject(limit: Limit, rows: QuerySet) -> QuerySet | None:
    """For each-member / each-key: the busiest subject's rows are grouped by this column."""
    if limit.scope == "each-member":
        return rows.values("user_id")
    if limit.scope == "each-key":
        return rows.values("key_id")
    return None


def _tokens_since(limit: Limit, start: datetime) -> int:
    rows = _rows_of_limit(limit).filter(minute__gte=start)
    expression = Sum(F("prompt_tokens") + F("completion_tokens"))
    grouped = _per_subject(limit, rows)
    if grouped is not None:
        return max((r["t"] or 0 for r in grouped.annotate(t=expression).order_by()), default=0)
    return rows.aggregate(t=expression)["t"] or 0


def _requests_since(limit: Limit, start: datetime) -> int:
    rows = _rows_of_limit(limit).filter(minute__gte=start)
    grouped = _per_subject(limit, rows)
    if grouped is not None:
        counted = grouped.annotate(n=Sum("requests")).order_by()
        return max((r["n"] or 0 for r in counted), default=0)
    return rows.aggregate(n=Sum("requests"))["n"] or 0


def _live_use(limit: Limit, now: datetime) -> dict:
    """The gateways' per-minute and concurrent figures for this limit, or {} without them."""
    if limit.scope not in ("key", "user", "project"):
        return {}
    try:
        live = usage.live_use(limit, now=now.timestamp())
    except redis.RedisError:
        return {}  # the page still shows the table's numbers
    return {field: value for field, value in live.items() if field in LIVE_FIELDS}


def subject_of(limit: Limit) -> str:
    if limit.project_id:
        return limit.project.name
    if limit.user_id:
        return limit.user.get_username()
    return str(limit.key)


def limits_with_use(limits, now: datetime | None = None) -> list[dict]:
    return [
        {"limit": limit, "subject": subject_of(limit), "use": use_of_limit(limit, now)}
        for limit in limits
    ]
