"""Asking Stripe how a card payment ended, and acting on the answer, for every caller alike: the
3-D Secure confirm of any page, "check again" after a timeout, the webhook, the reconciler.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa

from portal.clock import now
from portal.extensions import db
from portal.models import (
    Invoice,
    InvoiceStatus,
    OperationError,
    Payment,
    PaymentStatus,
    Refund,
    RefundStatus,
    RetryStrategy,
)
from portal.payments import gateway
from portal.payments.errors import PaymentError, from_intent
from portal.services import notifications, payments, retries
from portal.services.purchases import effects
from portal.services.purchases.flow import (
    Outcome,
    _submit,
    fail,
    outcome_of,
    refund_error_key,
    release,
    settle,
)

log = logging.getLogger(__name__)

#: Intent statuses in which nothing will happen unless someone acts: safe to cancel when abandoned.
_WAITING = ("requires_action", "requires_confirmation", "requires_payment_method")


def apply_intent(payment: Payment, intent: Mapping[str, Any]) -> str:
    """Bring our payment in line with Stripe's PaymentIntent (a dict); returns what happened.

    "settled", "refunded" (Stripe took money for a purchase we cannot apply any more: given back),
    "failed", or "unchanged" (already final, or still with the customer or the bank).
    """
    if intent.get("id"):
        payments.attach_intent(payment, intent["id"])
    status = intent.get("status")
    if status == "succeeded":
        return settle(payment)
    if status in ("requires_payment_method", "canceled"):
        error = from_intent(SimpleNamespace(status=status, id=intent.get("id"),
                                            last_payment_error=intent.get("last_payment_error") or {}))
        if status == "canceled" and not intent.get("last_payment_error"):
            error.code, error.message = "canceled", "The payment was cancelled before it completed."
        return "failed" if fail(payment, error.code, error.message) else "unchanged"
    if status == "requires_action":
        payments.mark_requires_action(payment)
    return "unchanged"


def confirm(payment: Payment, *, off_session: bool = False) -> Outcome:
    """After the bank's check, or "check again": ask Stripe how the payment stands and act on it.

    A charge Stripe never received (its answer was lost before it got there) is sent again with the
    same Idempotency-Key while the invoice still wants it: a retry, never a second charge.
    """
    invoice = db.session.get(Invoice, payment.invoice_id) if payment.invoice_id else None
    if payment.status in payments.OPEN_STATUSES:
        try:
            intent = payments.find_intent(payment)
        except PaymentError as error:
            return Outcome("unknown", invoice, payment, error=error)
        if intent is not None:
            apply_intent(payment, intent)
        elif (payment.status is PaymentStatus.PENDING and invoice is not None
              and invoice.status is InvoiceStatus.OPEN and payments.may_resend(payment)):
            return _submit(payment, off_session=off_session)
        else:
            fail(payment, "not_submitted", "The payment did not reach the bank. Nothing was charged.")
    outcome = outcome_of(invoice, payment)
    if outcome.status == "requires_action":
        outcome.client_secret = client_secret(payment)
    return outcome


def client_secret(payment: Payment) -> str | None:
    """The PaymentIntent's client secret Stripe.js needs for the bank's check (None if Stripe is unreachable)."""
    if not payment.stripe_payment_intent_id:
        return None
    try:
        return gateway.retrieve_intent(payment.stripe_payment_intent_id).client_secret
    except PaymentError:
        return None


def cancel(payment: Payment, why: str) -> Outcome:
    """Give up a payment still waiting (the customer chose another plan, or it was abandoned at the bank):
    cancel the PaymentIntent at Stripe and release the invoice. A payment that succeeded meanwhile is
    settled instead. Raises PaymentError when Stripe cannot be reached (nothing changes)."""
    invoice = db.session.get(Invoice, payment.invoice_id) if payment.invoice_id else None
    if payment.status in payments.OPEN_STATUSES:
        intent = payments.find_intent(payment)
        if intent is not None and intent.get("status") in _WAITING:
            intent = payments.cancel_intent(payment)
        if intent is None:
            fail(payment, "canceled", f"The payment was cancelled ({why}) before it reached the bank.")
        else:
            apply_intent(payment, intent)
    return outcome_of(invoice, payment)


def cancel_purchase(invoice: Invoice, why: str) -> Outcome:
    """Give up an open purchase: its payment in flight (if any) is cancelled, the invoice released."""
    in_flight = payments.open_card_payment(invoice.id)
    if in_flight is not None:
        return cancel(in_flight, why)
    release(invoice, why)
    return outcome_of(invoice, payments.latest_card_payment(invoice.id))


# --- the reconciler ---------------------------------------------------------------------------------------

def reconcile(payment: Payment) -> str:
    """Settle, fail or cancel one card payment left open too long; returns what happened."""
    if payment.status not in payments.OPEN_STATUSES:
        return "unchanged"
    intent = payments.find_intent(payment)
    if intent is None:
        fail(payment, "not_submitted", "The payment never reached the bank. Nothing was charged.")
        return "failed"
    done = apply_intent(payment, intent)
    if payment.status in payments.OPEN_STATUSES and intent.get("status") in _WAITING:
        cancel(payment, "abandoned")
        return "canceled"
    return done


def reconcile_open_payments(*, older_than: timedelta, remind_after: timedelta | None = None,
                            limit: int = 200) -> dict[str, int]:
    """The periodic job's work: every card payment open for longer than `older_than`, and every purchase
    invoice left open with nothing in flight, brought to an end. Each in its own savepoint. Before that,
    a payment waiting for the customer's bank for `remind_after` gets one email with the link."""
    cutoff = now() - older_than
    counts: dict[str, int] = {}
    if remind_after is not None:
        counts.update(_remind_to_authenticate(now() - remind_after, cutoff, limit))
    # A charge that got no answer is the retries' (payment_check, with backoff), not the reconciler's.
    checked = sa.select(OperationError.id).where(
        OperationError.dedupe_key == sa.literal("payment-check:") + sa.cast(Payment.id, sa.String),
        OperationError.status.in_(retries.OPEN))
    stuck = db.session.scalars(
        sa.select(Payment).where(Payment.provider == "stripe", Payment.status.in_(payments.OPEN_STATUSES),
                                 Payment.created_at < cutoff, ~sa.exists(checked)).order_by(Payment.id).limit(limit)
    ).all()
    for payment in stuck:
        try:
            with db.session.begin_nested():
                done = reconcile(payment)
        except PaymentError as error:  # Stripe unreachable: the next run tries again
            log.warning("reconcile payment %s: %s", payment.id, error.code)
            done = "error"
        counts[done] = counts.get(done, 0) + 1
    for invoice in _orphan_invoices(cutoff, limit):
        with db.session.begin_nested():
            release(invoice, "not completed")
        counts["released"] = counts.get("released", 0) + 1
    return counts


