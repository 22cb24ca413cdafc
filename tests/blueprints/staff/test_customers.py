"""Staff: the customers pages (issue #13, page 3): search, one customer's whole account, and the support
actions on it (credit, refund to the card or the wallet, change plan, extend grace, cancel), each with a
required reason and exactly one audit row; money actions once per form token.

Stripe is localstripe; card refunds run as the worker would, from the outbox, in this process.
"""
from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from portal.billing.lifecycle import SubscriptionStatus
from portal.extensions import db
from portal.models import (
    AuditLog, EntryKind, Invoice, InvoiceStatus, OperationError, Payment, PaymentStatus, Plan, Refund,
    RefundStatus, Subscription, SubscriptionEvent, User, WalletEntry,
)
from portal.payments import gateway
from portal.services import wallet
from portal.services.auth import register
from portal.services.payments import cards
from portal.services.subscriptions import changes as plan_changes
from portal.services.subscriptions import live_subscription
from tests.conftest import add_card, assert_money_consistent, both_databases, csrf_from, run_outbox_jobs
from worker import billing
from worker import retries as retry_jobs

DECLINED_LATER = "4000000000000341"  # attaches, then every off-session charge is declined


@pytest.fixture
def alice(catalog, stripe_server) -> User:
    return db.session.scalar(sa.select(User).where(User.email == "demo@portal.test"))


def _at(month: int, day: int, hour: int = 9) -> datetime:
    return datetime(2026, month, day, hour, 0, tzinfo=timezone.utc)


def _plan(code: str) -> Plan:
    return db.session.scalar(sa.select(Plan).where(Plan.code == code))


def _sub(user: User) -> Subscription:
    db.session.expire_all()
    return live_subscription(user.id)


def _premium_by_card(user: User) -> Payment:
    """The customer upgrades from Free to Premium with a card: one succeeded card payment."""
    add_card(user)
    outcome = plan_changes.upgrade(user, _plan("premium"), token=uuid.uuid4().hex)
    assert outcome.status == "paid", outcome
    db.session.commit()
    run_outbox_jobs()
    payment = db.session.scalar(sa.select(Payment).where(Payment.user_id == user.id, Payment.provider == "stripe"))
    assert payment.status is PaymentStatus.SUCCEEDED and payment.amount == 999
    return payment


def _past_due(user: User, clock) -> Subscription:
    """Premium by card on 31 January; the card then declines; 28 February's renewal is refused."""
    _premium_by_card(user)
    cards.set_default(add_card(user, DECLINED_LATER))
    db.session.commit()
    clock.set(_at(2, 28))
    billing.renew_due()
    run_outbox_jobs()
    db.session.commit()
    retry_jobs.process_pending_retries()
    run_outbox_jobs()
    sub = _sub(user)
    assert sub.status is SubscriptionStatus.PAST_DUE and sub.grace_until == _at(3, 3)
    return sub


def _audit(action: str | None = None) -> list[AuditLog]:
    """Support actions' audit rows (logins write rows too), or those of one action."""
    db.session.expire_all()
    query = sa.select(AuditLog).order_by(AuditLog.id)
    if action is not None:
        query = query.where(AuditLog.action == action)
    else:
        query = query.where(AuditLog.action.startswith("support."))
    return list(db.session.scalars(query))


def _action(client, user: User, path: str, data: dict, *, htmx: bool = False):
    token = csrf_from(client, f"/staff/customers/{user.id}")
    headers = {"HX-Request": "true", "HX-Target": "customer-x"} if htmx else {}
    return client.post(f"/staff/customers/{user.id}/{path}", data={"csrf_token": token, **data}, headers=headers)


def _entries(user: User, kind: EntryKind | None = None) -> list[WalletEntry]:
    db.session.expire_all()
    account = wallet.get_wallet(user.id)
    query = sa.select(WalletEntry).where(WalletEntry.wallet_id == account.id).order_by(WalletEntry.id)
    if kind is not None:
        query = query.where(WalletEntry.kind == kind)
    return list(db.session.scalars(query))


