"""A GET of a page address that only takes a form (a reloaded or bookmarked action
URL) answers a page that says what to do and links to where the form is, never an
empty 405. Every such route of the console is walked."""

import pytest
from django.urls import resolve

from apps.accounts.permissions import nearest_page
from tests.endpoints import ENDPOINTS, PLACEHOLDERS, all_routes, route_of

pytestmark = pytest.mark.django_db


def _post_only_pages():
    paths = {route_of(row.path): row.path for row in ENDPOINTS}
    cases = []
    for route in all_routes():
        declared = getattr(route.callback, "policy_methods", None)
        if declared is None or "GET" in declared or route.route not in paths:
            continue
        path = paths[route.route].split("?")[0].format(**dict.fromkeys(PLACEHOLDERS, 1))
        if path.startswith("/api/"):
            continue
        cases.append(pytest.param(path, id=path))
    return cases


POST_ONLY = _post_only_pages()


def test_there_are_post_only_pages_to_walk():
    paths = [case.values[0] for case in POST_ONLY]
    assert "/deployments/new/" in paths and len(paths) >= 10


@pytest.mark.parametrize("path", POST_ONLY)
def test_a_get_of_a_post_only_page_says_what_to_do_and_links_to_its_page(path, admin_user):
    from django.test import Client

    client = Client()
    client.force_login(admin_user)
    response = client.get(path)

    assert response.status_code == 405
    assert response["Allow"] == "POST"
    body = response.content.decode()
    assert "This address takes a form" in body
    target = nearest_page(path)
    assert f'href="{target}" id="post-only-page"' in body
    # The link is a page a GET may open.
    assert "GET" in getattr(resolve(target).func, "policy_methods", ("GET",))
    assert path.startswith(target)


def test_the_link_of_the_deploy_form_is_the_deployments_page():
    assert nearest_page("/deployments/new/") == "/deployments/"
    assert nearest_page("/alerts/5/acknowledge/") == "/alerts/"


def test_a_get_of_a_post_only_page_is_in_chinese_for_a_chinese_browser(admin_user):
    from django.test import Client

    client = Client(headers={"accept-language": "zh-hans"})
    client.force_login(admin_user)
    body = client.get("/deployments/new/").content.decode()
    assert "此地址接收表单" in body and "/deployments/" in body


def test_other_methods_still_get_a_plain_405(admin_user):
    from django.test import Client

    client = Client()
    client.force_login(admin_user)
    response = client.put("/deployments/new/")
    assert response.status_code == 405 and response["Allow"] == "POST"
