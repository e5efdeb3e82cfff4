"""Rights end on live sockets too: a browser socket never outlives its user's grant."""

from __future__ import annotations

import json

import pytest
from django.db import connection
from websockets.exceptions import ConnectionClosed

from apps.accounts.models import DirectoryMembership, RoleBinding
from apps.accounts.services import deactivate_user
from tests.telemetry.conftest import browser_socket, receive_until, session_for

RIGHTS_CHANGED = 4403


def subscribed(daphne, user, cluster):
    browser = browser_socket(daphne.url, session_for(user))
    browser.send(json.dumps({"action": "subscribe", "cluster": cluster.pk}))
    receive_until(browser, lambda m: m["type"] == "snapshot")
    return browser


def closed_code(browser) -> int:
    with pytest.raises(ConnectionClosed) as closed:
        receive_until(browser, lambda m: False)
    return closed.value.rcvd.code


def test_a_deactivated_users_socket_is_closed(daphne, make_user, cluster):
    viewer = make_user("vera", ("viewer", cluster))
    browser = subscribed(daphne, viewer, cluster)

    deactivate_user(viewer)

    assert closed_code(browser) == RIGHTS_CHANGED


def test_a_binding_removed_through_the_api_closes_the_socket_and_the_cluster_stays_shut(
    daphne, make_user, cluster, admin_api
):
    viewer = make_user("vera", ("viewer", cluster))
    browser = subscribed(daphne, viewer, cluster)
    binding = RoleBinding.objects.get(user=viewer)

    assert admin_api.delete(f"/api/v1/role-bindings/{binding.pk}/").status_code == 204

    assert closed_code(browser) == RIGHTS_CHANGED
    again = browser_socket(daphne.url, session_for(viewer))
    again.send(json.dumps({"action": "subscribe", "cluster": cluster.pk}))
    refused = receive_until(again, lambda m: m["type"] in ("error", "snapshot"))
    assert refused == {"type": "error", "detail": "no such cluster, or not yours to see"}
    again.close()


def test_a_removed_ldap_group_binding_closes_the_sockets_of_that_groups_members(
    daphne, make_user, cluster
):
    member = make_user("gus")
    DirectoryMembership.objects.create(user=member, group_dns=["cn=gpu-ops,ou=groups,dc=test"])
    binding = RoleBinding.objects.create(
        role="viewer", ldap_group="cn=gpu-ops,ou=groups,dc=test", cluster=cluster
    )
    browser = subscribed(daphne, member, cluster)

    binding.delete()

    assert closed_code(browser) == RIGHTS_CHANGED


def test_each_join_reads_the_users_rights_afresh(daphne, make_user, cluster, other_cluster):
    # Changed behind the model signals' back (raw SQL), so no close arrives: the
    # join itself must read the bindings the database holds now.
    viewer = make_user("vera", ("viewer", cluster), ("viewer", other_cluster))
    browser = subscribed(daphne, viewer, cluster)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM accounts_rolebinding WHERE cluster_id = %s", [other_cluster.pk])

    browser.send(json.dumps({"action": "subscribe", "cluster": other_cluster.pk}))

    refused = receive_until(browser, lambda m: m["type"] in ("error", "snapshot"))
    assert refused == {"type": "error", "detail": "no such cluster, or not yours to see"}
    browser.close()


def test_a_join_after_a_silent_deactivation_closes_the_socket(daphne, make_user, cluster):
    viewer = make_user("vera", ("viewer", cluster))
    browser = subscribed(daphne, viewer, cluster)
    type(viewer).objects.filter(pk=viewer.pk).update(is_active=False)  # no signal

    browser.send(json.dumps({"action": "subscribe", "cluster": cluster.pk}))

    assert closed_code(browser) == RIGHTS_CHANGED


def test_a_login_that_changes_the_users_directory_groups_closes_their_sockets(
    daphne, make_user, cluster
):
    member = make_user("gus")
    DirectoryMembership.objects.create(user=member, group_dns=["cn=gpu-ops,ou=groups,dc=test"])
    RoleBinding.objects.create(
        role="viewer", ldap_group="cn=gpu-ops,ou=groups,dc=test", cluster=cluster
    )
    browser = subscribed(daphne, member, cluster)

    # What apps/accounts/ldap.py does at each LDAP login: the groups re-read.
    DirectoryMembership.objects.update_or_create(user=member, defaults={"group_dns": []})

    assert closed_code(browser) == RIGHTS_CHANGED