def _refunds_at_stripe(payment: Payment) -> list:
    return list(gateway.client().v1.refunds.list(params={"payment_intent": payment.stripe_payment_intent_id}).data)


# --- search ------------------------------------------------------------------------------------------------

def test_search_finds_customers_by_the_start_of_their_email_or_name(staff_client, alice):
    register("zoe.smith@example.com", "a long enough password", "Zoë Smith")
    register("bob@example.com", "a long enough password", "Bob Alison")
    db.session.commit()

    def names(q):
        html = staff_client.get("/staff/customers", query_string={"q": q}).get_data(as_text=True)
        return re.findall(r'<small class="sc-muted">([^<@]+@[^<]+)</small>', html)

    assert names("demo@") == ["demo@portal.test"]
    assert names("ALICE") == ["demo@portal.test"]  # the name, any case
    assert names("bob") == ["bob@example.com"]  # the email ("Bob Alison" too: one row)
    assert names("zoe") == ["zoe.smith@example.com"]
    assert names("bob alison") == ["bob@example.com"]  # the whole name
    assert names("smith") == []  # from the start only: an index can answer it
    assert names("staff") == []  # staff accounts are not customers
    assert names("%") == [] and names("_") == []  # LIKE wildcards are plain characters
    listing = staff_client.get("/staff/customers").get_data(as_text=True)
    assert listing.index("bob@example.com") < listing.index("zoe.smith@example.com") < listing.index(
        "demo@portal.test")  # newest first
    assert "Alice Demo" in listing and "Free" in listing and "active" in listing


def test_search_pages_by_keyset_without_counting(staff_client, alice):
    for n in range(30):
        register(f"cust{n:02d}@example.com", "a long enough password", f"Customer {n:02d}")
    db.session.commit()
    first = staff_client.get("/staff/customers?q=cust").get_data(as_text=True)
    emails = re.findall(r"cust\d\d@example\.com", first)
    assert emails[0] == "cust00@example.com" and emails[-1] == "cust24@example.com" and len(set(emails)) == 25
    more = re.search(r'href="([^"]+)" rel="next"', first).group(1).replace("&amp;", "&")
    assert "after=cust24@example.com" in more
    second = staff_client.get(more).get_data(as_text=True)
    assert sorted(set(re.findall(r"cust\d\d@example\.com", second))) == [f"cust{n}@example.com" for n in range(25, 30)]
    assert 'rel="next"' not in second and "First page" in second
    # the plain list pages by id, newest first
    listing = staff_client.get("/staff/customers").get_data(as_text=True)
    older = re.search(r'href="([^"]+)" rel="next"', listing).group(1).replace("&amp;", "&")
    assert "before=" in older
    rest = staff_client.get(older).get_data(as_text=True)
    assert "demo@portal.test" in rest and "cust29@example.com" not in rest


def test_the_search_box_answers_htmx_with_the_results_only(staff_client, alice):
    response = staff_client.get("/staff/customers?q=demo", headers={"HX-Request": "true",
                                                                    "HX-Target": "customer-results"})
    html = response.get_data(as_text=True)
    assert html.lstrip().startswith('<section id="customer-results"') and "demo@portal.test" in html
    assert "<html" not in html


# --- the customer's page ---------------------------------------------------------------------------------

def test_the_customer_page_shows_every_section(staff_client, alice, clock):
    payment = _premium_by_card(alice)
    wallet.credit(alice.id, 250, reason="Welcome gift", idempotency_key="test:gift")
    db.session.commit()
    invoice = db.session.get(Invoice, payment.invoice_id)
    html = staff_client.get(f"/staff/customers/{alice.id}").get_data(as_text=True)
    for section in ("subscription", "events", "meters", "wallet", "invoices", "payments", "emails", "errors",
                    "actions"):
        assert f'id="customer-{section}"' in html, section
    assert "Premium" in html and "change_plan" in html  # the subscription and its events
    assert "Quiz" in html or "quiz" in html  # a meter
    assert "$2.50" in html and "Welcome gift" in html  # wallet and ledger
    assert invoice.number in html and "$9.99" in html  # invoices and payments
    assert payment.stripe_payment_intent_id in html and "Refund…" in html
    assert "subscription_activated" in html  # the emails sent
    assert re.search(r'name="token" type="hidden" value="[0-9a-f]{32}"', html)  # money forms carry a token


