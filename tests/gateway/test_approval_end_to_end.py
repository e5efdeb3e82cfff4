"""A key of a project that requires approval does not work at a real `hangar-gateway`
until an owner approves it over the console's API: the API, the snapshot in Redis,
the gateway process and a real reference engine."""

from __future__ import annotations

from apps.gateway import snapshot
from apps.gateway.models import Project, ProjectMember
from tests.gateway.conftest import http, published

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "may I?"}]}


def test_an_approval_required_key_answers_401_until_an_owner_approves_it(
    start_gateway, serving, make_user, client_for
):
    gateway = start_gateway()
    serving("chat")
    project = Project.objects.create(name="nlp-course", require_approval=True)
    owner, student = make_user("lecturer", "consumer"), make_user("student", "consumer")
    ProjectMember.objects.create(project=project, user=owner, role="owner")
    ProjectMember.objects.create(project=project, user=student, role="member")

    made = client_for(student).post(
        "/api/v1/consumer-keys/",
        {"name": "homework", "days": 7, "routes": ["chat"], "project": "nlp-course"},
        format="json",
    )
    assert made.status_code == 201 and made.json()["state"] == "pending", made.json()
    raw, key_id = made.json()["key"], made.json()["id"]
    published(gateway)

    status, body, _ = http("POST", f"{gateway.url}/v1/chat/completions", CHAT, raw)
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")

    approved = client_for(owner).post(f"/api/v1/consumer-keys/{key_id}/approve/")
    assert approved.status_code == 200 and approved.json()["state"] == "active"
    gateway.wait_for_generation(snapshot.publish())

    status, body, _ = http("POST", f"{gateway.url}/v1/chat/completions", CHAT, raw)
    assert status == 200, body
    assert body["choices"][0]["message"]["role"] == "assistant"
