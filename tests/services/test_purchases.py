"""The one purchase path (DESIGN §3.9–3.10), scenario by scenario: the audit's three double charges and
three ways of losing money, and the smaller defects beside them.

Every scenario ends with `assert_money_consistent`: the charges Stripe (localstripe) kept are
exactly the paid purchases' card parts, and each wallet's ledger adds up to its balance. Faults
Stripe cannot produce (a timeout, a change landing while the bank answers) are injected at the
HTTP layer under stripe-python (tests.conftest.FaultyStripeHTTP), never by replacing our code.
"""
from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from portal.billing.lifecycle import SubscriptionStatus, Transition
from portal.billing.periods import IntervalUnit
from portal.extensions import db
from portal.models import (
    EntryKind, ErrorStatus, Invoice, InvoiceStatus, LineKind, OperationError, Payment, PaymentStatus, Plan,
    RetryStrategy, Subscription, User, WalletEntry,
)
from portal.payments import gateway
from portal.services import catalog, invoices, purchases, retries, usage, wallet
from portal.services.invoices import LineDraft
from portal.services.purchases.effects import Nothing
from portal.services.subscriptions import changes as plan_changes
from portal.services.subscriptions import live_subscription, transition
from portal.services.usage import packages
from portal.services.wallet import topups
from tests.conftest import (
    REPO_ROOT, add_card, assert_money_consistent, authenticate_3ds, both_databases, charge_at_stripe, open_topup,
    refunded_at_stripe, run_outbox_jobs, stripe_intents,
)

THREE_D_SECURE = "4000002500003155"


@pytest.fixture
def alice(catalog, stripe_server) -> User:
    return db.session.scalar(sa.select(User).where(User.email == "demo@portal.test"))


def _plan(code: str) -> Plan:
    return db.session.scalar(sa.select(Plan).where(Plan.code == code))


def _sub(user: User) -> Subscription:
    db.session.expire_all()
    return live_subscription(user.id)


def _bank_says_yes(stripe_server, payment: Payment) -> None:
    authenticate_3ds(stripe_server.url, gateway.retrieve_intent(payment.stripe_payment_intent_id).client_secret)


def _waiting_for_the_bank(user: User, token: str, plan: str = "premium") -> purchases.Outcome:
    """An upgrade paid with a card whose bank asks for 3-D Secure, left at that question."""
    outcome = plan_changes.upgrade(user, _plan(plan), token=token)
    db.session.commit()
    assert outcome.status == "requires_action"
    return outcome


def _move_plan(user: User, code: str, reason: str = "changed by staff") -> None:
    """Another actor changes the subscription (staff, or a renewal) while a payment waits."""
    sub = live_subscription(user.id)
    transition(sub, Transition.CHANGE_PLAN, reason=reason, plan_id=_plan(code).id)
    db.session.commit()


# --- 1. two open upgrades, two charges ---------------------------------------------------------------

def test_a_second_upgrade_while_the_first_waits_for_3d_secure_is_refused_and_charges_once(alice, stripe_server):
    add_card(alice, THREE_D_SECURE)
    first = _waiting_for_the_bank(alice, "tab-1")
    # A second tab (or Basic→Pro pending, then Basic→Business): refused while the first is open.
    with pytest.raises(purchases.PurchaseInProgress) as busy:
        plan_changes.upgrade(alice, _plan("business"), token="tab-2")
    db.session.rollback()
    assert busy.value.invoice.id == first.invoice.id and busy.value.payment.id == first.payment.id
    _bank_says_yes(stripe_server, first.payment)
    assert purchases.confirm(first.payment).status == "paid"
    db.session.commit()
    assert _sub(alice).plan.code == "premium"
    assert len(stripe_intents(alice)) == 1  # the second tab never reached Stripe
    assert_money_consistent(alice)


