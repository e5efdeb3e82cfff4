"""Projects and people over the API and the pages: keys within the site's policy,
approval by owners, LDAP-group members, limits' validation, and a consumer who
sees nothing of another project (keys, usage, CSV)."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from apps.accounts.models import DirectoryMembership
from apps.audit.models import AuditEvent
from apps.gateway.keys import create_consumer_key
from apps.gateway.models import (
    ConsumerKey,
    GatewayPolicy,
    Limit,
    Project,
    ProjectMember,
    Route,
    UsageMinute,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def campus(make_user):
    """Two projects, each with an owner and a consumer member, and a route."""
    Route.objects.create(name="chat")
    people = {}
    for name in ("physics", "history"):
        project = Project.objects.create(name=name, require_approval=True)
        owner = make_user(f"{name}-owner", "consumer")
        student = make_user(f"{name}-student", "consumer")
        ProjectMember.objects.create(project=project, user=owner, role="owner")
        ProjectMember.objects.create(project=project, user=student, role="member")
        people[name] = {"project": project, "owner": owner, "student": student}
    return people


def _key_body(**extra) -> dict:
    return {"name": "notebook", "days": 7, "routes": ["chat"], **extra}


def _usage(project, user, key, tokens: int, minutes_ago: int = 5) -> UsageMinute:
    minute = (timezone.now() - timedelta(minutes=minutes_ago)).replace(second=0, microsecond=0)
    return UsageMinute.objects.create(
        minute=minute, key=key, user=user, project=project, route="chat", status="2xx",
        requests=1, prompt_tokens=tokens, completion_tokens=0,
    )  # fmt: skip


def test_a_members_key_of_an_approval_project_is_pending_until_an_owner_approves_it(
    campus, client_for
):
    physics = campus["physics"]
    made = client_for(physics["student"]).post(
        "/api/v1/consumer-keys/", _key_body(project="physics"), format="json"
    )
    assert made.status_code == 201, made.json()
    assert made.json()["state"] == "pending" and made.json()["project"] == "physics"
    key_id = made.json()["id"]

    approved = client_for(physics["owner"]).post(f"/api/v1/consumer-keys/{key_id}/approve/")

    assert approved.status_code == 200, approved.json()
    assert approved.json()["state"] == "active"
    assert approved.json()["approved_by"] == "physics-owner"
    event = AuditEvent.objects.filter(action="gateway.key.approve").get()
    assert event.outcome == "allowed" and event.changes["approved"] is True
    again = client_for(physics["owner"]).post(f"/api/v1/consumer-keys/{key_id}/approve/")
    assert again.status_code == 400 and "not pending" in again.json()["detail"]


def test_an_owners_own_key_in_their_project_works_at_once(campus, client_for):
    made = client_for(campus["physics"]["owner"]).post(
        "/api/v1/consumer-keys/", _key_body(project="physics"), format="json"
    )
    assert made.status_code == 201 and made.json()["state"] == "active"


def test_a_member_cannot_approve_their_own_pending_key(campus, client_for):
    student = campus["physics"]["student"]
    api = client_for(student)
    key_id = api.post("/api/v1/consumer-keys/", _key_body(project="physics"), format="json").json()[
        "id"
    ]

    refused = api.post(f"/api/v1/consumer-keys/{key_id}/approve/")

    assert refused.status_code == 403
    assert ConsumerKey.objects.get(pk=key_id).approved_at is None


def test_a_key_in_a_project_one_is_not_in_is_refused(campus, client_for):
    refused = client_for(campus["physics"]["student"]).post(
        "/api/v1/consumer-keys/", _key_body(project="history"), format="json"
    )
    assert refused.status_code == 403
    assert "not a member of project history" in refused.json()["detail"]
    assert not ConsumerKey.objects.exists()


def test_the_policy_caps_days_turns_self_service_off_and_can_require_a_project(
    campus, client_for, admin_api
):
    api = client_for(campus["physics"]["student"])
    assert (
        admin_api.patch("/api/v1/gateway-policy/", {"max_key_days": 30}, format="json").status_code
        == 200
    )

    too_long = api.post("/api/v1/consumer-keys/", _key_body(days=31), format="json")
    assert too_long.status_code == 400
    assert "at most 30 days" in too_long.json()["detail"]

    admin_api.patch("/api/v1/gateway-policy/", {"keys_without_project": False}, format="json")
    no_project = api.post("/api/v1/consumer-keys/", _key_body(), format="json")
    assert no_project.status_code == 400
    assert "Choose one of your projects" in no_project.json()["detail"]

    admin_api.patch("/api/v1/gateway-policy/", {"self_service": False}, format="json")
    off = api.post("/api/v1/consumer-keys/", _key_body(project="physics"), format="json")
    assert off.status_code == 403 and "Self-service keys are off" in off.json()["detail"]
    # Administrators are not held by the site's self-service policy.
    assert (
        admin_api.post("/api/v1/consumer-keys/", _key_body(days=90), format="json").status_code
        == 201
    )
    assert GatewayPolicy.current().self_service is False


def test_the_policy_cannot_allow_more_days_than_the_appliance(admin_api, settings):
    settings.GATEWAY_KEY_MAX_DAYS = 365
    refused = admin_api.patch("/api/v1/gateway-policy/", {"max_key_days": 400}, format="json")
    assert refused.status_code == 400 and "at most 365 days" in str(refused.json())


def test_an_ldap_group_binding_makes_every_member_of_the_group_a_member(
    campus, make_user, client_for
):
    dn = "cn=physics-staff,ou=groups,dc=example,dc=edu"
    ProjectMember.objects.create(project=campus["physics"]["project"], ldap_group=dn)
    lecturer = make_user("lecturer", "consumer")
    DirectoryMembership.objects.create(user=lecturer, group_dns=[dn.upper()])

    api = client_for(lecturer)
    listed = api.get("/api/v1/projects/").json()
    made = api.post("/api/v1/consumer-keys/", _key_body(project="physics"), format="json")

    assert [p["name"] for p in listed["results"]] == ["physics"]
    assert made.status_code == 201 and made.json()["state"] == "pending"


def test_an_owner_manages_members_but_not_the_weight(campus, make_user, client_for):
    owner_api = client_for(campus["physics"]["owner"])
    newcomer = make_user("newcomer", "consumer")
    added = owner_api.post(
        "/api/v1/project-members/", {"project": "physics", "user": "newcomer"}, format="json"
    )
    assert added.status_code == 201, added.json()
    assert ProjectMember.objects.filter(user=newcomer, project__name="physics").exists()
    again = owner_api.post(
        "/api/v1/project-members/", {"project": "physics", "user": "newcomer"}, format="json"
    )
    assert again.status_code == 400 and "already in this project" in again.json()["detail"]

    project_id = campus["physics"]["project"].pk
    weight = owner_api.patch(f"/api/v1/projects/{project_id}/", {"weight": 900}, format="json")
    approval = owner_api.patch(
        f"/api/v1/projects/{project_id}/", {"require_approval": False}, format="json"
    )

    assert weight.status_code == 403 and "weight" in weight.json()["detail"]
    assert approval.status_code == 200 and approval.json()["require_approval"] is False
    assert Project.objects.get(pk=project_id).weight == 100


def test_the_last_owner_named_by_user_cannot_be_removed(campus, client_for):
    owner = campus["physics"]["owner"]
    row = ProjectMember.objects.get(user=owner)
    refused = client_for(owner).delete(f"/api/v1/project-members/{row.pk}/")
    assert refused.status_code == 400 and "last owner" in refused.json()["detail"]


def test_a_member_cannot_add_members(campus, make_user, client_for):
    make_user("friend")
    refused = client_for(campus["physics"]["student"]).post(
        "/api/v1/project-members/", {"project": "physics", "user": "friend"}, format="json"
    )
    assert refused.status_code == 403


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"scope": "project", "project": "physics"}, "Set at least one of"),
        ({"scope": "user", "project": "physics", "tokens_per_day": 5}, "names a user"),
        ({"scope": "project", "project": "physics", "tokens_per_day": 0},
         "greater than or equal to 1"),
        ({"scope": "project", "project": "physics", "route": "nope", "tokens_per_day": 5},
         "There is no route nope"),
        ({"scope": "project", "project": "physics", "tokens_per_day": -3},
         "greater than or equal to 1"),
    ],
)  # fmt: skip
def test_a_bad_limit_is_refused_with_a_reason(campus, admin_api, body, says):
    refused = admin_api.post("/api/v1/limits/", body, format="json")
    assert refused.status_code == 400
    assert says in str(refused.json())
    assert not Limit.objects.exists()


def test_a_limit_is_set_audited_and_shown_with_its_use(campus, admin_api):
    physics = campus["physics"]
    key, _raw = create_consumer_key(
        name="k", days=1, user=physics["student"], all_routes=True, project=physics["project"]
    )
    _usage(physics["project"], physics["student"], key, 700, minutes_ago=0)

    made = admin_api.post(
        "/api/v1/limits/", {"scope": "project", "project": "physics", "tokens_per_day": 1000},
        format="json",
    )  # fmt: skip

    assert made.status_code == 201, made.json()
    assert made.json()["use"]["tokens_per_day"]["used"] == 700
    assert made.json()["use"]["tokens_per_day"]["percent"] == 70.0
    event = AuditEvent.objects.filter(action="projects.manage").latest("seq")
    assert event.target_type == "gateway.limit" and "created" in event.changes
    duplicate = admin_api.post(
        "/api/v1/limits/", {"scope": "project", "project": "physics", "tokens_per_week": 9},
        format="json",
    )  # fmt: skip
    assert duplicate.status_code == 400 and "already has a limit" in duplicate.json()["detail"]


# --- a consumer sees nothing of another project ------------------------------------------


@pytest.fixture
def history_traffic(campus):
    """A key and some usage in history, none of it physics'."""
    history = campus["history"]
    key, _raw = create_consumer_key(
        name="history-key", days=1, user=history["student"], all_routes=True,
        project=history["project"], approved=False,
    )  # fmt: skip
    _usage(history["project"], history["student"], key, 4242)
    return key


