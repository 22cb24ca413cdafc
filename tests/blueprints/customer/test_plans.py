"""Plans page: the demo catalogue side by side, the price calculator (htmx partial and full page)."""
from __future__ import annotations

import re
from decimal import Decimal

import pytest
import sqlalchemy as sa

from portal.billing.estimate import Allowance, PlanTerms, estimate_plan
from portal.billing.pricing import PackagePricing, Tier, TieredPricing, VolumePricing
from portal.extensions import db
from portal.models import Plan

HX = {"HX-Request": "true"}


def _card(html: str, code: str) -> str:
    """The HTML of one plan's card."""
    match = re.search(rf'<article class="plan-card[^"]*" id="plan-{code}">(.*?)</article>', html, re.S)
    assert match, f"no card for {code}"
    return match.group(1)


def _estimate(html: str, code: str) -> str:
    match = re.search(rf'<article class="estimate[^"]*" id="estimate-{code}">(.*?)</article>', html, re.S)
    assert match, f"no estimate for {code}"
    return match.group(1)


def _lines(fragment: str) -> dict[str, str]:
    """An estimate's lines: label → amount."""
    rows = re.findall(r'<tr>\s*<td>\s*(.*?)\s*(?:<ul|</td>).*?<td class="amount">(.*?)</td>', fragment, re.S)
    return {_text(label): _text(amount) for label, amount in rows}