def test_cancelling_the_waiting_upgrade_lets_another_one_through_and_the_first_can_never_be_paid(
        alice, stripe_server):
    add_card(alice, THREE_D_SECURE)
    first = _waiting_for_the_bank(alice, "tab-1")
    intent_id = first.payment.stripe_payment_intent_id
    assert purchases.cancel_purchase(first.invoice, "cancelled by the customer").status == "failed"
    db.session.commit()
    assert gateway.retrieve_intent(intent_id).status == "canceled"  # the bank can no longer take it
    good = add_card(alice)
    from portal.services.payments import cards as payment_methods

    payment_methods.set_default(good)
    db.session.commit()
    assert plan_changes.upgrade(alice, _plan("business"), token="tab-2").status == "paid"
    db.session.commit()
    assert _sub(alice).plan.code == "business"
    assert db.session.get(Invoice, first.invoice.id).status is InvoiceStatus.VOID
    assert_money_consistent(alice)


def test_a_late_settlement_after_the_subscription_moved_on_is_refunded_not_applied(alice, stripe_server):
    add_card(alice, THREE_D_SECURE)
    first = _waiting_for_the_bank(alice, "tab-1")
    period_before = _sub(alice).current_period_start
    _move_plan(alice, "business")
    _bank_says_yes(stripe_server, first.payment)
    outcome = purchases.confirm(first.payment)
    db.session.commit()
    assert outcome.status == "refunded"
    sub = _sub(alice)
    assert sub.plan.code == "business" and sub.current_period_start == period_before  # not moved back
    assert run_outbox_jobs() == ["worker.payments.refund_payment", "worker.emails.send_email"]  # and its email
    payment = db.session.get(Payment, first.payment.id)
    assert payment.status is PaymentStatus.REFUNDED and payment.amount_refunded == 999
    assert refunded_at_stripe(payment.stripe_payment_intent_id) == 999
    error = db.session.scalar(sa.select(OperationError).where(OperationError.operation_type == "refund"))
    assert error.status is ErrorStatus.RESOLVED and error.context["payment_id"] == payment.id
    assert "no longer on the plan" in error.context["why"]
    assert_money_consistent(alice)


@both_databases
def test_the_database_itself_refuses_a_second_open_plan_change(alice):
    sub = live_subscription(alice.id)

    def open_upgrade():
        with db.session.begin_nested():
            invoices.create_invoice(alice.id, "USD", [LineDraft(LineKind.PLAN, "Premium", 999)], reason="upgrade",
                                    subscription_id=sub.id)

    open_upgrade()
    db.session.commit()
    with pytest.raises(IntegrityError):
        open_upgrade()
    # Once it is closed, the next one may open; other purchases (packages) are not limited.
    db.session.execute(sa.update(Invoice).values(status=InvoiceStatus.VOID))
    open_upgrade()
    for _ in range(2):
        with db.session.begin_nested():
            invoices.create_invoice(alice.id, "USD", [LineDraft(LineKind.PACKAGE, "Tokens", 800)], reason="package",
                                    subscription_id=sub.id)
    db.session.commit()


# --- 2. the wallet paying an invoice whose card payment is in flight ---------------------------------

def test_resubmitting_after_a_top_up_never_pays_an_invoice_whose_card_is_in_flight(alice, stripe_server):
    add_card(alice, THREE_D_SECURE)
    first = _waiting_for_the_bank(alice, "same-form")
    wallet.credit(alice.id, 5000, kind=EntryKind.TOPUP, reason="top-up in another tab", idempotency_key="t")
    db.session.commit()
    again = plan_changes.upgrade(alice, _plan("premium"), token="same-form")  # the same form, resubmitted
    db.session.commit()
    assert again.status == "requires_action" and again.payment.id == first.payment.id
    invoice = db.session.get(Invoice, first.invoice.id)
    assert invoice.status is InvoiceStatus.OPEN and invoice.amount_paid == 0
    assert wallet.get_wallet(alice.id).balance == 5000
    _bank_says_yes(stripe_server, first.payment)
    assert purchases.confirm(first.payment).status == "paid"
    db.session.commit()
    assert wallet.get_wallet(alice.id).balance == 5000 and _sub(alice).plan.code == "premium"
    assert_money_consistent(alice)


# --- 3. a timeout is not a decline -------------------------------------------------------------------