def test_a_section_pages_alone_for_htmx_and_with_the_page_without(staff_client, alice):
    for n in range(12):
        wallet.credit(alice.id, 100 + n, reason=f"Credit {n}", idempotency_key=f"test:{n}")
    db.session.commit()
    page = staff_client.get(f"/staff/customers/{alice.id}").get_data(as_text=True)
    assert "Credit 11" in page and "Credit 1<" not in page
    older = re.search(r'hx-get="(/staff/customers/\d+/sections/wallet\?before=\d+)"', page).group(1)
    part = staff_client.get(older, headers={"HX-Request": "true"}).get_data(as_text=True)
    assert part.lstrip().startswith('<section id="customer-wallet"') and "Credit 1<" in part and "Credit 11" not in part
    assert "« Newest" in part
    plain = staff_client.get(older)
    assert plain.status_code == 302 and "ledger_before=" in plain.headers["Location"]
    assert staff_client.get(f"/staff/customers/{alice.id}/sections/nope", headers={"HX-Request": "true"}).status_code == 404


def test_unknown_customers_and_staff_accounts_are_404(staff_client, alice):
    staff = db.session.scalar(sa.select(User).where(User.email == "staff@portal.test"))
    assert staff_client.get("/staff/customers/999999").status_code == 404
    assert staff_client.get(f"/staff/customers/{staff.id}").status_code == 404


# --- credit ------------------------------------------------------------------------------------------------

def test_credit_is_one_ledger_row_and_one_audit_row_however_often_the_form_is_sent(staff_client, alice):
    token = uuid.uuid4().hex
    form = {"amount": "12.50", "reason": "Sorry for the outage", "token": token}
    first = _action(staff_client, alice, "credit", form)
    assert first.status_code == 303 and first.headers["Location"].endswith(f"/staff/customers/{alice.id}#customer-wallet")
    assert "$12.50 credited" in staff_client.get(first.headers["Location"]).get_data(as_text=True)  # the flash
    again = _action(staff_client, alice, "credit", form, htmx=True)  # the double click
    assert again.status_code == 200 and "Already done" in again.get_data(as_text=True)
    [entry] = _entries(alice, EntryKind.CREDIT)
    assert (entry.amount, entry.reason, entry.idempotency_key) == (1250, "Sorry for the outage",
                                                                   f"support-credit:{alice.id}:{token}")
    staff = db.session.scalar(sa.select(User).where(User.email == "staff@portal.test"))
    assert entry.actor_id == staff.id
    [row] = _audit("support.credit")
    assert (row.actor_id, row.target_type, row.target_id) == (staff.id, "users", str(alice.id))
    assert row.data["amount"] == 1250 and row.data["reason"] == "Sorry for the outage"
    assert row.data["entry_id"] == entry.id and row.ip == "127.0.0.1"
    # a new form (a new token) is a new credit
    _action(staff_client, alice, "credit", {**form, "token": uuid.uuid4().hex})
    assert len(_entries(alice, EntryKind.CREDIT)) == 2 and len(_audit("support.credit")) == 2
    assert_money_consistent(alice)


def test_credit_answers_htmx_with_the_wallet_and_the_staff_actions_out_of_band(staff_client, alice):
    response = _action(staff_client, alice, "credit",
                       {"amount": "3", "reason": "Goodwill", "token": uuid.uuid4().hex}, htmx=True)
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert html.lstrip().startswith('<section id="customer-wallet"') and "$3.00 credited" in html
    assert '<section id="customer-actions" class="sc-section" aria-labelledby="customer-actions-title" ' \
           'hx-swap-oob="true">' in html and "support.credit" in html


