"""What a newcomer trips on, fixed (the page walk of issue 19): each with its check."""

from __future__ import annotations

import pytest
from django.test import Client

from apps.inventory.models import Node, NodeState

pytestmark = pytest.mark.django_db


def browser(make_user, *roles, username="person", language=None):
    client = Client()
    client.force_login(make_user(username, *roles))
    if language:
        client.cookies["django_language"] = language
    return client


def test_the_deploy_form_starts_on_the_reference_engine_where_gpus_are_simulated(
    make_user, cluster
):
    Node.objects.create(cluster=cluster, hostname="laptop", state=NodeState.ONLINE, simulated=True)
    page = browser(make_user, "admin").get("/deployments/").content.decode()
    assert '<option value="reference" selected>' in page
    assert '<option value="generic" selected>' not in page  # it needs a command: a trap


def test_the_deploy_form_starts_on_vllm_where_a_node_has_real_gpus(make_user, cluster):
    Node.objects.create(cluster=cluster, hostname="gpu01", state=NodeState.ONLINE)
    page = browser(make_user, "admin").get("/deployments/").content.decode()
    assert '<option value="vllm" selected>' in page


def test_the_deploy_form_asks_for_no_port(make_user, cluster):
    page = browser(make_user, "admin").get("/deployments/").content.decode()
    port = page[page.index('name="port"') - 200 : page.index('name="port"') + 200]
    assert "required" not in port and "First port (optional)" in page


def test_the_language_menu_names_each_language_in_itself(make_user):
    page = browser(make_user, "viewer", language="zh-hans").get("/").content.decode()
    assert '<option value="en" lang="en" >English</option>' in page
    assert "英语" not in page
    assert 'lang="zh-hans" selected>简体中文</option>' in page