def test_a_charge_that_never_reached_stripe_is_sent_again_with_the_same_key(alice, faulty_stripe):
    add_card(alice)
    faulty_stripe.fault = lambda method, path: "unsent" if (method, path) == ("POST", "/v1/payment_intents") else None
    outcome = plan_changes.upgrade(alice, _plan("premium"), token="t")
    db.session.commit()
    assert outcome.status == "unknown" and outcome.error.code == "network"
    payment = db.session.get(Payment, outcome.payment.id)
    assert payment.status is PaymentStatus.PENDING and payment.failure_code is None
    assert db.session.get(Invoice, payment.invoice_id).status is InvoiceStatus.OPEN
    assert stripe_intents(alice) == []
    faulty_stripe.fault = lambda method, path: None
    assert purchases.confirm(payment).status == "paid"  # "check again"
    db.session.commit()
    keys = faulty_stripe.keys_sent("/v1/payment_intents")
    assert len(keys) == 4 and set(keys) == {payment.stripe_idempotency_key}  # 3 lost tries, 1 retry: one key
    assert _sub(alice).plan.code == "premium" and len(stripe_intents(alice)) == 1
    assert_money_consistent(alice)


def test_a_lost_answer_keeps_the_wallet_part_held_and_the_reconciler_settles_it(alice, faulty_stripe, clock):
    add_card(alice)
    wallet.credit(alice.id, 300, kind=EntryKind.CREDIT, reason="goodwill", idempotency_key="gw")
    db.session.commit()
    faulty_stripe.fault = lambda method, path: "lost" if (method, path) == ("POST", "/v1/payment_intents") else None
    outcome = plan_changes.upgrade(alice, _plan("premium"), token="t")
    db.session.commit()
    assert outcome.status == "unknown"
    assert len(stripe_intents(alice)) == 1  # Stripe did charge; the three tries were one charge (one key)
    assert wallet.get_wallet(alice.id).balance == 0  # the wallet part stays with the open invoice
    faulty_stripe.fault = lambda method, path: None
    from worker.payments import reconcile_payments
    from worker.retries import process_pending_retries

    db.session.commit()  # the job runs in its own session, as in a worker
    [check] = db.session.scalars(sa.select(OperationError)).all()
    assert (check.operation_type, check.strategy, check.attempts) == ("payment_check", RetryStrategy.EXPONENTIAL, 1)
    assert check.next_retry_at <= clock.now() + timedelta(seconds=60)  # the first backoff is at most a minute
    clock.advance(minutes=31)
    db.session.commit()
    assert reconcile_payments() == {}  # the charge's check is the retries' job, not the reconciler's
    assert process_pending_retries() == {"succeeded": 1}
    assert _sub(alice).plan.code == "premium"
    db.session.refresh(check)
    assert check.status is ErrorStatus.RESOLVED
    assert len(stripe_intents(alice)) == 1
    assert_money_consistent(alice)


# --- 7. pending payments never live forever -----------------------------------------------------------

def _reconcile(clock, minutes: int = 31) -> dict[str, int]:
    from worker.payments import reconcile_payments

    clock.advance(minutes=minutes)
    db.session.commit()  # the job runs in its own session, as in a worker
    return reconcile_payments()


def test_a_charge_made_just_before_a_crash_is_settled_by_the_reconciler(alice, clock):
    add_card(alice)
    payment = open_topup(alice, 2500)  # committed as pending; then Stripe charged; then the process died
    charge_at_stripe(payment)
    assert wallet.get_wallet(alice.id).balance == 0
    assert _reconcile(clock, minutes=5) == {}  # not yet: it might still be in flight
    assert _reconcile(clock) == {"settled": 1}
    assert wallet.get_wallet(alice.id).balance == 2500
    assert _reconcile(clock) == {}  # and nothing twice
    assert_money_consistent(alice)


def test_a_payment_that_never_reached_stripe_is_failed_and_releases_the_wallet_part(alice, faulty_stripe, clock):
    add_card(alice)
    wallet.credit(alice.id, 300, kind=EntryKind.CREDIT, reason="goodwill", idempotency_key="gw")
    db.session.commit()
    faulty_stripe.fault = lambda method, path: "unsent" if (method, path) == ("POST", "/v1/payment_intents") else None
    outcome = plan_changes.upgrade(alice, _plan("premium"), token="t")
    db.session.commit()
    assert outcome.status == "unknown" and wallet.get_wallet(alice.id).balance == 0
    faulty_stripe.fault = lambda method, path: None
    # A process that died before sending leaves no check behind: the reconciler is what finds it.
    assert purchases.payment_check_key(outcome.payment) == f"payment-check:{outcome.payment.id}"
    retries.give_up(purchases.payment_check_key(outcome.payment))
    db.session.commit()
    assert _reconcile(clock) == {"failed": 1}
    invoice = db.session.get(Invoice, outcome.invoice.id)
    assert invoice.status is InvoiceStatus.VOID and wallet.get_wallet(alice.id).balance == 300
    assert db.session.get(Payment, outcome.payment.id).failure_code == "not_submitted"
    assert _sub(alice).plan.code == "free" and stripe_intents(alice) == []
    assert_money_consistent(alice)


