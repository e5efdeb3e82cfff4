"""Report math from rows written straight into UsageMinute and EnergyMinute: totals,
time buckets, the energy split among projects (idle apart), limits against use."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from apps.deployments.models import Deployment
from apps.gateway import reports
from apps.gateway.keys import create_consumer_key
from apps.gateway.models import EnergyMinute, Limit, Project, ServiceAccount, UsageMinute
from tests.deployments.conftest import ready_version

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 12, 2, 10, 30, 20, tzinfo=UTC)  # a Wednesday
T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


@pytest.fixture
def site(make_user, admin_user, cluster):
    version = ready_version()
    deployments = [
        Deployment.objects.create(
            name=name, cluster=cluster, model_version=version, engine="reference", port=9000 + i
        )
        for i, name in enumerate(("llm-a", "llm-b"))
    ]
    physics, history = (Project.objects.create(name=n) for n in ("physics", "history"))
    ann, bob = make_user("ann"), make_user("bob")
    app = ServiceAccount.objects.create(name="library", project=history)
    keys = {
        "ann": create_consumer_key(name="a", days=1, user=ann, all_routes=True, project=physics)[0],
        "bob": create_consumer_key(name="b", days=1, user=bob, all_routes=True, project=history)[0],
        "app": create_consumer_key(
            name="lib", days=1, service_account=app, all_routes=True, project=history
        )[0],
    }
    return {"deployments": deployments, "physics": physics, "history": history, "keys": keys,
            "admin": admin_user, "ann": ann, "bob": bob, "app": app}  # fmt: skip


def row(key, minute: datetime, deployment=None, *, prompt=0, completion=0, requests=1,
        status="2xx", route="chat", **extra) -> UsageMinute:  # fmt: skip
    return UsageMinute.objects.create(
        minute=minute, key=key, user=key.user, service_account=key.service_account,
        project=key.project, route=route, deployment=deployment, status=status,
        requests=requests, prompt_tokens=prompt, completion_tokens=completion, **extra,
    )  # fmt: skip


def test_totals_by_project_user_key_and_route_add_up_every_row(site):
    keys, d = site["keys"], site["deployments"][0]
    row(keys["ann"], T0, d, prompt=100, completion=50, duration_ms=400)
    row(keys["ann"], T0 + timedelta(minutes=1), d, prompt=10, completion=5, duration_ms=200)
    row(keys["ann"], T0 + timedelta(minutes=1), d, requests=2, status="4xx", route="embed")
    row(keys["bob"], T0, d, prompt=1000, completion=1, streams=1, first_token_ms=80)
    row(keys["app"], T0 + timedelta(minutes=3), d, prompt=7, completion=3)
    # Outside the window: not counted.
    row(keys["bob"], T0 - timedelta(days=2), d, prompt=99999)
    params = {"range": "1h"}

    by_project = reports.report(site["admin"], {**params, "group_by": "project"}, now=NOW)
    by_user = reports.report(site["admin"], {**params, "group_by": "user"}, now=NOW)
    by_route = reports.report(site["admin"], {**params, "group_by": "route"}, now=NOW)

    assert [(t["group"], t["tokens"], t["requests"]) for t in by_project["totals"]] == [
        ("history", 1011, 2),
        ("physics", 165, 4),
    ]
    users = {t["group"]: t for t in by_user["totals"]}
    assert set(users) == {"ann", "bob", "service:library"}
    assert users["ann"]["errors"] == 2 and users["ann"]["mean_duration_ms"] == 150
    assert users["bob"]["mean_first_token_ms"] == 80
    assert {t["group"]: t["requests"] for t in by_route["totals"]} == {"chat": 4, "embed": 2}


def test_the_series_has_one_point_per_bucket_and_sums_within_it(site):
    keys = site["keys"]
    row(keys["ann"], T0, prompt=5)
    row(keys["ann"], T0 + timedelta(seconds=0), prompt=6)  # a late report for the same minute
    row(keys["bob"], T0 + timedelta(minutes=2), prompt=7)

    data = reports.report(site["admin"], {"range": "1h", "group_by": "user"}, now=NOW)

    series = data["series"]
    assert series["bucket"] == "minute"
    assert series["times"] == [T0.isoformat(), (T0 + timedelta(minutes=2)).isoformat()]
    lines = {line["group"]: line["tokens"] for line in series["lines"]}
    assert lines == {"ann": [11, 0], "bob": [0, 7]}


@pytest.mark.parametrize(
    ("params", "bucket"),
    [({"range": "1h"}, "minute"), ({"range": "24h"}, "hour"), ({"range": "7d"}, "day"),
     ({"start": "2026-11-01T00:00:00Z", "end": "2026-11-02T00:00:00Z"}, "hour")],
)  # fmt: skip
def test_the_bucket_follows_the_range(params, bucket):
    assert reports.window_from(params, now=NOW).bucket == bucket


@pytest.mark.parametrize(
    ("params", "says"),
    [({"range": "2y"}, "Choose a range"), ({"start": "yesterday"}, "is not a time"),
     ({"start": "2026-12-02T00:00:00Z", "end": "2026-12-01T00:00:00Z"}, "before its end"),
     ({"start": "2020-01-01T00:00:00Z"}, "at most 366 days")],
)  # fmt: skip
def test_a_bad_range_is_refused_with_a_reason(params, says):
    with pytest.raises(reports.ReportRefused, match=says):
        reports.window_from(params, now=NOW)


def test_a_bad_range_is_a_400_in_the_api(admin_api):
    response = admin_api.get("/api/v1/usage/?group_by=colour")
    assert response.status_code == 400 and "Group by one of" in response.json()["detail"]


def test_energy_is_split_by_token_share_and_minutes_without_requests_are_idle(site):
    keys = site["keys"]
    a, b = site["deployments"]
    m1, m2, m3 = (T0 + timedelta(minutes=i) for i in range(3))
    # m1 on a: physics 300 tokens, history 100 (bob 60 + the app 40): 600 J split 3:1.
    row(keys["ann"], m1, a, prompt=200, completion=100)
    row(keys["bob"], m1, a, prompt=60)
    row(keys["app"], m1, a, completion=40)
    EnergyMinute.objects.create(minute=m1, deployment=a, joules=600, gpu_seconds=60)
    # m2 on a: no request at all: idle.
    EnergyMinute.objects.create(minute=m2, deployment=a, joules=360_000, gpu_seconds=120)
    # m3 on b: requests that reported no tokens: split by requests, 1 to 3.
    row(keys["ann"], m3, b, requests=1, status="5xx")
    row(keys["bob"], m3, b, requests=3, status="5xx")
    EnergyMinute.objects.create(minute=m3, deployment=b, joules=400, gpu_seconds=40)
    # Usage on b in m1 does not take a share of a's energy.
    row(keys["bob"], m1, b, prompt=10_000)

    energy = reports.energy_by_project(site["admin"], {"range": "1h"}, now=NOW)

    lines = {line["group"]: line for line in energy["lines"]}
    assert set(lines) == {"physics", "history", "idle"}
    assert lines["physics"]["joules"] == pytest.approx(450 + 100)
    assert lines["history"]["joules"] == pytest.approx(150 + 300)
    assert lines["physics"]["gpu_hours"] == pytest.approx((45 + 10) / 3600, abs=1e-6)
    assert lines["idle"]["joules"] == pytest.approx(360_000)
    assert lines["idle"]["kwh"] == pytest.approx(0.1)
    assert lines["idle"]["kind"] == "idle"
    # Nothing lost, nothing counted twice.
    total = sum(line["joules"] for line in energy["lines"])
    assert total == pytest.approx(600 + 360_000 + 400)
    only_b = reports.energy_by_project(site["admin"], {"range": "1h", "deployment": b.pk}, NOW)
    assert {line["group"]: line["joules"] for line in only_b["lines"]} == {
        "history": pytest.approx(300), "physics": pytest.approx(100), "idle": 0,
    }  # fmt: skip


def test_an_owner_sees_only_their_projects_energy_and_no_idle_line(site, make_user):
    from apps.gateway.models import ProjectMember

    keys, a = site["keys"], site["deployments"][0]
    row(keys["ann"], T0, a, prompt=1)
    row(keys["bob"], T0, a, prompt=1)
    EnergyMinute.objects.create(minute=T0, deployment=a, joules=10)
    EnergyMinute.objects.create(minute=T0 + timedelta(minutes=1), deployment=a, joules=99)
    owner = make_user("dean")
    ProjectMember.objects.create(project=site["physics"], user=owner, role="owner")

    lines = reports.energy_by_project(owner, {"range": "1h"}, now=NOW)["lines"]

    assert [(line["group"], line["joules"]) for line in lines] == [("physics", 5.0)]
    assert reports.energy_by_project(site["ann"], {"range": "1h"}, now=NOW)["lines"] == []


def test_a_day_limit_counts_the_day_and_a_week_limit_the_week_from_monday(site, settings):
    settings.TIME_ZONE = "UTC"
    ann = site["keys"]["ann"]
    row(ann, datetime(2026, 12, 2, 0, 0, tzinfo=UTC), prompt=100)  # today
    row(ann, datetime(2026, 12, 1, 23, 59, tzinfo=UTC), prompt=20)  # yesterday, this week
    row(ann, datetime(2026, 11, 30, 0, 1, tzinfo=UTC), prompt=3)  # Monday
    row(ann, datetime(2026, 11, 29, 23, 59, tzinfo=UTC), prompt=5000)  # last week
    row(ann, NOW.replace(second=0), prompt=1, completion=1)  # this minute
    limit = Limit.objects.create(
        scope="key", key=ann, tokens_per_day=1000, tokens_per_week=1000,
    )  # fmt: skip

    use = reports.use_of_limit(limit, now=NOW)

    assert use["tokens_per_day"]["used"] == 102
    assert use["tokens_per_week"] == {
        "limit": 1000, "used": 125, "percent": 12.5, "live": False,
        "resets_at": "2026-12-07T00:00:00+00:00",
    }  # fmt: skip


def test_the_day_is_the_console_time_zones_day_as_at_the_gateway(site, settings):
    settings.TIME_ZONE = "Asia/Shanghai"  # UTC+8: 2 December began at 16:00 UTC on the 1st
    ann = site["keys"]["ann"]
    row(ann, datetime(2026, 12, 1, 16, 0, tzinfo=UTC), prompt=7)
    row(ann, datetime(2026, 12, 1, 15, 59, tzinfo=UTC), prompt=1000)
    limit = Limit.objects.create(scope="key", key=ann, tokens_per_day=100)

    use = reports.use_of_limit(limit, now=NOW)

    assert use["tokens_per_day"]["used"] == 7
    assert use["tokens_per_day"]["resets_at"] == "2026-12-02T16:00:00+00:00"


def test_per_minute_use_comes_from_the_gateways_live_counters_not_the_table(site):
    ann = site["keys"]["ann"]
    row(ann, NOW.replace(second=0), prompt=40, completion=2)  # the table's minute
    limit = Limit.objects.create(
        scope="key", key=ann, requests_per_minute=10, tokens_per_minute=100, concurrent_requests=2
    )

    use = reports.use_of_limit(limit, now=NOW)

    # No gateway counted anything in Redis for this minute: the live figures are 0.
    assert {f: (u["used"], u["live"]) for f, u in use.items()} == {
        "requests_per_minute": (0, True),
        "tokens_per_minute": (0, True),
        "concurrent_requests": (0, True),
    }


def test_an_each_key_limit_has_no_live_counter_to_read_and_shows_the_table(site):
    physics, ann = site["physics"], site["keys"]["ann"]
    row(ann, NOW.replace(second=0), prompt=40, completion=2)
    limit = Limit.objects.create(scope="each-key", project=physics, tokens_per_minute=100)

    use = reports.use_of_limit(limit, now=NOW)

    assert use["tokens_per_minute"]["used"] == 42 and use["tokens_per_minute"]["live"] is False


def test_an_each_member_limit_shows_the_busiest_member_and_a_route_limit_its_route(site):
    physics = site["physics"]
    ann, bob = site["ann"], site["bob"]
    k1 = create_consumer_key(name="a2", days=1, user=ann, all_routes=True, project=physics)[0]
    k2 = create_consumer_key(name="b2", days=1, user=bob, all_routes=True, project=physics)[0]
    today = NOW.replace(hour=1, minute=0, second=0)
    row(k1, today, prompt=30)
    row(site["keys"]["ann"], today, prompt=40)  # ann's other key in physics
    row(k2, today, prompt=50)
    row(k2, today, prompt=500, route="embed")
    each = Limit.objects.create(scope="each-member", project=physics, tokens_per_day=100)
    from apps.gateway.models import Route

    embed = Route.objects.create(name="embed")
    on_route = Limit.objects.create(
        scope="project", project=physics, route=embed, tokens_per_day=1000
    )

    assert reports.use_of_limit(each, now=NOW)["tokens_per_day"]["used"] == 550
    assert reports.use_of_limit(on_route, now=NOW)["tokens_per_day"]["used"] == 500


def test_the_csv_holds_the_totals_and_the_series(site):
    keys = site["keys"]
    row(keys["ann"], T0, prompt=5, completion=1)
    row(keys["bob"], T0 + timedelta(minutes=1), prompt=9)
    data = reports.report(site["admin"], {"range": "1h", "group_by": "user"}, now=NOW)

    text = reports.report_csv(data).splitlines()

    assert text[1].startswith("group,requests,errors,prompt_tokens,completion_tokens,tokens")
    assert text[2].startswith("bob,1,0,9,0,9,") and text[3].startswith("ann,1,0,5,1,6,")
    assert f"{T0.isoformat()},ann,6,1" in text


def test_a_name_that_looks_like_a_formula_is_written_as_text(site, make_user):
    evil = make_user("=cmd")
    key = create_consumer_key(name="x", days=1, user=evil, all_routes=True)[0]
    row(key, T0, prompt=1)
    data = reports.report(site["admin"], {"range": "1h", "group_by": "user"}, now=NOW)
    assert "\n'=cmd," in reports.report_csv(data)