@pytest.mark.parametrize("form, field_error", [
    ({"amount": "5", "reason": ""}, "Give a reason"),
    ({"amount": "5", "reason": "  "}, "Give a reason"),
    ({"amount": "", "reason": "Sorry"}, "Enter an amount"),
    ({"amount": "abc", "reason": "Sorry"}, "is not an amount"),
    ({"amount": "-5", "reason": "Sorry"}, "greater than zero"),
    ({"amount": "1.234", "reason": "Sorry"}, "too many decimals"),
    ({"amount": "5000", "reason": "Sorry"}, "at most $1,000.00"),
    ({"amount": "5", "reason": "Sorry", "token": "not-a-token"}, "out of date"),
])
def test_bad_credit_input_is_a_form_error_and_writes_nothing(staff_client, alice, form, field_error):
    before = len(_entries(alice))
    data = {"token": uuid.uuid4().hex, **form}
    for htmx in (False, True):
        response = _action(staff_client, alice, "credit", data, htmx=htmx)
        assert response.status_code == 422
        assert field_error in response.get_data(as_text=True)
    assert len(_entries(alice)) == before and _audit() == []


# --- refunds -----------------------------------------------------------------------------------------------

@both_databases
def test_a_double_submitted_card_refund_refunds_once_at_stripe(staff_client, alice):
    payment = _premium_by_card(alice)
    form = {"amount": "9.99", "to": "card", "reason": "Charged by mistake", "token": uuid.uuid4().hex}
    first = _action(staff_client, alice, f"payments/{payment.id}/refund", form, htmx=True)
    assert first.status_code == 200 and "asked of Stripe" in first.get_data(as_text=True)
    second = _action(staff_client, alice, f"payments/{payment.id}/refund", form, htmx=True)
    assert second.status_code == 200 and "Already done" in second.get_data(as_text=True)
    third = _action(staff_client, alice, f"payments/{payment.id}/refund", form)  # and once more, without htmx
    assert third.status_code == 303
    [refund] = db.session.scalars(sa.select(Refund).where(Refund.payment_id == payment.id)).all()
    assert refund.status is RefundStatus.PENDING and refund.amount == 999 and refund.reason == "Charged by mistake"
    assert refund.idempotency_key == f"refund:payment:{payment.id}:support:{form['token']}"
    [row] = _audit("support.refund")
    assert row.data["refund_id"] == refund.id and row.data["to"] == "card" and row.data["amount"] == 999
    assert _refunds_at_stripe(payment) == []  # Stripe is called by the job, after the commit

    assert "worker.payments.refund_payment" in run_outbox_jobs()
    db.session.expire_all()
    assert [r.amount for r in _refunds_at_stripe(payment)] == [999]  # localstripe shows one refund
    refund = db.session.get(Refund, refund.id)
    payment = db.session.get(Payment, payment.id)
    assert refund.status is RefundStatus.SUCCEEDED and refund.stripe_refund_id
    assert (payment.amount_refunded, payment.status) == (999, PaymentStatus.REFUNDED)
    # resubmitting the form later still does nothing (and the job, run again, neither)
    assert "Already done" in _action(staff_client, alice, f"payments/{payment.id}/refund", form, htmx=True).get_data(
        as_text=True)
    assert run_outbox_jobs() == [] and len(_refunds_at_stripe(payment)) == 1
    page = staff_client.get(f"/staff/customers/{alice.id}").get_data(as_text=True)
    assert "refund_issued" in page  # the customer was told