def test_a_payment_that_never_reached_stripe_is_sent_again_by_its_check_with_the_same_key(alice, faulty_stripe,
                                                                                          clock):
    from worker.retries import process_pending_retries

    add_card(alice)
    faulty_stripe.fault = lambda method, path: "unsent" if (method, path) == ("POST", "/v1/payment_intents") else None
    outcome = plan_changes.upgrade(alice, _plan("premium"), token="t")
    db.session.commit()
    assert outcome.status == "unknown" and stripe_intents(alice) == []
    clock.advance(minutes=2)
    db.session.commit()
    assert process_pending_retries() == {"failed": 1}  # Stripe still unreachable: a later, jittered try
    check = db.session.scalar(sa.select(OperationError))
    assert check.attempts == 2 and check.status is ErrorStatus.PENDING
    faulty_stripe.fault = lambda method, path: None
    clock.set(check.next_retry_at)
    db.session.commit()
    assert process_pending_retries() == {"succeeded": 1}
    assert _sub(alice).plan.code == "premium"
    [intent] = stripe_intents(alice)
    assert intent.status == "succeeded" and intent.amount == 999
    assert_money_consistent(alice)


def test_an_abandoned_3d_secure_is_cancelled_at_stripe_and_frees_the_subscription(alice, stripe_server, clock):
    add_card(alice, THREE_D_SECURE)
    wallet.credit(alice.id, 300, kind=EntryKind.CREDIT, reason="goodwill", idempotency_key="gw")
    db.session.commit()
    left = _waiting_for_the_bank(alice, "t")
    assert wallet.get_wallet(alice.id).balance == 0
    assert _reconcile(clock) == {"canceled": 1}
    assert gateway.retrieve_intent(left.payment.stripe_payment_intent_id).status == "canceled"
    assert db.session.get(Invoice, left.invoice.id).status is InvoiceStatus.VOID
    assert wallet.get_wallet(alice.id).balance == 300
    # The customer may upgrade again (the open plan change is gone); the bank can no longer take the first.
    again = plan_changes.upgrade(alice, _plan("premium"), token="u")
    db.session.commit()
    assert again.status == "requires_action" and again.invoice.id != left.invoice.id
    assert_money_consistent(alice)


def test_a_purchase_stopped_half_way_is_released_by_the_reconciler(alice, clock):
    sub = live_subscription(alice.id)
    with db.session.begin_nested():  # what a crash between writing the invoice and the payment leaves
        invoices.create_invoice(alice.id, "USD", [LineDraft(LineKind.PLAN, "Premium", 999)], reason="upgrade",
                                subscription_id=sub.id, purchase={"type": "plan_change", "subscription_id": sub.id,
                                                                  "from_plan_id": sub.plan_id, "plan_id": 2,
                                                                  "period_start": clock.now().isoformat(),
                                                                  "period_end": clock.now().isoformat()})
    invoices.create_invoice(alice.id, "USD", [LineDraft(LineKind.PLAN, "By hand", 500)], reason="manual")
    db.session.commit()
    assert _reconcile(clock) == {"released": 1}
    statuses = dict(db.session.execute(sa.select(Invoice.reason, Invoice.status)).all())
    assert statuses == {"upgrade": InvoiceStatus.VOID, "manual": InvoiceStatus.OPEN}  # staff's own stays open


# --- 4. trials and the credit for unused time --------------------------------------------------------

@pytest.fixture
def annual(catalog) -> Plan:
    plan = catalog_plan("annual", "Annual", 9000, IntervalUnit.YEAR, trial_days=14)
    db.session.commit()
    return plan


