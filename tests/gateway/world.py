"""Gateway objects for the role matrix's World (tests/endpoints.py): a global
{route} to the "in" deployment, a {saccount} (service account), and a consumer
key {ckey} that perform() hands to the caller, as it does the API token."""

from __future__ import annotations

from apps.gateway.keys import create_consumer_key
from apps.gateway.models import Route, RouteTarget, ServiceAccount


def gateway_world(world) -> dict[str, dict[str, int]]:
    route = Route.objects.create(name="matrix-route", description="for the matrix")
    RouteTarget.objects.create(route=route, deployment_id=world.extra["deployment"]["in"])
    account = ServiceAccount.objects.create(name="matrix-app")
    key, _raw = create_consumer_key(name="matrix key", days=1, user=world.person, routes=[route])
    world.owned.append(key)
    return {
        name: dict.fromkeys(world.clusters, obj.pk)
        for name, obj in (("route", route), ("saccount", account), ("ckey", key))
    }