def _text(fragment: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", fragment)).strip()


def test_every_public_plan_is_listed_with_its_price_interval_and_limits(alice_client):
    html = alice_client.get("/plans").get_data(as_text=True)
    free, premium, basic = (_text(_card(html, c)) for c in ("free", "premium", "basic"))
    business_html = _card(html, "business")
    business = _text(business_html)

    assert "$0.00 / month" in free and "$9.99 / month" in premium
    assert "$15.00 / 30 days" in basic and "$40.00 / 30 days" in _text(_card(html, "pro"))
    assert "$49.00 / month" in business
    # QUOTA limits per billing period; RATE per window; BOOLEAN on/off.
    assert "Quiz 3 per month" in free and "Pair quiz 1 per month" in free and "Daily quiz Unlimited" in free
    assert "Exports 10 per day" in free and "Dark mode ✗ Not included" in free
    assert "Quiz Unlimited" in premium and "Dark mode ✓ Included" in premium
    # Token bundle: a quota with package top-ups.
    assert "AI tokens 1,000 per 30 days" in basic and "top up: 500 tokens for $8.00" in basic
    # Usage pricing: package, flat with free units, tier tables, overage.
    assert "500 SMS for $20.00" in business
    assert "$0.0005 per email after 1,000 free" in business
    assert "then $0.01 per token (overage)" in business
    tiers = re.findall(r'<table class="tiers">(.*?)</table>', business_html, re.S)
    assert len(tiers) == 2  # API calls (graduated) and seats (volume)
    api_calls = _text(tiers[0])
    assert "Graduated tiers" in api_calls
    assert "1–10,000 Free" in api_calls and "10,001–100,000 $0.001 each" in api_calls
    assert "100,001 and up $0.0005 each" in api_calls
    assert "Volume tiers" in _text(tiers[1]) and "101–500 $8.00 each" in _text(tiers[1])


def test_hidden_and_archived_plans_are_not_listed(alice_client):
    db.session.execute(sa.update(Plan).where(Plan.code == "pro").values(is_archived=True))
    db.session.execute(sa.update(Plan).where(Plan.code == "basic").values(is_public=False))
    html = alice_client.get("/plans").get_data(as_text=True)
    assert 'id="plan-premium"' in html
    assert 'id="plan-pro"' not in html and 'id="plan-basic"' not in html


def test_the_current_plan_is_marked_and_others_offer_up_or_down(alice_client):
    html = alice_client.get("/plans").get_data(as_text=True)
    free = _card(html, "free")
    assert "Current plan" in free and "/subscription/change/free" not in free
    premium = _card(html, "premium")
    assert "Current plan" not in premium
    assert 'href="/subscription/change/premium"' in premium and "Upgrade to Premium" in premium
    assert html.count("Current plan") == 1


def test_on_a_paid_plan_cheaper_plans_are_downgrades(alice_client, alice):
    from portal.services.subscriptions import live_subscription

    sub = live_subscription(alice.id)
    sub.plan_id = db.session.scalar(sa.select(Plan.id).where(Plan.code == "business"))
    html = alice_client.get("/plans").get_data(as_text=True)
    assert "Current plan" in _card(html, "business")
    assert "Downgrade to Premium" in _card(html, "premium")
    assert "Downgrade to Free" in _card(html, "free")


def test_calculator_partial_prices_business_seats_and_api_call_tiers(alice_client):
    response = alice_client.get("/plans/estimate?seats=150&api_calls=250000", headers=HX)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "<html" not in html and html.lstrip().startswith("{#") is False
    assert 'id="calculator"' in html
    business = _estimate(html, "business")
    assert _lines(business) == {
        "Business plan, every month": "$49.00",
        # Graduated: 10,000 free + 90,000 × $0.001 + 150,000 × $0.0005 = $165.
        "API calls: 250,000 calls": "$165.00",
        # Volume: 150 seats reach the 101–500 tier, every seat at $8.
        "Seats: 150 seats": "$1,200.00",
    }
    assert "Units 10,001–100,000 × 0.001 = $90.00" in _text(business)  # the breakdown is shown
    assert "$1,414.00 / month" in _text(business)
    # Plans without those features say so instead of pricing them.
    premium = _text(_estimate(html, "premium"))
    assert "$9.99 / month" in premium and "Not included in Premium: API calls, Seats" in premium
    assert "Current plan" in _estimate(html, "free")


def test_calculator_prices_token_top_ups_and_overage(alice_client):
    html = alice_client.get("/plans/estimate?tokens=3000", headers=HX).get_data(as_text=True)
    # Basic includes 1,000; 2,000 more are 4 packages of 500 at $8.
    assert "$47.00 / 30 days" in _text(_estimate(html, "basic"))
    # Pro includes 5,000: nothing extra.
    assert "$40.00 / 30 days" in _text(_estimate(html, "pro"))
    # Business includes 2,000; 1,000 overage tokens at $0.01.
    assert "$59.00 / month" in _text(_estimate(html, "business"))


def test_calculator_without_javascript_answers_with_the_whole_page(alice_client):
    response = alice_client.get("/plans/estimate?seats=150")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "<html" in html and 'id="plan-free"' in html  # the full page, cards and all
    assert "$1,200.00" in _estimate(html, "business")
    # The form submits to the same place when htmx is not there to intercept it.
    assert 'action="/plans/estimate#calculator"' in html and 'hx-get="/plans/estimate"' in html


@pytest.mark.parametrize("value, message", [
    ("-5", "Enter a whole number from 0 to 1,000,000,000."),
    ("1.5", "Enter a whole number, like 1500"),
    ("lots", "Enter a whole number, like 1500"),
    ("99999999999999999999", "Enter a whole number from 0 to 1,000,000,000."),
    ("9" * 5000, "Enter a whole number"),
])
def test_bad_calculator_input_gives_field_errors_not_a_500(alice_client, value, message):
    for headers in (HX, {}):
        response = alice_client.get("/plans/estimate", query_string={"seats": value, "sms": "10"}, headers=headers)
        assert response.status_code == 422
        html = response.get_data(as_text=True)
        assert message in html
        seats = re.search(r'<input[^>]*name="seats"[^>]*>', html).group(0)
        assert 'aria-invalid="true"' in seats
        assert 'id="estimate-business"' not in html  # no totals from bad numbers


def test_plans_page_works_for_visitors(client, catalog):
    html = _text(client.get("/plans").get_data(as_text=True))
    assert "$9.99 / month" in html and "Current plan" not in html and "Get started" in html


def test_estimator_is_pure_and_rounds_each_feature_once():
    terms = PlanTerms("biz", "Biz", 4900, "USD", "month", (
        Allowance("api_calls", "API calls", "call", pricing=TieredPricing([
            Tier(1, 10_000, Decimal("0")), Tier(10_001, 100_000, Decimal("0.001")),
            Tier(100_001, None, Decimal("0.0005"))])),
        Allowance("seats", "Seats", "seat", pricing=VolumePricing([
            Tier(1, 100, Decimal("10")), Tier(101, 500, Decimal("8")), Tier(501, None, Decimal("6"))])),
        Allowance("tokens", "Tokens", "token", included=1000, kind="package",
                  pricing=PackagePricing(500, Decimal("8"))),
        Allowance("quiz", "Quiz", "use", included=3),
    ))
    estimate = estimate_plan(terms, {"api_calls": 10_001, "seats": 150, "tokens": 1001, "quiz": 2})
    amounts = [line.amount for line in estimate.lines]
    assert amounts == [4900, 0, 120_000, 800]  # one api call at $0.001 rounds to 0 cents, once
    assert estimate.total == 125_700 and estimate.fits
    over = estimate_plan(terms, {"quiz": 4, "sms": 1}, {"sms": "SMS"})
    assert over.problems == ("Not included in Biz: SMS", "Quiz: 4 is over the limit of 3")