@both_databases
def test_refunds_to_card_and_wallet_together_never_pass_the_payments_amount(staff_client, alice):
    payment = _premium_by_card(alice)
    url = f"payments/{payment.id}/refund"
    to_wallet = _action(staff_client, alice, url, {"amount": "5.00", "to": "wallet", "reason": "Half back",
                                                   "token": uuid.uuid4().hex}, htmx=True)
    assert to_wallet.status_code == 200 and "refunded to the wallet" in to_wallet.get_data(as_text=True)
    [entry] = _entries(alice, EntryKind.REFUND)
    assert (entry.amount, entry.reference) == (500, f"payment:{payment.id}")
    assert entry.idempotency_key.startswith(f"support-refund:payment:{payment.id}:")
    db.session.expire_all()
    assert db.session.get(Payment, payment.id).amount_refunded == 500

    card = _action(staff_client, alice, url, {"amount": "4.00", "to": "card", "reason": "More back",
                                              "token": uuid.uuid4().hex})
    assert card.status_code == 303
    # 999 paid, 500 to the wallet, 400 pending to the card: 99 left
    beyond = _action(staff_client, alice, url, {"amount": "1.00", "to": "wallet", "reason": "Too much",
                                                "token": uuid.uuid4().hex}, htmx=True)
    assert beyond.status_code == 422 and "At most $0.99 of this payment can still be refunded" in beyond.get_data(
        as_text=True)
    assert _action(staff_client, alice, url, {"amount": "1.00", "to": "card", "reason": "Too much",
                                              "token": uuid.uuid4().hex}).status_code == 422
    assert len(_audit("support.refund")) == 2 and len(_entries(alice, EntryKind.REFUND)) == 1
    run_outbox_jobs()
    db.session.expire_all()
    payment = db.session.get(Payment, payment.id)
    assert payment.amount_refunded == 900 and payment.status is PaymentStatus.SUCCEEDED
    assert [r.amount for r in _refunds_at_stripe(payment)] == [400]
    last = _action(staff_client, alice, url, {"amount": "0.99", "to": "wallet", "reason": "The rest",
                                              "token": uuid.uuid4().hex})
    assert last.status_code == 303
    db.session.expire_all()
    payment = db.session.get(Payment, payment.id)
    assert (payment.amount_refunded, payment.status) == (999, PaymentStatus.REFUNDED)
    assert "Refund…" not in staff_client.get(f"/staff/customers/{alice.id}").get_data(as_text=True)
    account = wallet.get_wallet(alice.id)
    assert account.balance == wallet.ledger_sum(account.id) == 599


def test_a_top_up_goes_back_to_the_card_and_leaves_the_wallet(staff_client, alice):
    from portal.services.wallet import topups

    add_card(alice)
    outcome = topups.buy(alice, 2500, "USD", uuid.uuid4().hex, card_label="Visa •••• 4242")
    assert outcome.status == "paid"
    db.session.commit()
    run_outbox_jobs()
    payment_id = outcome.payment.id
    url = f"payments/{payment_id}/refund"
    to_wallet = _action(staff_client, alice, url, {"amount": "10", "to": "wallet", "reason": "Not like this",
                                                   "token": uuid.uuid4().hex}, htmx=True)
    assert to_wallet.status_code == 422 and "a top-up is in the wallet already" in to_wallet.get_data(as_text=True)
    wallet.debit(alice.id, 2000, reason="Spent", idempotency_key="test:spent")
    db.session.commit()
    too_much = _action(staff_client, alice, url, {"amount": "10", "to": "card", "reason": "Asked for it back",
                                                  "token": uuid.uuid4().hex}, htmx=True)
    assert too_much.status_code == 422 and "The wallet holds only $5.00" in too_much.get_data(as_text=True)
    assert _action(staff_client, alice, url, {"amount": "5", "to": "card", "reason": "Asked for it back",
                                              "token": uuid.uuid4().hex}).status_code == 303
    [back] = [e for e in _entries(alice, EntryKind.REFUND)]
    assert (back.amount, back.reference, back.balance_after) == (-500, f"payment:{payment_id}", 0)
    [refund] = db.session.scalars(sa.select(Refund).where(Refund.payment_id == payment_id)).all()
    assert refund.amount == 500 and len(_audit("support.refund")) == 1
    run_outbox_jobs()
    db.session.expire_all()
    assert db.session.get(Payment, payment_id).amount_refunded == 500
    assert [r.amount for r in _refunds_at_stripe(db.session.get(Payment, payment_id))] == [500]
    account = wallet.get_wallet(alice.id)
    assert account.balance == wallet.ledger_sum(account.id) == 0


