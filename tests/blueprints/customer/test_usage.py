"""The usage page: meters from counters, live refresh, history partial, buying token packages."""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from portal.billing.lifecycle import Transition
from portal.extensions import db
from portal.models import EntryKind, Feature, Invoice, InvoiceStatus, Plan, UsageEvent
from portal.services import usage, wallet
from portal.services.subscriptions import live_subscription, transition
from portal.services.usage import meters
from tests.conftest import add_card, authenticate_3ds

DECLINING = "4000000000000341"
NEEDS_3DS = "4000002760003184"


def switch_plan(user, code: str) -> None:
    plan = db.session.scalar(sa.select(Plan).where(Plan.code == code))
    transition(live_subscription(user.id), Transition.CHANGE_PLAN, reason="test", plan_id=plan.id)
    db.session.commit()


def record(user, code: str, quantity: int) -> None:
    assert usage.record(user.id, code, quantity).allowed
    db.session.commit()


def card(html: str, code: str) -> str:
    """The meter card of one feature."""
    match = re.search(rf'<article id="meter-{code}"(.*?)</article>', html, re.S)
    assert match, f"no meter card for {code}"
    return re.sub(r"\s+", " ", match.group(0))


def text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def page(client, url: str = "/usage") -> str:
    response = client.get(url)
    assert response.status_code == 200, response.status_code
    return response.get_data(as_text=True)


# Meters ---------------------------------------------------------------------------------------------


def test_usage_needs_a_login(client, catalog):
    response = client.get("/usage")
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    assert client.get("/usage/meters").status_code == 302


def test_free_plan_meters(alice_client, alice):
    quiz = card(page(alice_client), "quiz")
    assert "level-ok" in quiz and "<strong>0</strong> <small>/ 3 uses</small>" in quiz
    assert 'value="0" max="3"' in quiz and "3 left · resets on 28 Feb 2026" in quiz

    record(alice, "quiz", 3)
    html = page(alice_client, "/usage/meters")
    quiz = card(html, "quiz")
    assert "level-danger" in quiz and 'progress class="level-danger" value="3" max="3"' in quiz
    assert "<strong>3</strong> <small>/ 3 uses</small>" in quiz and "0 left" in quiz
    assert "Limit reached" in quiz
    assert "Unlimited" in card(html, "daily_quiz")
    exports = text(card(html, "exports"))
    assert "0 / 10 exports today" in exports and "resets in 15 h" in exports
    assert "Off" in card(html, "dark_mode")


def test_warning_level_from_80_percent(alice_client, alice):
    record(alice, "ask_question", 4)  # 4 of 5
    meter = card(page(alice_client, "/usage/meters"), "ask_question")
    assert "level-warning" in meter and "Running low" in meter


def test_meters_partial_refreshes_itself(alice_client):
    html = page(alice_client, "/usage/meters")
    assert html.lstrip().startswith("<section") and "<html" not in html
    root = re.search(r'<section id="meters"[^>]*>', html).group(0)
    assert 'hx-get="/usage/meters"' in root and 'hx-trigger="every 10s"' in root and 'hx-swap="outerHTML"' in root
    # The full page embeds the same block, so the first paint needs no request.
    assert '<section id="meters"' in page(alice_client)


def test_meters_do_not_depend_on_the_size_of_the_event_log(alice_client, alice, app):
    record(alice, "quiz", 2)
    feature_id = db.session.scalar(sa.select(Feature.id).where(Feature.code == "daily_quiz"))
    user_id = alice.id

    def statements_for_meters() -> list[str]:
        seen: list[str] = []

        def listener(conn, cursor, statement, parameters, context, executemany):
            seen.append(statement)

        sa.event.listen(db.engine, "before_cursor_execute", listener)
        try:
            html = page(alice_client, "/usage/meters")
        finally:
            sa.event.remove(db.engine, "before_cursor_execute", listener)
        assert "<strong>2</strong> <small>/ 3 uses</small>" in card(html, "quiz")
        return seen

    before = statements_for_meters()
    at = datetime(2026, 1, 31, 8, 0, tzinfo=timezone.utc)
    db.session.execute(sa.insert(UsageEvent), [
        {"user_id": user_id, "feature_id": feature_id, "quantity": 1, "idempotency_key": f"bulk-{n}",
         "source": "api", "occurred_at": at + timedelta(seconds=n)}
        for n in range(5000)
    ])
    db.session.commit()
    assert db.session.scalar(sa.select(sa.func.count()).select_from(UsageEvent)) == 5001
    after = statements_for_meters()
    assert len(after) == len(before)
    assert not any("usage_events" in s for s in before + after)