def _remind_to_authenticate(since, cutoff, limit: int) -> dict[str, int]:
    """Payments left at the bank's check (3-D Secure) since before `since`, not yet old enough to be
    cancelled: the customer gets the link once (they may have closed the page)."""
    waiting = db.session.scalars(
        sa.select(Payment).where(Payment.provider == "stripe", Payment.status == PaymentStatus.REQUIRES_ACTION,
                                 Payment.created_at < since, Payment.created_at >= cutoff)
        .order_by(Payment.id).limit(limit)
    ).all()
    sent = 0
    for payment in waiting:
        invoice = db.session.get(Invoice, payment.invoice_id) if payment.invoice_id else None
        what = effects.load(invoice.purchase).describe() if invoice is not None else "your purchase"
        if notifications.notify(payment.user_id, "payment_needs_authentication", {
            "amount": payment.amount, "currency": payment.currency, "what": what, "payment_id": payment.id,
        }, key=f"needs_authentication:{payment.id}") is not None:
            sent += 1
    return {"reminded": sent} if sent else {}


def _orphan_invoices(cutoff, limit: int) -> list[Invoice]:
    """Open purchase invoices with no card payment in flight (the purchase stopped half-way)."""
    in_flight = sa.select(Payment.id).where(Payment.invoice_id == Invoice.id, Payment.provider == "stripe",
                                            Payment.status.in_(payments.OPEN_STATUSES))
    candidates = db.session.scalars(
        sa.select(Invoice).where(Invoice.status == InvoiceStatus.OPEN, Invoice.created_at < cutoff,
                                 ~sa.exists(in_flight)).order_by(Invoice.id).limit(limit)
    ).all()
    return [invoice for invoice in candidates if effects.load(invoice.purchase).void_on_failure
            and invoice.purchase.get("type")]


