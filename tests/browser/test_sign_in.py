"""Signing in to the dashboard over TCP: a wrong token gets the login page back, the right one
a session; ``spotctl dashboard --no-browser`` prints a link that signs in once."""

from __future__ import annotations

import pytest

from .conftest import TOKEN

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_a_wrong_token_gets_the_login_page_back_and_the_right_one_signs_in(web_daemon, page, shot):
    page.goto(web_daemon.base + "/")
    assert page.url.endswith("/dashboard/login"), "signed out: the login page"
    page.fill("#token", "not-the-token")
    page.click("button[type=submit]")
    page.wait_for_selector("text=That token is not valid here.")
    assert page.url.endswith("/dashboard/login")
    assert not [c for c in page.context.cookies() if c["name"] == "spotd_dashboard"]
    shot("login-wrong-token")
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_selector("h1:has-text('Jobs')")
    cookie = next(c for c in page.context.cookies() if c["name"] == "spotd_dashboard")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    # signing out ends the session: the next page is the login page again
    page.click("text=Sign out")
    page.wait_for_selector("#token")
    page.goto(web_daemon.base + "/fleet")
    assert page.url.endswith("/dashboard/login")


def test_the_cli_link_signs_in_once(web_daemon, page, browser):
    link = web_daemon.login_link()
    page.goto(link)
    page.wait_for_selector("h1:has-text('Jobs')")
    assert page.url.endswith("/dashboard/")
    other = browser.new_context()
    try:
        again = other.new_page()
        again.goto(link)
        again.wait_for_selector("text=used already or has expired")
        again.goto(web_daemon.base + "/")
        assert again.url.endswith("/dashboard/login"), "a spent link signs nobody in"
    finally:
        other.close()
