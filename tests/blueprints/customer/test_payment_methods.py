"""Payment methods page: Stripe.js adds cards through a SetupIntent (localstripe), list, default, remove."""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.models import PaymentMethod, User
from portal.payments import gateway
from portal.services.payments import cards as payment_methods
from tests.conftest import add_card, browser_login, csrf_from, fill_card, run_outbox_jobs

DECLINED_AT_SETUP = "4000000000000002"
NEEDS_AUTH = "4000002500003155"


@pytest.fixture
def alice(catalog, stripe_server) -> User:
    return db.session.scalar(sa.select(User).where(User.email == "demo@portal.test"))


def methods(user_id: int) -> list[PaymentMethod]:
    db.session.expire_all()
    return list(db.session.scalars(sa.select(PaymentMethod).where(PaymentMethod.user_id == user_id)
                                   .order_by(PaymentMethod.id)))


def confirm_setup(stripe_url: str, client_secret: str, number: str) -> tuple[int, dict]:
    """What localstripe's Stripe.js confirmCardSetup sends from the browser (publishable key only)."""
    intent_id = client_secret.split("_secret_")[0]
    body = {"key": "pk_test_local", "use_stripe_sdk": True, "client_secret": client_secret,
            "payment_method_data": {"type": "card", "card": {"number": number, "exp_month": "12",
                                                             "exp_year": "2031", "cvc": "123"}}}
    request = urllib.request.Request(f"{stripe_url}/v1/setup_intents/{intent_id}/confirm",
                                     data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def start_setup(client) -> str:
    token = csrf_from(client, "/payment-methods")
    response = client.post("/payment-methods/setup", headers={"X-CSRFToken": token})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["client_secret"]


def test_the_page_lists_cards_with_the_default_first_and_explains_javascript(alice, alice_client, stripe_server):
    add_card(alice, "4242424242424242")
    add_card(alice, "5555555555554444")
    response = alice_client.get("/payment-methods")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    # (localstripe calls every card a Visa, so the brand is not what tells them apart here)
    first, second = html.index("•••• 4242"), html.index("•••• 4444")
    assert first < second
    assert re.search(r"•••• 4242</strong>\s*<span class=\"badge\">Default</span>", html)
    assert html.count(">Default</span>") == 1 and "Expires 12/2031" in html
    assert "Adding a card needs JavaScript" in html and "<noscript>" in html
    assert f'<script src="{stripe_server.url}/js.stripe.com/v3/"></script>' in html
    assert 'data-stripe-key="pk_test_local"' in html


def test_the_real_stripe_js_is_used_without_localstripe(app, client, catalog):
    from portal.blueprints.customer.payment_methods import stripe_js_url

    app.config["STRIPE_API_BASE"] = ""
    with app.test_request_context():
        assert stripe_js_url() == "https://js.stripe.com/v3/"


def test_a_card_confirmed_by_stripe_js_is_saved_as_the_default(alice, alice_client, stripe_server):
    secret = start_setup(alice_client)
    assert secret.startswith("seti_")
    status, intent = confirm_setup(stripe_server.url, secret, "4242424242424242")
    assert status == 200 and intent["status"] == "succeeded"
    token = csrf_from(alice_client, "/payment-methods")
    response = alice_client.post("/payment-methods", data={"csrf_token": token, "setup_intent_id": intent["id"],
                                                           "payment_method_id": intent["payment_method"]})
    assert response.status_code == 303 and response.headers["Location"].endswith("/payment-methods")
    [method] = methods(alice.id)
    assert (method.brand, method.last4, method.is_default) == ("visa", "4242", True)
    assert gateway.card_details(method.stripe_payment_method_id).customer == alice.stripe_customer_id
    page = alice_client.get("/payment-methods").get_data(as_text=True)
    assert "Visa •••• 4242 saved. It is your default card." in page
    # Posting the same card again (a double submit) keeps one row.
    alice_client.post("/payment-methods", data={"csrf_token": token, "setup_intent_id": intent["id"],
                                                "payment_method_id": intent["payment_method"]})
    assert len(methods(alice.id)) == 1


def test_a_card_declined_at_setup_is_refused_by_stripe_js_with_its_message(alice, alice_client, stripe_server):
    status, body = confirm_setup(stripe_server.url, start_setup(alice_client), DECLINED_AT_SETUP)
    # This is the error Stripe.js hands the page, which shows error.message.
    assert status == 402 and body["error"]["message"] == "Your card was declined."
    assert methods(alice.id) == []


def test_a_card_whose_setup_did_not_succeed_is_not_saved(alice, alice_client, stripe_server):
    """A hand-made POST of a card whose bank authentication never completed is refused."""
    status, intent = confirm_setup(stripe_server.url, start_setup(alice_client), "4000002500003155")
    assert status == 200 and intent["status"] == "requires_action"
    token = csrf_from(alice_client, "/payment-methods")
    response = alice_client.post("/payment-methods", data={"csrf_token": token, "setup_intent_id": intent["id"],
                                                           "payment_method_id": intent["payment_method"]})
    assert response.status_code == 402
    html = response.get_data(as_text=True)
    assert "The card was not saved." in html and "not confirmed with your bank" in html
    assert methods(alice.id) == []


def test_a_setup_for_another_card_does_not_vouch_for_this_one(alice, alice_client, stripe_server):
    status, intent = confirm_setup(stripe_server.url, start_setup(alice_client), "4242424242424242")
    other = gateway.client().v1.payment_methods.create(params={"type": "card", "card": {
        "number": "4000000000000341", "exp_month": 12, "exp_year": 2031, "cvc": "123"}})
    token = csrf_from(alice_client, "/payment-methods")
    response = alice_client.post("/payment-methods", data={"csrf_token": token, "setup_intent_id": intent["id"],
                                                           "payment_method_id": other.id})
    assert response.status_code == 402 and methods(alice.id) == []


@pytest.mark.parametrize("value, message", [("", "did not reach us"), ("tok_123", "not a Stripe card id"),
                                            ("pm_" + "x" * 70, "")])
def test_a_bad_payment_method_id_is_a_form_error(alice, alice_client, value, message):
    token = csrf_from(alice_client, "/payment-methods")
    response = alice_client.post("/payment-methods", data={"csrf_token": token, "payment_method_id": value,
                                                           "setup_intent_id": "seti_123"})
    assert response.status_code == 422
    assert "The card was not saved." in response.get_data(as_text=True)
    assert message in response.get_data(as_text=True)
    assert methods(alice.id) == []


def test_posts_without_csrf_are_refused(alice, alice_client):
    method = add_card(alice)
    assert alice_client.post("/payment-methods/setup").status_code == 400
    assert alice_client.post("/payment-methods", data={"payment_method_id": "pm_123"}).status_code == 400
    assert alice_client.post(f"/payment-methods/{method.id}/remove").status_code == 400
    assert len(methods(alice.id)) == 1


def test_make_default_and_remove_with_a_confirm_step(alice, alice_client):
    first, second = add_card(alice), add_card(alice, "5555555555554444")
    second_stripe_id = second.stripe_payment_method_id
    token = csrf_from(alice_client, "/payment-methods")
    response = alice_client.post(f"/payment-methods/{second.id}/default", data={"csrf_token": token})
    assert response.status_code == 303
    assert [m.is_default for m in methods(alice.id)] == [False, True]
    assert "•••• 4444 is now your default card." in alice_client.get("/payment-methods").get_data(as_text=True)

    confirm = alice_client.get(f"/payment-methods/{second.id}/remove")
    html = confirm.get_data(as_text=True)
    assert confirm.status_code == 200 and "•••• 4444?" in html
    assert "•••• 4242 will become the default" in html
    assert len(methods(alice.id)) == 2  # asking removed nothing
    response = alice_client.post(f"/payment-methods/{second.id}/remove", data={"csrf_token": token})
    assert response.status_code == 303
    [left] = methods(alice.id)
    assert left.id == first.id and left.is_default
    # Detached at Stripe by a job, once the removal has committed.
    assert gateway.card_details(second_stripe_id).customer is not None
    assert run_outbox_jobs() == ["worker.payments.detach_card"]
    assert gateway.card_details(second_stripe_id).customer is None
    assert "•••• 4444 removed." in alice_client.get("/payment-methods").get_data(as_text=True)
    last = alice_client.get(f"/payment-methods/{first.id}/remove").get_data(as_text=True)
    assert "This is your only card." in last


def test_a_removal_that_does_not_commit_leaves_the_card_attached_at_stripe(alice):
    """Before: the card was detached at Stripe inside the transaction, so a rollback left it in our
    database but unusable at Stripe."""
    method = add_card(alice)
    stripe_id = method.stripe_payment_method_id
    payment_methods.remove(method)
    db.session.rollback()  # e.g. the audit row failed to write
    assert [m.stripe_payment_method_id for m in methods(alice.id)] == [stripe_id]
    assert gateway.card_details(stripe_id).customer is not None
    assert run_outbox_jobs() == []  # the rolled-back removal asked for nothing


def test_another_customers_card_is_404_everywhere(alice, alice_client, bob):
    theirs = add_card(bob)
    token = csrf_from(alice_client, "/payment-methods")
    assert alice_client.post(f"/payment-methods/{theirs.id}/default", data={"csrf_token": token}).status_code == 404
    assert alice_client.get(f"/payment-methods/{theirs.id}/remove").status_code == 404
    assert alice_client.post(f"/payment-methods/{theirs.id}/remove", data={"csrf_token": token}).status_code == 404
    assert "4242" not in alice_client.get("/payment-methods").get_data(as_text=True)
    [kept] = methods(bob.id)
    assert kept.id == theirs.id and kept.is_default
    # Nor can Alice claim Bob's Stripe card by posting its id.
    response = alice_client.post("/payment-methods", data={"csrf_token": token, "setup_intent_id": "seti_123",
                                                           "payment_method_id": theirs.stripe_payment_method_id})
    assert response.status_code == 422 and methods(alice.id) == []


# --- the real page in a browser: Stripe.js glue end to end ------------------------------------------







@pytest.mark.browser
def test_adding_cards_in_a_browser(alice, live_server, browser_page):
    page = browser_page
    browser_login(page, live_server)
    page.goto(f"{live_server}/payment-methods")

    fill_card(page, DECLINED_AT_SETUP)
    page.click("#card-submit")
    page.wait_for_function("document.getElementById('card-errors').textContent.length > 0")
    assert page.text_content("#card-errors") == "Your card was declined."

    fill_card(page, NEEDS_AUTH)
    page.click("#card-submit")
    page.click("text=Fail authentication")  # localstripe's 3-D Secure prompt
    page.wait_for_function("document.getElementById('card-errors').textContent.includes('authentication')")
    assert "authentication failed" in page.text_content("#card-errors")

    fill_card(page, "4242424242424242")
    page.click("#card-submit")
    page.wait_for_selector("text=Visa •••• 4242 saved.")
    assert "Default" in page.text_content(".card-list")
    db.session.rollback()
    assert [(m.last4, m.is_default) for m in methods(alice.id)] == [("4242", True)]
    db.session.commit()


@pytest.mark.browser
def test_without_javascript_cards_are_still_managed(alice, live_server, browser_page):
    add_card(alice)
    db.session.commit()
    context = browser_page.context.browser.new_context(java_script_enabled=False)
    page = context.new_page()
    browser_login(page, live_server)
    page.goto(f"{live_server}/payment-methods")
    # (Chromium still parses <noscript> as text with JS off in Playwright; the server test checks it.)
    assert page.is_hidden("#card-submit")
    page.click("text=Remove")
    page.click("button:has-text('Remove card')")
    page.wait_for_selector("text=Visa •••• 4242 removed.")
    db.session.rollback()
    assert methods(alice.id) == []
    db.session.commit()
    context.close()


@pytest.mark.browser
def test_a_top_up_the_bank_must_confirm_in_a_browser(alice, live_server, browser_page):
    add_card(alice, NEEDS_AUTH)
    db.session.commit()
    page = browser_page
    browser_login(page, live_server)
    page.goto(f"{live_server}/wallet")
    page.fill("#amount", "30")
    page.click("button:has-text('Add funds')")
    page.wait_for_url("**/wallet/topups/*")
    assert page.is_visible("text=Your bank asks you to confirm this payment.")
    page.click("#confirm-button")
    page.click("text=Complete authentication")  # localstripe's 3-D Secure prompt
    page.wait_for_url("**/wallet")
    assert page.is_visible("text=$30.00 added to your wallet.")
    assert page.text_content("[data-testid=balance]") == "$30.00"