def test_business_usage_costs_and_pricing(alice_client, alice):
    switch_plan(alice, "business")
    record(alice, "api_calls", 10_500)
    record(alice, "seats", 150)
    html = page(alice_client)
    calls = text(card(html, "api_calls"))
    assert "10,500 calls this period" in calls and "$0.50 so far" in calls
    assert "Units 10,001–10,500 × 0.001" in calls
    seats = text(card(html, "seats"))
    assert "$1,200.00 so far" in seats and "150 units × 8.00 (units 101–500 tier)" in seats
    sms = text(card(html, "sms"))
    assert "$20.00 per 500 SMS" in sms and "billed at the end of the period" in sms
    # SMS are billed by consumption, so there is nothing to buy; Business sells no packages at all.
    assert 'id="buy"' not in html and "/usage/packages" not in html


# History ----------------------------------------------------------------------------------------------


def test_history_partial_returns_daily_totals(alice_client, alice, clock):
    clock.advance(days=-2)
    record(alice, "exports", 3)  # 29 Jan
    clock.advance(days=2)
    record(alice, "exports", 2)  # 31 Jan
    response = alice_client.get("/usage/history?feature=exports&days=7")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "<html" not in html and 'id="history-exports"' in html
    chart = json.loads(re.search(r"data-chart='([^']*)'", html).group(1))
    assert chart["labels"] == [f"2026-01-{d}" for d in range(25, 32)]
    assert chart["values"] == [0, 0, 0, 0, 3, 0, 2]
    rows = re.findall(r'<time datetime="([\d-]+)">[^<]*</time></td>\s*<td class="amount">([\d,]+)</td>', html)
    assert dict(rows)["2026-01-29"] == "3" and dict(rows)["2026-01-31"] == "2" and len(rows) == 7
    assert "5 exports in the last 7 days" in text(html)


def test_full_page_has_a_history_per_counted_feature(alice_client, alice):
    record(alice, "quiz", 1)
    html = page(alice_client, "/usage?days=7")
    assert 'id="history-quiz"' in html and 'id="history-exports"' in html and 'id="history-dark_mode"' not in html
    assert "Daily totals for the last 7 days" in html
    assert 'src="/static/vendor/chart.umd.js"' in html and "js/usage_chart.js" in html


@pytest.mark.parametrize("query, message", [
    ("feature=quiz&days=0", "from 1 to 90"),
    ("feature=quiz&days=91", "from 1 to 90"),
    ("feature=quiz&days=abc", "days"),
    ("feature=quiz&days=-3", "from 1 to 90"),
    ("days=7", "feature is required"),
    ("feature=nope&days=7", "no feature called"),
])
def test_history_refuses_bad_values(alice_client, query, message):
    response = alice_client.get(f"/usage/history?{query}")
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)


def test_usage_page_refuses_a_bad_range(alice_client):
    response = alice_client.get("/usage?days=365")
    assert response.status_code == 400 and "from 1 to 90" in response.get_data(as_text=True)


# Buying packages ------------------------------------------------------------------------------------------


@pytest.fixture
def basic_client(alice_client, alice, stripe_server):
    """Alice on Basic (1,000 tokens; 500 more for $8.00), logged in."""
    switch_plan(alice, "basic")
    return alice_client


def purchase_form(client) -> dict:
    html = page(client)
    form = re.search(r'<article id="buy-tokens".*?</form>', html, re.S).group(0)
    fields = dict(re.findall(r'name="(csrf_token|feature|token)" value="([^"]*)"', form))
    assert set(fields) == {"csrf_token", "feature", "token"}
    return fields


def tokens_allowance(user_id: int) -> int:
    db.session.expire_all()
    return meters.build(user_id).meter("tokens").allowance


def test_token_plan_offers_a_package_form(basic_client):
    html = page(basic_client)
    offer = text(re.search(r'<article id="buy-tokens".*?</article>', html, re.S).group(0))
    assert "500 tokens for $8.00" in offer
    assert 'type="number"' in html and 'min="1"' in html and 'max="100"' in html
    assert "/ 1,000 tokens" in text(card(html, "tokens"))


def test_buying_a_package_end_to_end(basic_client, alice):
    add_card(alice)
    user_id = alice.id
    fields = purchase_form(basic_client)
    response = basic_client.post("/usage/packages", data={**fields, "packages": "1"})
    assert response.status_code == 303 and response.headers["Location"].endswith("/usage#meter-tokens")
    html = page(basic_client)
    assert "Paid: 1 package added" in html
    tokens = text(card(html, "tokens"))
    assert "/ 1,500 tokens" in tokens and "Includes 500 prepaid tokens" in tokens
    assert tokens_allowance(user_id) == 1500
    invoice = db.session.scalar(sa.select(Invoice).where(Invoice.reason == "package"))
    assert invoice.status is InvoiceStatus.PAID and invoice.total == 800
    # Submitting the same form again (a double click) buys nothing more.
    assert basic_client.post("/usage/packages", data={**fields, "packages": "1"}).status_code == 303
    assert tokens_allowance(user_id) == 1500
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Invoice)) == 1


