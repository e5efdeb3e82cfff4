"""Gateway objects for the role matrix's World (tests/endpoints.py): a global
{route} to the "in" deployment, a {saccount} (service account), and a consumer
key {ckey} that perform() hands to the caller, as it does the API token; a
{project} the caller owns (its owner row is handed over too), with a {member}, a
pending key {pkey} of that member and a project {limit}."""

from __future__ import annotations

from django.contrib.auth import get_user_model

from apps.gateway.keys import create_consumer_key
from apps.gateway.models import Limit, Project, ProjectMember, Route, RouteTarget, ServiceAccount


def gateway_world(world) -> dict[str, dict[str, int]]:
    route = Route.objects.create(name="matrix-route", description="for the matrix")
    RouteTarget.objects.create(route=route, deployment_id=world.extra["deployment"]["in"])
    account = ServiceAccount.objects.create(name="matrix-app")
    key, _raw = create_consumer_key(name="matrix key", days=1, user=world.person, routes=[route])
    world.owned.append(key)
    # A project the caller owns (the row becomes theirs), with a member and a pending key.
    project = Project.objects.create(name="matrix-project", require_approval=True)
    owner = ProjectMember.objects.create(project=project, user=world.person, role="owner")
    world.owned.append(owner)
    student = get_user_model().objects.create_user("matrix-student")
    member = ProjectMember.objects.create(project=project, user=student, role="member")
    pending, _raw = create_consumer_key(
        name="pending key", days=1, user=student, routes=[route], project=project,
        approved=False,
    )  # fmt: skip
    limit = Limit.objects.create(scope="project", project=project, tokens_per_day=10_000)
    objects = (("route", route), ("saccount", account), ("ckey", key), ("project", project))
    objects += (("member", member), ("pkey", pending), ("limit", limit))
    return {name: dict.fromkeys(world.clusters, obj.pk) for name, obj in objects}
