"""The second factor in a real headless Chromium against a real Daphne: enrol by
the QR page, log out, log in again with the password and then a code."""

from __future__ import annotations

import pyotp
import pytest
from playwright.sync_api import expect

from apps.accounts.models import SecondFactor
from tests.ui.conftest import PASSWORD

pytestmark = pytest.mark.timeout(120)


def test_enrol_then_log_in_with_password_and_code(open_browser, make_user):
    user = make_user("ann", "viewer")
    page = open_browser(user)

    page.goto("/account/second-factor/")
    expect(page.locator(".qr svg")).to_be_visible()
    secret = SecondFactor.objects.get(user=user).secret
    page.fill("input[name=code]", pyotp.TOTP(secret).now())
    page.click("form:has(input[name=code]) button[type=submit]")
    expect(page.locator(".recovery-codes li")).to_have_count(10)
    recovery = page.locator(".recovery-codes li code").first.inner_text()

    page.click("#user-menu summary")
    page.click("#user-menu form[action='/logout/'] button")
    page.goto("/login/")
    page.fill("input[name=username]", "ann")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("input[name=code]")).to_be_visible()
    # The enrolment used this step's code, so a recovery code logs in here.
    page.fill("input[name=code]", recovery)
    page.click("button[type=submit]")

    expect(page.locator("h1")).to_have_text("Dashboard")
    expect(page.locator(".messages")).to_contain_text("Your last login was at")
