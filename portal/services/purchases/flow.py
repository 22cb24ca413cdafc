"""The one path for anything paid through an invoice: open or reuse the invoice, wallet part, card
part, settle once, apply the purchase's effect (DESIGN §3.9–3.10).

    buy ─ open the invoice (its key: the same form twice is one purchase; one open upgrade per
    │     subscription: a partial unique index) ─ wallet part ─ pending card payment ─ COMMIT ─
    │     Stripe ─ settle | fail | wait for the bank | unknown
    settle ─ lock the invoice ─ payment succeeded (guarded, once) ─ invoice still open and the
             subject still as priced? ─ yes: record on the invoice, apply the effect when paid
                                      ─ no: refund it to the card, tell staff, release the rest

Every function here flushes; the caller commits, except for the one documented two-phase step:
`_commit_before_provider_call`, so a crash while Stripe is charging leaves a pending payment to
reconcile, never a charge we have no record of.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.exc import IntegrityError

from portal.billing.money import format_money
from portal.clock import now
from portal.extensions import db
from portal.models.invoices import ONE_OPEN_PER_SUBSCRIPTION
from portal.models import (
    EntryKind,
    Invoice,
    InvoiceStatus,
    Payment,
    PaymentStatus,
    Refund,
    RetryStrategy,
    User,
    Wallet,
)
from portal.payments.errors import PaymentError, from_code
from portal.services import invoices, notifications, outbox, payments, retries, wallet
from portal.services.invoices import LineDraft
from portal.services.purchases import effects
from portal.services.purchases.effects import Effect

log = logging.getLogger(__name__)

#: Why an unapplied payment is refunded (part of the refund's idempotency key: once per payment).
UNAPPLIED = "unapplied"


@dataclass
class Outcome:
    """Where a purchase stands, for the page that started or resumed it."""

    #: paid; requires_action (the bank asks the customer); processing (the bank is working on it);
    #: unknown (no answer from Stripe: being checked, never charged twice); failed; refunded (paid
    #: but not applicable any more, given back).
    status: str
    invoice: Invoice | None = None
    payment: Payment | None = None
    client_secret: str | None = None
    error: PaymentError | None = None


class PurchaseInProgress(Exception):
    """Another purchase of the same subject is still open (an upgrade waiting for the bank)."""

    def __init__(self, invoice: Invoice, payment: Payment | None) -> None:
        super().__init__(f"{invoice.number} is still open")
        self.invoice, self.payment = invoice, payment


def _commit_before_provider_call() -> None:
    """The two-phase exception to one commit per request (DESIGN §1): the pending payment is
    durable before Stripe is called."""
    db.session.commit()


# --- buying ------------------------------------------------------------------------------------------

def buy(
    user: User,
    effect: Effect,
    lines: list[LineDraft],
    *,
    key: str,
    currency: str,
    subscription_id: int | None = None,
    period_start: datetime | None = None,
    period_end: datetime | None = None,
    off_session: bool = False,
    fresh: bool = False,
) -> Outcome:
    """Invoice `lines` for `effect` under `key` and pay it: wallet first, then the default card.

    The same key again resumes the first purchase instead (a double submit, the back button).
    Raises PurchaseInProgress when another open purchase holds the subject. Commits once, before
    Stripe is called.

    `fresh`: the caller found no invoice under `key` a moment ago and priced `effect` from its subject,
    locked in this transaction since (a renewal). The lookups that only answer a repeat or a concurrent
    purchase early are skipped, and so is the effect's check; the unique indexes still decide.
    """
    def issue() -> Invoice:
        return invoices.create_invoice(
            user.id, currency, lines, reason=effect.reason, subscription_id=subscription_id,
            period_start=period_start, period_end=period_end, idempotency_key=key, purchase=effect.data(),
            known_new=True,  # looked up just below (or by the fresh caller); the unique key decides
        )

    if fresh:
        # Under the subject's lock nothing else issues this purchase: no savepoint to fall back to. Should
        # a unique index refuse it all the same, the caller's transaction fails whole (nothing is paid).
        # The wallet is read first: from the invoice number on, the transaction holds the numbers' lock.
        account = wallet.get_wallet(user.id, currency) if effect.wallet_pays else None
        return _pay(user, issue(), effect, off_session=off_session, checked=True, new=True, account=account)
    existing = invoices.by_key(key)
    if existing is not None:
        return resume(existing, off_session=off_session)
    if subscription_id is not None:
        _refuse_if_in_progress(subscription_id, effect.reason)
    try:
        with db.session.begin_nested():
            invoice = issue()
    except IntegrityError:
        # A concurrent request won: the same purchase (its key), or another one of this subject.
        existing = invoices.by_key(key)
        if existing is not None:
            return resume(existing, off_session=off_session)
        if subscription_id is not None:
            _refuse_if_in_progress(subscription_id, effect.reason)
        raise
    return _pay(user, invoice, effect, off_session=off_session, new=True)


def _refuse_if_in_progress(subscription_id: int, reason: str) -> None:
    if reason not in ONE_OPEN_PER_SUBSCRIPTION:
        return
    blocking = invoices.open_for_subscription(subscription_id, reason)
    if blocking is not None:
        raise PurchaseInProgress(blocking, payments.open_card_payment(blocking.id))


def resume(invoice: Invoice, *, off_session: bool = False) -> Outcome:
    """Where an existing purchase stands, carrying on with paying it if nothing is in flight."""
    invoice = invoices.lock(invoice.id)
    in_flight = payments.open_card_payment(invoice.id)
    if invoice.status is not InvoiceStatus.OPEN or in_flight is not None:
        return outcome_of(invoice, in_flight or payments.latest_card_payment(invoice.id))
    user = db.session.get(User, invoice.user_id)
    return _pay(user, invoice, effects.load(invoice.purchase), off_session=off_session)


def _pay(user: User, invoice: Invoice, effect: Effect, *, off_session: bool, checked: bool = False,
         new: bool = False, account: Wallet | None = None) -> Outcome:
    """Pay an open invoice; `checked`: its subject was priced under a lock held since, `new`: it was
    issued in this transaction (nothing has paid toward it yet), `account`: the customer's wallet, read
    in this transaction."""
    if not checked:
        try:
            effect.check(invoice)
        except effects.Stale as stale:
            release(invoice, str(stale))
            return Outcome("failed", invoice, error=_refusal("stale", str(stale)))
    if invoices.mark_paid_if_nothing_due(invoice):
        _deliver(invoice, effect, None)
        return Outcome("paid", invoice)
    if effect.wallet_pays:
        wallet_part = _pay_from_wallet(invoice, new=new, account=account)
        if invoice.status is InvoiceStatus.PAID:
            _deliver(invoice, effect, wallet_part)
            return Outcome("paid", invoice, wallet_part)
    method = payments.default_method(user.id)
    if method is None:
        error = payments.NoPaymentMethod()
        _refused(invoice, effect, error)
        return Outcome("failed", invoice, error=error)
    payments.ensure_customer(user)  # before the commit, so a reconciler can find the charge by customer
    payment = payments.begin_card_payment(invoice, method, purpose=effect.purpose,
                                          description=effect.card_description(invoice))
    return _submit(payment, off_session=off_session)


@dataclass(frozen=True)
class WalletPart:
    """How a wallet part of an invoice is named: its key (the ledger entry's and the payment's), the
    ledger entry's reason and reference, the payment's description."""

    key: str
    reason: str
    reference: str
    description: str


def wallet_part(number: str, earlier: int = 0) -> WalletPart:
    """The names of invoice `number`'s wallet part after `earlier` ones (the first has no suffix)."""
    return WalletPart(f"invoice:{number}:wallet" + (f":{earlier + 1}" if earlier else ""), f"Payment of {number}",
                      f"invoice:{number}", f"Wallet → {number}")


