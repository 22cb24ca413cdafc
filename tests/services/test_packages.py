"""Prepaid packages: quoted purely, invoiced, paid wallet first then card, added to the allowance once."""
from __future__ import annotations

from decimal import Decimal

import pytest
import sqlalchemy as sa

from portal.billing.lifecycle import Transition
from portal.extensions import db
from portal.models import (
    EntryKind, Invoice, InvoiceStatus, LineKind, Payment, PaymentStatus, Plan, PlanFeature, UsageCounter,
)
from portal.services import usage, wallet
from portal.services.subscriptions import live_subscription, transition
from portal.services.usage import meters
from portal.services.usage import packages
from portal.services.usage.packages import Offer, PackageError
from tests.conftest import add_card, both_databases

DECLINING = "4000000000000341"
NEEDS_3DS = "4000002760003184"
TOKENS = Offer("tokens", "AI tokens", "token", 500, Decimal("8.00"), 800, "USD")


def switch_plan(user, code: str) -> None:
    plan = db.session.scalar(sa.select(Plan).where(Plan.code == code))
    transition(live_subscription(user.id), Transition.CHANGE_PLAN, reason="test", plan_id=plan.id)
    db.session.commit()


@pytest.fixture
def buyer(alice, stripe_server):
    """The demo customer on Basic (1,000 tokens a period, 500 more for $8.00)."""
    switch_plan(alice, "basic")
    return alice


def allowance(user) -> int:
    db.session.expire_all()
    return meters.build(user.id).meter("tokens").allowance


def _plan_feature(plan_code: str, feature_code: str) -> PlanFeature:
    plan = db.session.scalar(sa.select(Plan).where(Plan.code == plan_code))
    return next(pf for pf in plan.features if pf.feature.code == feature_code)


def _offer(plan_code: str, feature_code: str) -> packages.Offer | None:
    pf = _plan_feature(plan_code, feature_code)
    return packages.offer_for(pf.feature, pf, "USD")


# Quotes and offers: no payment involved ---------------------------------------------------------


@pytest.mark.parametrize("count, amount, description", [
    (1, 800, "1 × 500 tokens"), (2, 1600, "2 × 500 tokens"), (100, 80_000, "100 × 500 tokens"),
])
def test_quote_is_packages_times_the_package_price(count, amount, description):
    quote = packages.quote(TOKENS, count)
    assert (quote.amount, quote.units, quote.description) == (amount, count * 500, description)
    assert quote.breakdown[0]["units"] == count


def test_quote_rounds_once_half_up():
    offer = Offer("sms", "SMS", "SMS", 100, Decimal("0.125"), 13, "USD")
    assert packages.quote(offer, 3).amount == 38  # 0.375 → 38 cents, not 3 × 13


@pytest.mark.parametrize("count", [0, 101, -1, True, 2.0, "2"])
def test_quote_refuses_bad_counts(count):
    with pytest.raises(PackageError):
        packages.quote(TOKENS, count)


def test_only_quota_features_priced_in_packages_are_offered(catalog):
    offer = _offer("basic", "tokens")
    assert offer == Offer("tokens", "AI tokens", "token", 500, Decimal("8"), 800, "USD")
    assert _offer("pro", "tokens").price == 700
    # SMS on Business is priced in packages but billed in arrears: nothing to prepay.
    assert _offer("business", "sms") is None
    assert _offer("business", "tokens") is None  # FLAT overage
    assert _offer("free", "quiz") is None


# Buying ---------------------------------------------------------------------------------------------


@both_databases
def test_buying_a_package_raises_this_periods_allowance(buyer):
    add_card(buyer)
    assert allowance(buyer) == 1000
    outcome = packages.buy(buyer, "tokens", 1, "11111111-1111-4111-8111-111111111111")
    assert outcome.status == "paid", outcome.error
    assert allowance(buyer) == 1500
    invoice = db.session.scalar(sa.select(Invoice).where(Invoice.reason == "package"))
    assert invoice.status is InvoiceStatus.PAID and invoice.total == 800 and invoice.amount_paid == 800
    [line] = invoice.lines
    assert (line.kind, line.description, line.quantity, line.amount) == (LineKind.PACKAGE, "1 × 500 tokens", 1, 800)
    sub = live_subscription(buyer.id)
    assert (line.period_start, line.period_end) == (sub.current_period_start, sub.current_period_end)
    card = db.session.scalar(sa.select(Payment).where(Payment.provider == "stripe"))
    assert card.status is PaymentStatus.SUCCEEDED and card.amount == 800
    # The prepaid units let the customer pass the plan's limit.
    assert usage.record(buyer.id, "tokens", 1400).allowed