@both_databases
def test_two_refunds_of_one_payment_at_the_same_moment_never_pass_its_amount(app, alice):
    """Two staff members refund the same payment at once (different forms): the payment row's lock makes
    the second see the first, so one is refused."""
    import threading

    from portal.services import support

    payment_id, alice_id = _premium_by_card(alice).id, alice.id
    staff_id = db.session.scalar(sa.select(User.id).where(User.email == "staff@portal.test"))
    db.session.commit()  # nothing of this session is touched by the threads (SQLite: one writer)
    barrier, outcomes = threading.Barrier(2), []

    def refund(to: str) -> None:
        with app.app_context():
            customer, staff = db.session.get(User, alice_id), db.session.get(User, staff_id)
            payment = db.session.get(Payment, payment_id)
            db.session.commit()
            barrier.wait()
            try:
                support.refund(customer, payment, 600, to=to, reason="At the same time", token=uuid.uuid4().hex,
                               actor=staff)
                db.session.commit()
                outcomes.append("refunded")
            except support.SupportError as error:
                db.session.rollback()
                outcomes.append(error.message)
            except Exception as error:  # noqa: BLE001 - reported by the assertion below
                outcomes.append(repr(error))
                raise
            finally:
                db.session.remove()

    threads = [threading.Thread(target=refund, args=(to,)) for to in ("card", "wallet")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes)[1] == "refunded" and sorted(outcomes)[0].startswith("At most $3.99"), outcomes
    db.session.expire_all()
    pending = db.session.scalar(sa.select(sa.func.coalesce(sa.func.sum(Refund.amount), 0)).where(
        Refund.payment_id == payment_id))
    assert db.session.get(Payment, payment_id).amount_refunded + pending == 600
    assert len(_audit("support.refund")) == 1


def test_a_refund_form_reused_for_another_amount_is_refused(staff_client, alice):
    payment = _premium_by_card(alice)
    token = uuid.uuid4().hex
    url = f"payments/{payment.id}/refund"
    assert _action(staff_client, alice, url, {"amount": "1.00", "to": "wallet", "reason": "x back",
                                              "token": token}).status_code == 303
    other = _action(staff_client, alice, url, {"amount": "2.00", "to": "wallet", "reason": "x back", "token": token},
                    htmx=True)
    assert other.status_code == 422 and "already used" in other.get_data(as_text=True)
    assert len(_entries(alice, EntryKind.REFUND)) == 1 and len(_audit()) == 1


def test_refund_input_is_checked_and_nothing_is_written(staff_client, alice, bob):
    payment = _premium_by_card(alice)
    url = f"payments/{payment.id}/refund"
    ok = {"amount": "1.00", "to": "card", "reason": "Because", "token": uuid.uuid4().hex}
    for bad, message in [({"reason": ""}, "Give a reason"), ({"to": "bank"}, "Not a valid choice"),
                         ({"amount": "0"}, "greater than zero"), ({"amount": "10.00"}, "At most $9.99")]:
        response = _action(staff_client, alice, url, {**ok, **bad}, htmx=True)
        assert response.status_code == 422 and message in response.get_data(as_text=True), bad
    # another customer's payment looks missing
    assert _action(staff_client, bob, url, ok).status_code == 404
    assert db.session.scalar(sa.select(sa.func.count(Refund.id))) == 0 and _audit() == []


# --- the subscription ----------------------------------------------------------------------------------------

def test_change_plan_now_switches_without_a_charge_and_writes_one_event_and_one_audit_row(staff_client, alice):
    response = _action(staff_client, alice, "plan", {"plan": "premium", "when": "now", "reason": "Comp for a month"},
                       htmx=True)
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and "Moved from Free to Premium now" in html
    assert 'id="customer-meters" class="sc-section" aria-labelledby="customer-meters-title" hx-swap-oob="true"' in html
    sub = _sub(alice)
    assert sub.plan.code == "premium" and sub.status is SubscriptionStatus.ACTIVE
    event = db.session.scalar(sa.select(SubscriptionEvent).where(SubscriptionEvent.subscription_id == sub.id)
                              .order_by(SubscriptionEvent.id.desc()).limit(1))
    staff = db.session.scalar(sa.select(User).where(User.email == "staff@portal.test"))
    assert (event.transition, event.actor_id, event.data["plan_id"]) == ("change_plan", staff.id, sub.plan_id)
    assert db.session.scalar(sa.select(sa.func.count(Invoice.id)).where(Invoice.user_id == alice.id)) == 0
    [row] = _audit("support.change_plan")
    assert (row.data["from_plan"], row.data["plan"], row.data["when"]) == ("free", "premium", "now")
    again = _action(staff_client, alice, "plan", {"plan": "premium", "when": "now", "reason": "Comp"}, htmx=True)
    assert again.status_code == 422 and "on Premium already" in again.get_data(as_text=True)
    assert len(_audit()) == 1