def catalog_plan(code: str, name: str, price: int, unit: IntervalUnit, trial_days: int = 0) -> Plan:
    plan = catalog.create_plan(code, name, price_amount=price, interval_unit=unit, interval_count=1)
    plan.trial_days = trial_days
    db.session.flush()
    return plan


def test_upgrading_during_a_trial_credits_nothing_for_time_never_paid_for(alice, annual, clock):
    sub = live_subscription(alice.id)
    sub.plan_id, sub.status = annual.id, SubscriptionStatus.TRIALING
    sub.current_period_end = sub.trial_end = clock.now() + timedelta(days=14)
    db.session.commit()
    clock.advance(days=2)
    change = plan_changes.preview(alice, _plan("premium"))
    assert change.proration.credit == 0 and change.amount_due == 999 and change.credit_to_wallet == 0
    add_card(alice)
    assert plan_changes.upgrade(alice, _plan("premium"), token="t").status == "paid"
    db.session.commit()
    assert wallet.get_wallet(alice.id).balance == 0
    assert_money_consistent(alice)


def test_the_unused_time_credit_is_what_was_invoiced_not_the_plans_current_price(alice, clock):
    add_card(alice)
    assert plan_changes.upgrade(alice, _plan("premium"), token="a").status == "paid"  # $9.99 for 31 Jan–28 Feb
    db.session.commit()
    _plan("premium").price_amount = 1999  # staff raise the price mid-period
    db.session.commit()
    clock.advance(days=14)  # half the period used
    change = plan_changes.preview(alice, _plan("business"))
    assert change.proration.credit == 500  # half of what was invoiced ($9.99), not of $19.99
    assert plan_changes.upgrade(alice, _plan("business"), token="b").status == "paid"
    db.session.commit()
    assert_money_consistent(alice)


def test_choosing_a_plan_with_a_free_trial_starts_it_without_a_charge(alice, annual, clock):
    annual.is_public = True
    db.session.commit()
    change = plan_changes.preview(alice, annual)
    assert change.trial and change.amount_due == 0 and change.new_period_end == clock.now() + timedelta(days=14)
    sub = plan_changes.start_trial(alice, annual)
    db.session.commit()
    sub = _sub(alice)
    assert sub.status is SubscriptionStatus.TRIALING and sub.plan.code == "annual"
    assert sub.trial_end == clock.now() + timedelta(days=14)
    assert db.session.scalar(sa.select(sa.func.count(Invoice.id))) == 0 and stripe_intents(alice) == []
    # One trial per customer: choosing it again later is charged.
    sub.status, sub.plan_id = SubscriptionStatus.ACTIVE, _plan("free").id
    db.session.commit()
    assert not plan_changes.preview(alice, annual).trial
    assert_money_consistent(alice)


# --- 5. an upgrade after the period ended is never free -----------------------------------------------

def test_an_upgrade_after_the_period_ended_is_refused_until_the_renewal_has_run(alice, clock):
    add_card(alice)
    assert plan_changes.upgrade(alice, _plan("premium"), token="a").status == "paid"  # until 28 Feb 09:00
    db.session.commit()
    clock.advance(days=29)
    with pytest.raises(plan_changes.PlanChangeError, match="period ended on 28 Feb 2026 and its renewal"):
        plan_changes.upgrade(alice, _plan("business"), token="b")
    db.session.rollback()
    assert db.session.scalar(sa.select(sa.func.count(Invoice.id))) == 1
    assert_money_consistent(alice)


def test_from_free_after_the_period_ended_an_upgrade_buys_a_whole_new_period(alice, clock):
    clock.advance(days=40)  # the Free period (31 Jan–28 Feb) is long over
    change = plan_changes.preview(alice, _plan("premium"))
    assert change.amount_due == 999 and change.new_period_start == clock.now()


# --- 8. the smaller ones -----------------------------------------------------------------------------