def _pay_from_wallet(invoice: Invoice, *, new: bool = False, account: Wallet | None = None) -> Payment | None:
    """Take what the wallet can of what the invoice owes, in the invoice's currency only (`new`: the
    invoice was issued in this transaction, so no earlier wallet part can exist)."""
    if account is None or account.user_id != invoice.user_id:
        account = wallet.get_wallet(invoice.user_id, invoice.currency)
    take = min(account.balance, invoice.amount_due)
    if account.currency != invoice.currency or take <= 0:
        return None
    earlier = 0 if new else db.session.scalar(sa.select(sa.func.count(Payment.id)).where(
        Payment.invoice_id == invoice.id, Payment.provider == "wallet"))
    names = wallet_part(invoice.number, earlier)
    try:
        wallet.debit(invoice.user_id, take, reason=names.reason, idempotency_key=names.key,
                     reference=names.reference, wallet=account, new_key=new)
    except wallet.InsufficientFunds:  # spent by a concurrent payment a moment ago: the card pays it all
        return None
    part = payments.wallet_payment(invoice, take, names.key, description=names.description)
    invoices.record_payment(invoice, take)
    return part


def _submit(payment: Payment, *, off_session: bool) -> Outcome:
    """Commit the pending payment, ask Stripe with no transaction open, then act on the answer."""
    request = payments.charge_request(payment, off_session=off_session)
    _commit_before_provider_call()
    result, intent_id = payments.send(request)
    payment = db.session.get(Payment, request.payment_id)
    payments.record(payment, result, intent_id)
    invoice = db.session.get(Invoice, payment.invoice_id)
    if result.status == "succeeded":
        settled = settle(payment)
        return Outcome("refunded" if settled == "refunded" else "paid", invoice, payment)
    if result.status in ("requires_action", "processing"):
        return Outcome(result.status, invoice, payment, client_secret=result.client_secret)
    if result.status == "declined":
        fail(payment, result.error.code, result.error.message)
        return Outcome("failed", invoice, payment, error=result.error)
    unanswered(payment, result.error)
    return Outcome("unknown", invoice, payment, error=result.error)