def test_change_plan_at_period_end_is_scheduled_and_can_be_dropped(staff_client, alice):
    _premium_by_card(alice)
    assert _action(staff_client, alice, "plan", {"plan": "basic", "when": "period_end",
                                                 "reason": "Customer asked by email"}).status_code == 303
    sub = _sub(alice)
    assert sub.plan.code == "premium" and sub.scheduled_plan.code == "basic"
    assert _action(staff_client, alice, "plan", {"plan": "premium", "when": "period_end",
                                                 "reason": "Changed their mind"}).status_code == 303
    sub = _sub(alice)
    assert sub.scheduled_plan_id is None
    transitions = list(db.session.scalars(sa.select(SubscriptionEvent.transition).where(
        SubscriptionEvent.subscription_id == sub.id).order_by(SubscriptionEvent.id)))
    assert transitions[-2:] == ["schedule_plan_change", "undo_scheduled_change"]
    assert len(_audit("support.change_plan")) == 2


@pytest.mark.parametrize("form, message", [
    ({"plan": "premium", "when": "now", "reason": ""}, "Give a reason"),
    ({"plan": "free", "when": "now", "reason": "x x x"}, "Not a valid choice"),  # Free: that is a cancel
    ({"plan": "nope", "when": "now", "reason": "x x x"}, "Not a valid choice"),
    ({"plan": "premium", "when": "someday", "reason": "x x x"}, "Not a valid choice"),
])
def test_bad_plan_changes_are_refused(staff_client, alice, form, message):
    response = _action(staff_client, alice, "plan", form, htmx=True)
    assert response.status_code == 422 and message in response.get_data(as_text=True)
    assert _sub(alice).plan.code == "free" and _audit() == []


def test_extend_grace_moves_the_end_later_once_per_form(staff_client, alice, clock):
    sub = _past_due(alice, clock)
    page = staff_client.get(f"/staff/customers/{alice.id}").get_data(as_text=True)
    expected = re.search(r'id="grace-expected" name="expected" type="hidden" value="([^"]+)"', page).group(1)
    form = {"days": "4", "reason": "Card replacement on its way", "expected": expected}
    response = _action(staff_client, alice, "grace", form, htmx=True)
    assert response.status_code == 200 and "now ends on 07 Mar 2026" in response.get_data(as_text=True)
    again = _action(staff_client, alice, "grace", form, htmx=True)  # the double click
    assert "Already changed" in again.get_data(as_text=True)
    sub = _sub(alice)
    assert sub.grace_until == _at(3, 7) and sub.status is SubscriptionStatus.PAST_DUE
    error = db.session.scalar(sa.select(OperationError).where(OperationError.subscription_id == sub.id))
    assert error.context["retry_before"] == _at(3, 7).isoformat()  # the retries may use the extra days
    [row] = _audit("support.extend_grace")
    assert row.data["days"] == 4 and row.data["to"] == _at(3, 7).isoformat()
    assert db.session.scalar(sa.select(SubscriptionEvent.transition).where(SubscriptionEvent.subscription_id == sub.id)
                             .order_by(SubscriptionEvent.id.desc()).limit(1)) == "extend_grace"
    for bad, message in [({"days": "0"}, "Between 1 and 14 days"), ({"days": "15"}, "Between 1 and 14 days"),
                         ({"days": "x"}, "Not a valid integer"), ({"reason": ""}, "Give a reason")]:
        response = _action(staff_client, alice, "grace", {**form, "expected": "", **bad}, htmx=True)
        assert response.status_code == 422 and message in response.get_data(as_text=True), bad
    assert len(_audit()) == 1
    clock.set(_at(3, 4))  # past the old end of grace: the expiry leaves it alone
    db.session.commit()
    billing.renew_due()
    run_outbox_jobs()
    assert _sub(alice).status is SubscriptionStatus.PAST_DUE