def test_a_consumer_cannot_see_or_change_another_projects_keys(campus, history_traffic, client_for):
    physics = campus["physics"]
    for person in (physics["student"], physics["owner"]):
        api = client_for(person)
        listed = api.get("/api/v1/consumer-keys/").json()
        assert history_traffic.prefix not in str(listed)
        assert api.get(f"/api/v1/consumer-keys/{history_traffic.pk}/").status_code == 404
        assert api.post(f"/api/v1/consumer-keys/{history_traffic.pk}/approve/").status_code == 404
        assert api.post(f"/api/v1/consumer-keys/{history_traffic.pk}/revoke/").status_code == 404
        projects = api.get("/api/v1/projects/").json()
        assert [p["name"] for p in projects["results"]] == ["physics"]
        history_id = campus["history"]["project"].pk
        assert api.get(f"/api/v1/projects/{history_id}/").status_code == 404
        members = api.get("/api/v1/project-members/").json()
        assert "history" not in str(members)
    history_traffic.refresh_from_db()
    assert history_traffic.state == "pending"


def test_a_consumer_cannot_see_another_projects_usage_over_the_api(
    campus, history_traffic, client_for
):
    physics = campus["physics"]
    for person in (physics["student"], physics["owner"]):
        api = client_for(person)
        for params in ("", "?project=history", "?group_by=user", "?group_by=key&range=7d"):
            body = api.get(f"/api/v1/usage/{params}").json()
            assert body["totals"] == [], (person, params, body)
            assert "4242" not in str(body) and "history" not in str(body)
        assert api.get("/api/v1/usage/energy/").json()["lines"] == []