def unanswered(payment: Payment, error: PaymentError | None) -> None:
    """Stripe did not answer about this charge: the retries ask it again, with backoff (the payment
    stays pending with its key; a retry never makes a second charge). Resolved when an answer comes."""
    failure = retries.record_failure(
        "payment_check", error.code if error else "unknown",
        f"No answer from Stripe about payment {payment.id} ({format_money(payment.amount, payment.currency)}): "
        f"{error.message if error else 'unknown outcome'}",
        dedupe_key=payment_check_key(payment), strategy=RetryStrategy.EXPONENTIAL,
        context={"payment_id": payment.id, "invoice_id": payment.invoice_id, "amount": payment.amount,
                 "currency": payment.currency},
        user_id=payment.user_id,
        subscription_id=db.session.scalar(sa.select(Invoice.subscription_id).where(Invoice.id == payment.invoice_id))
        if payment.invoice_id else None,
    )
    retries.tried(failure)


def payment_check_key(payment: Payment) -> str:
    return f"payment-check:{payment.id}"


def _answered(payment: Payment) -> None:
    """An answer about a charge that once got none: its check is over."""
    if (payment.data or {}).get("unanswered"):
        retries.resolve(payment_check_key(payment))


def _refused(invoice: Invoice, effect: Effect, error: PaymentError) -> None:
    if effect.void_on_failure:
        release(invoice, error.message)
    else:
        effect.unpaid(invoice, error)


def _refusal(code: str, message: str) -> PaymentError:
    return PaymentError(code, message[:1].upper() + message[1:], RetryStrategy.MANUAL)


# --- settling, failing, releasing ----------------------------------------------------------------------

def settle(payment: Payment) -> str:
    """The card payment succeeded: record it once and apply the purchase, or give the money back.

    Returns "settled", "unchanged" (settled before) or "refunded" (the invoice was closed, or its
    subject moved on since it was priced: refunded to the card and shown to staff). Never raises
    for a late payment: Stripe's webhook must not fail forever over money we already hold.
    """
    invoice = invoices.lock(payment.invoice_id) if payment.invoice_id else None
    if not payments.mark_succeeded(payment):
        return "unchanged"
    _answered(payment)
    if invoice is None:  # a wallet top-up paid before top-ups had invoices
        effects.load({"type": "topup"}).apply(None, payment)
        return "settled"
    effect = effects.load(invoice.purchase)
    problem = _not_applicable(invoice, effect)
    if problem is None:
        try:
            paid = invoices.record_payment(invoice, payment.amount)
        except invoices.InvoiceClosed:
            problem = f"{invoice.number} owes less than this payment"
        else:
            if paid:
                _deliver(invoice, effect, payment)
            return "settled"
    give_back(payment, invoice, problem)
    return "refunded"


def _deliver(invoice: Invoice, effect: Effect, payment: Payment | None) -> None:
    """The invoice is paid in full: apply what was bought, once, and send its receipt."""
    effect.apply(invoice, payment)
    kind, context = effect.receipt(invoice, payment)
    notifications.notify(invoice.user_id, kind, context, key=f"receipt:{invoice.number}")


def _not_applicable(invoice: Invoice, effect: Effect) -> str | None:
    if invoice.status is not InvoiceStatus.OPEN:
        return f"{invoice.number} was already {invoice.status.value} when the payment arrived"
    try:
        effect.check(invoice)
    except effects.Stale as stale:
        return str(stale)
    return None