def test_grace_is_only_for_past_due_subscriptions(staff_client, alice):
    response = _action(staff_client, alice, "grace", {"days": "3", "reason": "Just because"}, htmx=True)
    assert response.status_code == 422 and "Only a past-due subscription" in response.get_data(as_text=True)
    assert _audit() == []


def test_cancel_now_of_a_past_due_subscription_writes_off_its_invoice_and_restores_free(staff_client, alice, clock):
    sub = _past_due(alice, clock)
    response = _action(staff_client, alice, "cancel", {"when": "now", "reason": "Customer wants out"})
    assert response.status_code == 303
    db.session.expire_all()
    old = db.session.get(Subscription, sub.id)
    assert old.status is SubscriptionStatus.CANCELED and old.ended_at == _at(2, 28) and old.grace_until is None
    assert _sub(alice).plan.code == "free"
    [renewal] = db.session.scalars(sa.select(Invoice).where(Invoice.user_id == alice.id, Invoice.reason == "renewal"))
    assert renewal.status is InvoiceStatus.UNCOLLECTIBLE
    error = db.session.scalar(sa.select(OperationError).where(OperationError.subscription_id == sub.id))
    assert error.status.value == "gave_up"
    [row] = _audit("support.cancel")
    assert row.data["when"] == "now" and row.data["written_off"] == [renewal.number]
    assert len(_audit()) == 1
    assert_money_consistent(alice)


def test_cancel_at_period_end_is_scheduled_once(staff_client, alice):
    _premium_by_card(alice)
    form = {"when": "period_end", "reason": "Moving to a competitor"}
    assert _action(staff_client, alice, "cancel", form).status_code == 303
    again = _action(staff_client, alice, "cancel", form, htmx=True)
    assert again.status_code == 422 and "already set to end" in again.get_data(as_text=True)
    sub = _sub(alice)
    assert sub.cancel_at_period_end and sub.cancel_reason == "Moving to a competitor"
    assert len(_audit("support.cancel")) == 1 and len(_audit()) == 1
    free = _action(staff_client, alice, "cancel", {"when": "now", "reason": "x x x"}, htmx=True)
    assert free.status_code == 200 and "cancelled as of now" in free.get_data(as_text=True)
    nothing = _action(staff_client, alice, "cancel", {"when": "now", "reason": "x x x"}, htmx=True)
    assert nothing.status_code == 422 and "nothing to cancel" in nothing.get_data(as_text=True)
    assert len(_audit()) == 2


# --- who may ---------------------------------------------------------------------------------------------

def test_customers_get_403_everywhere(alice_client, alice, app):
    payment_id = 1
    for url in ("/staff/customers", "/staff/customers?q=demo", f"/staff/customers/{alice.id}",
                f"/staff/customers/{alice.id}/sections/wallet", "/staff/audit"):
        assert alice_client.get(url).status_code == 403, url
    token = csrf_from(alice_client, "/subscription")
    for path in ("credit", f"payments/{payment_id}/refund", "plan", "grace", "cancel"):
        response = alice_client.post(f"/staff/customers/{alice.id}/{path}",
                                     data={"csrf_token": token, "amount": "5", "reason": "me me me",
                                           "token": uuid.uuid4().hex, "plan": "premium", "days": "5", "when": "now"})
        assert response.status_code == 403, path
    assert _entries(alice) == [] and _audit() == []


def test_anonymous_visitors_are_sent_to_the_login(client, catalog):
    response = client.get("/staff/customers")
    assert response.status_code == 302 and "/login" in response.headers["Location"]