# --- refunds ----------------------------------------------------------------------------------------------

def execute_refund(refund_id: int) -> bool:
    """Carry out a pending refund to the card (the job); the staff error closes when it is done."""
    refund = db.session.get(Refund, refund_id)
    if refund is None:
        raise LookupError(f"no refund {refund_id}")
    try:
        with db.session.begin_nested():
            done = payments.execute_refund(refund)
    except PaymentError as error:
        # Refunds are urgent: a few quick tries, then a person (a refusal Stripe will repeat goes to one now).
        payment = db.session.get(Payment, refund.payment_id)
        failure = retries.record_failure(
            "refund", error.code, f"Refund {refund.id} to the card failed: {error.message}",
            dedupe_key=refund_error_key(refund),
            strategy=RetryStrategy.IMMEDIATE if error.retryable else RetryStrategy.MANUAL,
            context={"refund_id": refund.id, "payment_id": refund.payment_id, "amount": refund.amount,
                     "currency": payment.currency if payment else None},
            user_id=payment.user_id if payment else None)
        retries.tried(failure)
        return False
    if done and refund.status is RefundStatus.SUCCEEDED:
        retries.resolve(refund_error_key(refund))
        notify_refund(db.session.get(Payment, refund.payment_id), refund.amount)
    return done


@retries.handler("refund")
def retry_refund(error: OperationError) -> retries.Result:
    """Ask Stripe for the refund again (its key is the same every time: never a second refund)."""
    refund = db.session.get(Refund, (error.context or {}).get("refund_id"))
    if refund is None:
        return retries.Result.moot("the refund no longer exists")
    if refund.status is RefundStatus.SUCCEEDED:
        return retries.Result.succeeded("refunded meanwhile")
    if refund.status is not RefundStatus.PENDING:
        return retries.Result.moot(f"the refund is {refund.status.value}")
    if execute_refund(refund.id) and refund.status is RefundStatus.SUCCEEDED:
        return retries.Result.succeeded(f"refunded (Stripe {refund.stripe_refund_id})")
    return retries.Result.failed()


@retries.handler("payment_check")
def retry_check(error: OperationError) -> retries.Result:
    """Ask Stripe how a charge that got no answer ended (or send it again with its key if Stripe never
    received it), and act on the answer."""
    payment = db.session.get(Payment, (error.context or {}).get("payment_id"))
    if payment is None:
        return retries.Result.moot("the payment no longer exists")
    if payment.status not in payments.OPEN_STATUSES:
        return retries.Result.succeeded(f"the payment is {payment.status.value}")
    invoice = db.session.get(Invoice, payment.invoice_id) if payment.invoice_id else None
    outcome = confirm(payment, off_session=invoice is not None and invoice.reason == "renewal")
    if outcome.status == "unknown":
        cause = outcome.error
        return retries.Result.failed(cause.code if cause else "unknown",
                                     cause.message if cause else "Stripe did not answer.", RetryStrategy.EXPONENTIAL)
    if outcome.status == "processing":
        return retries.Result.waiting("the bank is still processing the payment")
    return retries.Result.succeeded(f"Stripe answered: {outcome.status}")


def notify_refund(payment: Payment, amount: int) -> None:
    """Tell the customer money went back to their card. Keyed by the payment's refunded total, so the
    refund job and Stripe's charge.refunded event about the same refund send one email."""
    invoice = db.session.get(Invoice, payment.invoice_id) if payment.invoice_id else None
    notifications.notify(payment.user_id, "refund_issued", {
        "amount": amount, "currency": payment.currency, "to": "your card",
        "what": invoice.number if invoice is not None else payment.description,
    }, key=f"refund_issued:{payment.id}:{payment.amount_refunded}")