def give_back(payment: Payment, invoice: Invoice, why: str) -> Refund:
    """Refund a succeeded card payment that cannot be applied; staff see it; the invoice is released."""
    refund, new = payments.request_refund(payment, payment.amount - payment.amount_refunded, why=UNAPPLIED,
                                          reason=why)
    if new:
        amount = format_money(payment.amount, payment.currency)
        retries.record_failure(
            "refund", "payment_not_applied",
            f"{amount} paid by card for {invoice.number} could not be applied ({why}); refunding it to the card.",
            # the refund job tries first; the retries take over if it never ran (RETRY_CLAIM_MINUTES)
            dedupe_key=refund_error_key(refund), strategy=RetryStrategy.IMMEDIATE,
            next_retry_at=now() + timedelta(minutes=current_app.config["RETRY_CLAIM_MINUTES"]),
            context={"refund_id": refund.id, "payment_id": payment.id, "invoice": invoice.number,
                     "amount": payment.amount, "currency": payment.currency, "why": why},
            user_id=payment.user_id, subscription_id=invoice.subscription_id,
        )
        outbox.enqueue_after_commit("worker.payments.refund_payment", refund.id, queue_name="billing")
    if invoice.status is InvoiceStatus.OPEN:
        release(invoice, why)
    return refund


def refund_error_key(refund: Refund) -> str:
    return f"refund:{refund.id}"


def fail(payment: Payment, code: str, message: str) -> bool:
    """The card payment was refused: record it once; a purchase made now ends with it (voided, wallet
    part returned), a renewal keeps its invoice open for the retries."""
    invoice = invoices.lock(payment.invoice_id) if payment.invoice_id else None
    if not payments.mark_failed(payment, code, message):
        return False
    _answered(payment)
    if invoice is not None and invoice.status is InvoiceStatus.OPEN:
        _refused(invoice, effects.load(invoice.purchase), from_code(code, message[:1].upper() + message[1:]))
    return True


def release(invoice: Invoice, why: str) -> None:
    """End an open invoice unpaid: return what the wallet paid toward it and void it."""
    invoice = invoices.lock(invoice.id)
    if invoice.status is not InvoiceStatus.OPEN:
        return
    _return_wallet_parts(invoice)
    invoices.void(invoice, why)


def write_off(invoice: Invoice, why: str) -> bool:
    """Give up collecting an open invoice (a renewal unpaid when the grace period ended): what the wallet
    paid toward it goes back, and it is marked uncollectible. False when it was not open (paid meanwhile)."""
    invoice = invoices.lock(invoice.id)
    if invoice.status is not InvoiceStatus.OPEN:
        return False
    _return_wallet_parts(invoice)
    invoices.mark_uncollectible(invoice, why)
    return True


def _return_wallet_parts(invoice: Invoice) -> None:
    parts = db.session.scalars(sa.select(Payment).where(
        Payment.invoice_id == invoice.id, Payment.provider == "wallet", Payment.status == PaymentStatus.SUCCEEDED))
    for part in parts:
        back = part.amount - part.amount_refunded
        if back > 0:
            wallet.credit(invoice.user_id, back, kind=EntryKind.REFUND,
                          reason=f"Returned: {invoice.number} was not completed",
                          idempotency_key=f"invoice:{invoice.number}:wallet-return:{part.id}",
                          reference=f"invoice:{invoice.number}")
            payments.add_refunded(part, back)


# --- how a purchase stands ------------------------------------------------------------------------------

def outcome_of(invoice: Invoice | None, payment: Payment | None) -> Outcome:
    """The Outcome a page shows for an invoice and its latest card payment, as they are now."""
    if payment is not None and _was_given_back(payment):
        return Outcome("refunded", invoice, payment)
    if invoice is not None and invoice.status is InvoiceStatus.PAID:
        return Outcome("paid", invoice, payment)
    if payment is None:
        if invoice is None or invoice.status is InvoiceStatus.OPEN:
            return Outcome("processing", invoice)
        return Outcome("failed", invoice, error=_refusal("not_completed", "this purchase was not completed"))
    if payment.status in (PaymentStatus.SUCCEEDED, PaymentStatus.REFUNDED):
        return Outcome("paid", invoice, payment)
    if payment.status is PaymentStatus.FAILED:
        return Outcome("failed", invoice, payment,
                       error=_refusal(payment.failure_code or "failed",
                                      payment.failure_message or "the payment did not go through"))
    if payment.status is PaymentStatus.REQUIRES_ACTION:
        return Outcome("requires_action", invoice, payment)
    return Outcome("unknown" if payments.unanswered(payment) else "processing", invoice, payment)


def _was_given_back(payment: Payment) -> bool:
    return db.session.scalar(sa.select(Refund.id).where(
        Refund.idempotency_key == payments.refund_key(payment, UNAPPLIED))) is not None