@both_databases
def test_the_wallet_pays_first(buyer):
    add_card(buyer)
    wallet.credit(buyer.id, 300, kind=EntryKind.CREDIT, reason="goodwill", idempotency_key="gw")
    db.session.commit()
    outcome = packages.buy(buyer, "tokens", 2, "22222222-2222-4222-8222-222222222222")
    assert outcome.status == "paid"
    db.session.expire_all()
    paid = {p.provider: p.amount for p in db.session.scalars(sa.select(Payment))}
    assert paid == {"wallet": 300, "stripe": 1300}
    assert wallet.get_wallet(buyer.id).balance == 0
    assert allowance(buyer) == 2000


def test_a_full_wallet_needs_no_card(buyer):
    wallet.credit(buyer.id, 2000, kind=EntryKind.CREDIT, reason="goodwill", idempotency_key="gw")
    db.session.commit()
    assert packages.buy(buyer, "tokens", 1, "33333333-3333-4333-8333-333333333333").status == "paid"
    db.session.expire_all()
    assert [p.provider for p in db.session.scalars(sa.select(Payment))] == ["wallet"]
    assert wallet.get_wallet(buyer.id).balance == 1200
    assert allowance(buyer) == 1500


@both_databases
def test_a_declined_card_adds_nothing_and_returns_the_wallet_part(buyer):
    add_card(buyer, DECLINING)
    wallet.credit(buyer.id, 300, kind=EntryKind.CREDIT, reason="goodwill", idempotency_key="gw")
    db.session.commit()
    outcome = packages.buy(buyer, "tokens", 1, "44444444-4444-4444-8444-444444444444")
    assert outcome.status == "failed" and outcome.error.code == "card_declined"
    assert "declined" in outcome.error.message
    assert allowance(buyer) == 1000
    assert db.session.scalar(sa.select(Invoice.status)) is InvoiceStatus.VOID
    assert wallet.get_wallet(buyer.id).balance == 300
    assert db.session.scalar(sa.select(sa.func.sum(UsageCounter.bonus))) in (None, 0)


def test_no_card_and_an_empty_wallet_is_refused_cleanly(buyer):
    outcome = packages.buy(buyer, "tokens", 1, "55555555-5555-4555-8555-555555555555")
    assert outcome.status == "failed" and outcome.error.code == "no_payment_method"
    assert allowance(buyer) == 1000
    assert db.session.scalar(sa.select(Invoice.status)) is InvoiceStatus.VOID


def test_a_card_that_needs_authentication_adds_nothing_yet(buyer):
    add_card(buyer, NEEDS_3DS)
    outcome = packages.buy(buyer, "tokens", 1, "66666666-6666-4666-8666-666666666666")
    assert outcome.status == "requires_action" and outcome.client_secret
    assert allowance(buyer) == 1000
    assert db.session.scalar(sa.select(Invoice.status)) is InvoiceStatus.OPEN
    # The same form submitted again reports the same state and charges nothing new.
    again = packages.buy(buyer, "tokens", 1, "66666666-6666-4666-8666-666666666666")
    assert again.status == "requires_action"
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Payment)) == 1


def test_the_same_form_token_buys_once(buyer):
    add_card(buyer)
    token = "77777777-7777-4777-8777-777777777777"
    assert packages.buy(buyer, "tokens", 1, token).status == "paid"
    assert packages.buy(buyer, "tokens", 1, token).status == "paid"
    assert allowance(buyer) == 1500
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Invoice)) == 1


def test_a_failed_token_replays_as_failed(buyer):
    add_card(buyer, DECLINING)
    token = "88888888-8888-4888-8888-888888888888"
    assert packages.buy(buyer, "tokens", 1, token).status == "failed"
    again = packages.buy(buyer, "tokens", 1, token)
    assert again.status == "failed" and "declined" in again.error.message
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Payment)) == 1


def test_features_without_packages_cannot_be_bought(alice):
    with pytest.raises(PackageError, match="cannot be bought in packages on the Free plan"):
        packages.buy(alice, "quiz", 1, "99999999-9999-4999-8999-999999999999")
    with pytest.raises(PackageError, match="no feature called"):
        packages.buy(alice, "nope", 1, "99999999-9999-4999-8999-999999999999")
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Invoice)) == 0