def test_a_payment_that_cannot_be_applied_is_reported_refunded_not_paid(alice, faulty_stripe):
    add_card(alice)
    business_id, alice_id = _plan("business").id, alice.id

    def staff_move_the_plan(method, path):
        if (method, path) == ("POST", "/v1/payment_intents"):  # while the bank answers, the plan changes
            with db.engine.begin() as conn:
                conn.execute(sa.update(Subscription).where(Subscription.user_id == alice_id)
                             .values(plan_id=business_id))

    faulty_stripe.after = staff_move_the_plan
    outcome = plan_changes.upgrade(alice, _plan("premium"), token="t")
    db.session.commit()
    assert outcome.status == "refunded"
    assert _sub(alice).plan.code == "business"
    run_outbox_jobs()
    assert_money_consistent(alice)


def test_the_wallet_pays_only_invoices_in_its_own_currency(alice):
    add_card(alice)
    wallet.credit(alice.id, 5000, kind=EntryKind.CREDIT, reason="goodwill", idempotency_key="gw")
    db.session.commit()
    outcome = purchases.buy(alice, Nothing(), [LineDraft(LineKind.PLAN, "Service in euros", 1200)], key="eur",
                            currency="EUR")
    db.session.commit()
    assert outcome.status == "paid"
    paid = {p.provider: (p.amount, p.currency) for p in db.session.scalars(sa.select(Payment))}
    assert paid == {"stripe": (1200, "EUR")} and wallet.get_wallet(alice.id).balance == 5000
    assert_money_consistent(alice)


def test_stripe_keys_carry_the_installations_prefix_and_never_repeat_after_a_restore(alice, app, faulty_stripe):
    add_card(alice)
    first = topups.buy(alice, 1000, "USD", "a", card_label="Visa •••• 4242").payment
    db.session.commit()
    prefix = gateway.key_prefix()
    assert first.stripe_idempotency_key.startswith(f"{prefix}:invoice:{first.invoice_id and 'INV-000001'}:card:1:")
    assert faulty_stripe.keys_sent("/v1/payment_intents") == [first.stripe_idempotency_key]
    # A database restored from before that payment numbers the next invoice INV-000001 again.
    db.session.execute(sa.delete(WalletEntry))
    db.session.execute(sa.delete(Payment))
    db.session.execute(sa.delete(Invoice))
    db.session.execute(sa.text("UPDATE wallets SET balance = 0"))
    db.session.execute(sa.text("UPDATE number_sequences SET value = 0"))
    db.session.commit()
    again = topups.buy(alice, 2500, "USD", "b", card_label="Visa •••• 4242")
    db.session.commit()
    assert again.status == "paid" and again.payment.idempotency_key == first.idempotency_key
    assert again.payment.stripe_idempotency_key != first.stripe_idempotency_key
    assert gateway.retrieve_intent(again.payment.stripe_payment_intent_id).amount == 2500  # not the old answer
    # Another installation sharing the Stripe account starts its keys differently.
    app.config["SECRET_KEY"] = "another installation"
    assert gateway.key_prefix() != prefix
    app.config["STRIPE_IDEMPOTENCY_PREFIX"] = "staging"
    assert gateway.key_prefix() == "staging"


def test_prepaid_units_carry_over_when_an_upgrade_starts_a_new_period(alice, clock):
    add_card(alice)
    sub = live_subscription(alice.id)
    sub.plan_id = _plan("basic").id
    db.session.commit()
    clock.advance(days=3)
    assert packages.buy(alice, "tokens", 1, "p").status == "paid"  # +500 prepaid tokens
    db.session.commit()
    usage.record(alice.id, "tokens", 1200)  # 1,000 included + 200 of the prepaid ones
    db.session.commit()
    assert plan_changes.upgrade(alice, _plan("business"), token="u").status == "paid"  # 30 days → monthly: new period
    db.session.commit()
    from portal.services.usage import meters

    db.session.expire_all()
    tokens = meters.build(alice.id).meter("tokens")
    assert tokens.allowance == 2000 + 300  # Business's 2,000 and the 300 prepaid tokens not used
    assert_money_consistent(alice)