def test_the_owner_and_an_admin_see_the_projects_usage(
    campus, history_traffic, client_for, admin_api
):
    for api in (client_for(campus["history"]["owner"]), admin_api):
        body = api.get("/api/v1/usage/?project=history").json()
        assert [(t["group"], t["tokens"]) for t in body["totals"]] == [("history", 4242)]


def test_a_consumer_cannot_see_another_projects_pages_or_csv(campus, history_traffic):
    browser = Client()
    browser.force_login(campus["physics"]["student"])
    history_id = campus["history"]["project"].pk

    assert browser.get(f"/projects/{history_id}/").status_code == 404
    listing = browser.get("/projects/").content.decode()
    assert "physics" in listing and "history" not in listing
    assert browser.post(f"/keys/{history_traffic.pk}/approve/").status_code == 404
    assert browser.post(f"/keys/{history_traffic.pk}/revoke/").status_code == 404
    for page in ("/usage/", "/usage/?project=history", "/usage/mine/", "/keys/"):
        body = browser.get(page).content.decode()
        assert "4242" not in body and "history-key" not in body, page
    exported = browser.get("/usage/export/?project=history&range=7d")
    assert exported.status_code == 200 and exported["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(exported.content.decode())))
    assert "4242" not in str(rows) and "history" not in str(rows[1:])


def test_the_owners_csv_has_the_projects_usage(campus, history_traffic):
    browser = Client()
    browser.force_login(campus["history"]["owner"])
    exported = browser.get("/usage/export/?group_by=project&range=7d")
    rows = list(csv.reader(io.StringIO(exported.content.decode())))
    header = rows[1]
    line = dict(zip(header, rows[2], strict=True))
    assert (line["group"], line["tokens"], line["requests"]) == ("history", "4242", "1")


def test_the_consumer_role_opens_no_inventory_page(campus):
    browser = Client()
    browser.force_login(campus["physics"]["student"])
    for page in ("/", "/nodes/", "/deployments/", "/routes/", "/models/"):
        assert browser.get(page).status_code == 403, page
    keys_page = browser.get("/keys/").content.decode()
    assert 'id="open-route-table"' in keys_page and ">chat<" in keys_page
    assert "physics (" in keys_page  # the project choice, marked as needing approval


def test_a_consumer_lands_on_their_keys_after_logging_in(make_user):
    make_user("learner", "consumer", password="a long passphrase nobody guesses")
    response = Client().post(
        "/login/", {"username": "learner", "password": "a long passphrase nobody guesses"}
    )
    assert response.status_code == 302 and response["Location"] == "/keys/"


def test_the_project_page_shows_pending_keys_and_approves_them(campus):
    physics = campus["physics"]
    key, _raw = create_consumer_key(
        name="lab notebook", days=1, user=physics["student"], all_routes=True,
        project=physics["project"], approved=False,
    )  # fmt: skip
    browser = Client()
    browser.force_login(physics["owner"])
    page = browser.get(f"/projects/{physics['project'].pk}/").content.decode()
    assert 'id="pending-note"' in page and f'action="/keys/{key.pk}/approve/"' in page

    approved = browser.post(f"/keys/{key.pk}/approve/", {"next": "/projects/"})

    assert approved.status_code == 302
    key.refresh_from_db()
    assert key.state == "active" and key.approved_by == physics["owner"]


def test_a_service_accounts_key_counts_under_its_project(campus, make_user, client_for):
    manager = make_user("apps-team", "model-manager")
    api = client_for(manager)
    made = api.post(
        "/api/v1/service-accounts/", {"name": "course-bot", "project": "history"}, format="json"
    )
    assert made.status_code == 201 and made.json()["project"] == "history"

    key = api.post("/api/v1/consumer-keys/", _key_body(service_account="course-bot"), format="json")

    assert key.status_code == 201, key.json()
    assert key.json()["project"] == "history" and key.json()["owner"] == "service:course-bot"


def test_the_usage_page_speaks_chinese(campus, history_traffic):
    browser = Client()
    browser.force_login(campus["history"]["owner"])
    page = browser.get("/usage/?group_by=project", HTTP_ACCEPT_LANGUAGE="zh-Hans")
    body = page.content.decode()
    assert page.status_code == 200
    assert "用量最多者" in body and "限额与用量" in body and "4242" in body


def test_a_service_accounts_key_cannot_be_put_in_another_project(campus, make_user, client_for):
    api = client_for(make_user("apps-team", "model-manager"))
    api.post(
        "/api/v1/service-accounts/", {"name": "course-bot", "project": "history"}, format="json"
    )

    refused = api.post(
        "/api/v1/consumer-keys/",
        _key_body(service_account="course-bot", project="physics"),
        format="json",
    )

    assert refused.status_code == 400
    assert "its own project (history)" in refused.json()["detail"]


def test_the_csv_and_the_api_give_the_same_totals(campus, history_traffic, admin_user, client_for):
    physics = campus["physics"]
    key, _raw = create_consumer_key(
        name="p", days=1, user=physics["student"], all_routes=True, project=physics["project"]
    )
    _usage(physics["project"], physics["student"], key, 17)
    api = client_for(admin_user).get("/api/v1/usage/?group_by=project&range=7d").json()
    browser = Client()
    browser.force_login(admin_user)
    exported = browser.get("/usage/export/?group_by=project&range=7d").content.decode()

    rows = list(csv.reader(io.StringIO(exported)))
    header, lines = rows[1], rows[2 : 2 + len(api["totals"])]
    from_csv = [(r[header.index("group")], int(r[header.index("tokens")])) for r in lines]
    assert from_csv == [(t["group"], t["tokens"]) for t in api["totals"]]
    assert from_csv == [("history", 4242), ("physics", 17)]