def test_wallet_pays_before_the_card(basic_client, alice):
    add_card(alice)
    wallet.credit(alice.id, 500, kind=EntryKind.CREDIT, reason="goodwill", idempotency_key="gw")
    db.session.commit()
    user_id = alice.id
    assert "Your wallet ($5.00) pays first" in text(page(basic_client))
    response = basic_client.post("/usage/packages", data={**purchase_form(basic_client), "packages": "2"})
    assert response.status_code == 303
    db.session.expire_all()
    assert wallet.get_wallet(user_id).balance == 0
    assert tokens_allowance(user_id) == 2000


def test_a_declined_card_says_so_and_adds_nothing(basic_client, alice):
    add_card(alice, DECLINING)
    user_id = alice.id
    response = basic_client.post("/usage/packages", data={**purchase_form(basic_client), "packages": "1"})
    assert response.status_code == 303
    html = page(basic_client)
    assert "Payment failed: Your card was declined." in html and "Nothing was added" in html
    assert "/ 1,000 tokens" in text(card(html, "tokens"))
    assert tokens_allowance(user_id) == 1000
    assert db.session.scalar(sa.select(Invoice.status)) is InvoiceStatus.VOID


def test_a_package_the_bank_must_confirm_goes_through_the_3d_secure_page(basic_client, alice, stripe_server):
    add_card(alice, NEEDS_3DS)
    response = basic_client.post("/usage/packages", data={**purchase_form(basic_client), "packages": "1"})
    assert response.status_code == 303 and re.fullmatch(r"/payments/\d+", response.headers["Location"])
    html = basic_client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Your bank asks you to confirm this card payment of $8.00 for your package" in text(html)
    assert tokens_allowance(alice.id) == 1000  # nothing until the bank says yes
    secret = re.search(r'var secret = "([^"]+)"', html).group(1)
    authenticate_3ds(stripe_server.url, secret, success=True)
    csrf = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html).group(1)
    done = basic_client.post(response.headers["Location"] + "/confirm", data={"csrf_token": csrf})
    assert done.status_code == 302
    assert tokens_allowance(alice.id) == 1500


@pytest.mark.parametrize("packages, message", [
    ("0", "Buy from 1 to 100 packages at a time."),
    ("101", "Buy from 1 to 100 packages at a time."),
    ("abc", "Not a valid integer value."),
    ("", "Enter how many packages to buy."),
])
def test_bad_package_counts_are_field_errors(basic_client, alice, packages, message):
    response = basic_client.post("/usage/packages", data={**purchase_form(basic_client), "packages": packages})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    form = re.search(r'<article id="buy-tokens".*?</article>', html, re.S).group(0)
    assert 'aria-invalid="true"' in form and message in form
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Invoice)) == 0


def test_a_feature_without_packages_is_refused(basic_client):
    fields = purchase_form(basic_client)
    response = basic_client.post("/usage/packages", data={**fields, "feature": "dark_mode", "packages": "1"})
    assert response.status_code == 422
    assert "cannot be bought in packages on the Basic plan" in response.get_data(as_text=True)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Invoice)) == 0


def test_a_tampered_token_is_refused_and_replaced(basic_client):
    fields = purchase_form(basic_client)
    response = basic_client.post("/usage/packages", data={**fields, "token": "not-a-uuid", "packages": "1"})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert "The form is out of date; reload the page." in html
    fresh = re.search(r'name="token" value="([^"]*)"', html).group(1)
    assert re.fullmatch(r"[0-9a-f-]{36}", fresh)  # the re-rendered form can be submitted as it is
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Invoice)) == 0


def test_buying_needs_the_csrf_token(basic_client, alice):
    add_card(alice)
    fields = purchase_form(basic_client)
    del fields["csrf_token"]
    response = basic_client.post("/usage/packages", data={**fields, "packages": "1"})
    assert response.status_code == 400
    assert tokens_allowance(alice.id) == 1000


def test_a_purchase_form_on_a_plan_without_packages_says_why(alice_client, alice):
    token = re.search(r'name="csrf-token" content="([^"]+)"', page(alice_client)).group(1)
    response = alice_client.post("/usage/packages", data={
        "csrf_token": token, "feature": "quiz", "packages": "1", "token": "12345678-1234-4234-8234-123456789012"})
    assert response.status_code == 422
    alert = re.search(r'<p class="flash flash-error" role="alert">(.*?)</p>', response.get_data(as_text=True)).group(1)
    assert alert == "Quiz cannot be bought in packages on the Free plan"
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Invoice)) == 0