@both_databases
def test_money_checks_refuse_impossible_rows(alice):
    invoice = invoices.create_invoice(alice.id, "USD", [LineDraft(LineKind.PLAN, "Premium", 999)], reason="manual")
    db.session.commit()
    impossible = [
        sa.update(Invoice).where(Invoice.id == invoice.id).values(amount_paid=1000),
        sa.update(Invoice).where(Invoice.id == invoice.id).values(amount_paid=-1),
        sa.update(Plan).where(Plan.code == "premium").values(is_default=True),
    ]
    for statement in impossible:
        with pytest.raises(IntegrityError):
            with db.session.begin_nested():
                db.session.execute(statement)
    add_card(alice)
    payment = topups.buy(alice, 1000, "USD", "x", card_label="Visa").payment
    db.session.commit()
    entry = db.session.scalar(sa.select(WalletEntry))
    for statement in [
        sa.update(Payment).where(Payment.id == payment.id).values(amount_refunded=1001),
        sa.update(Payment).where(Payment.id == payment.id).values(amount_refunded=-1),
        sa.insert(WalletEntry).values(wallet_id=entry.wallet_id, kind=EntryKind.PAYMENT, amount=5, currency="USD",
                                      balance_after=5, reason="a payment that adds money", idempotency_key="bad"),
        sa.insert(WalletEntry).values(wallet_id=entry.wallet_id, kind=EntryKind.TOPUP, amount=-5, currency="USD",
                                      balance_after=5, reason="a top-up that takes money", idempotency_key="bad2"),
    ]:
        with pytest.raises(IntegrityError):
            with db.session.begin_nested():
                db.session.execute(statement)
    db.session.rollback()


# --- one shape -----------------------------------------------------------------------------------------

def test_the_payment_layer_imports_no_product():
    """The low-level payment service and the purchase path know no plan change, package or usage module."""
    code = ("import sys, portal.services.payments, portal.services.purchases; "
            "print(sorted(m for m in sys.modules if m.startswith('portal.services.')))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    modules = eval(loaded.stdout)  # noqa: S307 - our own subprocess's printed list
    products = ("portal.services.subscriptions.changes", "portal.services.usage", "portal.services.wallet.topups",
                "portal.services.catalog")
    assert not [m for m in modules if m.startswith(products)], modules


def test_every_kind_of_purchase_is_registered_once_the_app_exists(app):
    from portal.services.purchases import effects

    assert {"plan_change", "package", "topup", "none"} <= set(effects.REGISTRY)
    upgrade = effects.load({"type": "plan_change", "subscription_id": 1, "from_plan_id": 1, "plan_id": 2,
                            "period_start": "2026-01-31T09:00:00+00:00", "period_end": "2026-02-28T09:00:00+00:00"})
    assert upgrade.period_start.day == 31 and upgrade.reset is False  # older invoices load too
    with pytest.raises(effects.UnknownPurchase):
        effects.load({"type": "time_machine"})
    assert isinstance(effects.load({}), Nothing)


def test_a_payment_left_at_the_bank_gets_one_reminder_with_its_link_before_it_is_cancelled(alice, stripe_server,
                                                                                          clock):
    from portal.models import EmailLog

    add_card(alice, THREE_D_SECURE)
    waiting = _waiting_for_the_bank(alice, "t")
    assert _reconcile(clock, minutes=5) == {}
    assert _reconcile(clock, minutes=6) == {"reminded": 1}  # 11 minutes at the bank
    assert _reconcile(clock, minutes=5) == {}  # once
    [email] = db.session.scalars(sa.select(EmailLog).where(EmailLog.template == "payment_needs_authentication"))
    assert email.context["payment_id"] == waiting.payment.id and email.context["what"] == "your plan upgrade"
    assert _reconcile(clock, minutes=20) == {"canceled": 1}  # then, 31 minutes in, it is given up


def test_receipts_say_what_was_bought_once_per_invoice(alice):
    from portal.models import EmailLog

    add_card(alice)
    assert plan_changes.upgrade(alice, _plan("premium"), token="a").status == "paid"
    db.session.commit()
    with pytest.raises(packages.PackageError):  # Premium sells no packages: nothing bought, nothing sent
        packages.buy(alice, "tokens", 1, "p")
    db.session.rollback()
    assert topups.buy(alice, 1500, "USD", "t", card_label="Visa •••• 4242").status == "paid"
    db.session.commit()
    rows = [(e.template, e.idempotency_key.split(":")[0]) for e in db.session.scalars(
        sa.select(EmailLog).order_by(EmailLog.id))]
    assert rows == [("subscription_activated", "receipt"), ("topup_receipt", "receipt")]
