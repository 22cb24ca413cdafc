"""In Debian's chromium: an upgrade waiting for the bank's 3-D Secure check, confirmed again with the
back button and from a second tab, ends in one charge."""
from __future__ import annotations

import pytest

from portal.extensions import db
from portal.services.subscriptions import live_subscription
from tests.conftest import add_card, assert_money_consistent, browser_login, stripe_intents

pytestmark = pytest.mark.browser

THREE_D_SECURE = "4000002500003155"


def test_the_back_button_and_a_second_tab_at_3d_secure_end_in_one_charge(alice, stripe_server, live_server,
                                                                          browser_page, shot):
    add_card(alice, THREE_D_SECURE)
    db.session.commit()
    page = browser_page
    browser_login(page, live_server)
    page.goto(f"{live_server}/subscription/change/premium")
    page.click("text=Pay $9.99 and upgrade")
    page.wait_for_selector("text=Complete authentication")  # localstripe's bank dialog
    shot(page, "bank-asks")

    # The back button, and Pay again: the same payment's check, never a second charge.
    page.go_back()
    page.wait_for_selector("text=Pay $9.99 and upgrade")
    page.click("text=Pay $9.99 and upgrade")
    page.wait_for_load_state()
    if page.is_visible("#purchase-in-progress"):  # the preview was reloaded: a new form, the open one is shown
        shot(page, "back-button-in-progress")
        page.click("text=Continue that upgrade")
    page.wait_for_selector("text=Complete authentication")
    shot(page, "bank-asks-again")

    # A second tab confirms an upgrade too: told the first is still open, offered to continue or cancel it.
    second = page.context.new_page()
    second.goto(f"{live_server}/subscription/change/business")
    second.click("text=and upgrade")
    second.wait_for_selector("#purchase-in-progress")
    assert "An upgrade to Premium is still open" in second.inner_text("#purchase-in-progress")
    shot(second, "second-tab")
    second.close()

    page.click("text=Complete authentication")
    page.wait_for_url(f"{live_server}/subscription")
    assert "You are now on the Premium plan" in page.inner_text(".flashes")
    shot(page, "upgraded")

    db.session.rollback()
    assert live_subscription(alice.id).plan.code == "premium"
    [intent] = stripe_intents(alice)
    assert intent.status == "succeeded"
    assert_money_consistent(alice)
