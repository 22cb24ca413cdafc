"""Payment rows and the card calls behind them: the lowest layer of paying.

A card payment is a Payment row written (and, by the purchase path, committed) as pending
before Stripe is called, with a Stripe Idempotency-Key fixed on the row: every retry sends the
same key, so a charge whose answer was lost is never made twice (DESIGN §3.9). Status moves
are guarded updates (`... WHERE status IN (open statuses)`), so a request and a webhook racing
over the same payment move it once.

This module knows payments and Stripe, nothing of what is bought: invoices, their effects and
the purchase flow live in `portal.services.purchases`, which calls down into this one.
"""
from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from portal.clock import now
from portal.extensions import db
from portal.models import (
    Invoice,
    Payment,
    PaymentMethod,
    PaymentPurpose,
    PaymentStatus,
    Refund,
    RefundStatus,
    RetryStrategy,
    User,
)
from portal.payments import gateway
from portal.payments.errors import PaymentError, TransientPaymentError
from portal.services.statements import insert_loaded

#: A card payment that may still move: not yet answered, or waiting for the customer's bank.
OPEN_STATUSES = (PaymentStatus.PENDING, PaymentStatus.REQUIRES_ACTION)
#: Stripe forgets an Idempotency-Key after 24 hours; past this a lost charge is never re-sent.
RESEND_WITHIN = timedelta(hours=23)


class NoPaymentMethod(PaymentError):
    def __init__(self) -> None:
        super().__init__("no_payment_method", "Add a card first: the wallet does not cover this amount.",
                         RetryStrategy.MANUAL)


@dataclass(frozen=True)
class Submission:
    """What Stripe answered to a charge."""

    #: succeeded, processing, requires_action, declined (a definite no) or unknown (no answer).
    status: str
    client_secret: str | None = None
    error: PaymentError | None = None


def ensure_customer(user: User) -> str:
    """The user's Stripe customer id, created on first need."""
    if user.stripe_customer_id is None:
        user.stripe_customer_id = gateway.create_customer(user.email, user.name, user.id)
        db.session.flush()
    return user.stripe_customer_id


def default_method(user_id: int) -> PaymentMethod | None:
    return db.session.scalar(
        sa.select(PaymentMethod).where(PaymentMethod.user_id == user_id)
        .order_by(PaymentMethod.is_default.desc(), PaymentMethod.id.desc()).limit(1)
    )


def owned(user_id: int, payment_id: int) -> Payment | None:
    """The customer's own payment, or None (another customer's id looks missing)."""
    return db.session.scalar(sa.select(Payment).where(Payment.id == payment_id, Payment.user_id == user_id))


def open_card_payment(invoice_id: int) -> Payment | None:
    """The card attempt in flight for an invoice (at most one: a partial unique index)."""
    return db.session.scalar(
        sa.select(Payment).where(Payment.invoice_id == invoice_id, Payment.provider == "stripe",
                                 Payment.status.in_(OPEN_STATUSES))
    )


def latest_card_payment(invoice_id: int) -> Payment | None:
    return db.session.scalar(
        sa.select(Payment).where(Payment.invoice_id == invoice_id, Payment.provider == "stripe")
        .order_by(Payment.id.desc()).limit(1)
    )


def begin_card_payment(
    invoice: Invoice,
    method: PaymentMethod,
    *,
    purpose: PaymentPurpose,
    description: str,
) -> Payment:
    """Write the pending card attempt for what the invoice still owes (flushes; commit it before `send`)."""
    attempt = 1 + db.session.scalar(
        sa.select(sa.func.count(Payment.id)).where(Payment.invoice_id == invoice.id, Payment.provider == "stripe")
    )
    key = f"invoice:{invoice.number}:card:{attempt}"
    payment = Payment(
        user_id=invoice.user_id, invoice_id=invoice.id, purpose=purpose, amount=invoice.amount_due,
        currency=invoice.currency, status=PaymentStatus.PENDING, provider="stripe", idempotency_key=key,
        stripe_idempotency_key=f"{gateway.key_prefix()}:{key}:{uuid.uuid4().hex[:12]}",
        payment_method_id=method.id, description=description, data={}, created_at=now(),
    )
    db.session.add(payment)
    db.session.flush()
    return payment


def stripe_key(payment: Payment) -> str:
    """The Idempotency-Key this payment is sent to Stripe with (rows older than the column used their own key)."""
    return payment.stripe_idempotency_key or payment.idempotency_key


@dataclass(frozen=True)
class ChargeRequest:
    """Everything Stripe needs for a charge, read before the commit so that no database transaction
    is open while Stripe works (on SQLite an open transaction holds the only write lock)."""

    payment_id: int
    amount: int
    currency: str
    customer_id: str
    payment_method_id: str | None
    idempotency_key: str
    off_session: bool
    metadata: dict[str, str]


def charge_request(payment: Payment, *, off_session: bool = False) -> ChargeRequest:
    user = db.session.get(User, payment.user_id)
    method = db.session.get(PaymentMethod, payment.payment_method_id) if payment.payment_method_id else None
    return ChargeRequest(payment.id, payment.amount, payment.currency, ensure_customer(user),
                         method.stripe_payment_method_id if method else None, stripe_key(payment), off_session,
                         intent_metadata(payment))


def send(request: ChargeRequest) -> tuple[Submission, str | None]:
    """Ask Stripe for the charge; touches no database. Returns the answer and the intent id, if any.

    A definite refusal comes back as "declined" with its error; no answer at all (network, timeout,
    5xx) as "unknown", the charge's outcome not known: the payment must stay pending.
    """
    if request.payment_method_id is None:
        return Submission("declined", error=NoPaymentMethod()), None
    try:
        result = gateway.charge(
            amount=request.amount, currency=request.currency, customer_id=request.customer_id,
            payment_method_id=request.payment_method_id, idempotency_key=request.idempotency_key,
            off_session=request.off_session, metadata=request.metadata,
        )
    except TransientPaymentError as error:
        return Submission("unknown", error=error), error.intent_id
    except PaymentError as error:
        return Submission("declined", error=error), error.intent_id
    return Submission(result.status, client_secret=result.client_secret), result.intent_id


def record(payment: Payment, answer: Submission, intent_id: str | None) -> None:
    """Note Stripe's answer on the row (flushes); failing a declined payment is the purchase path's."""
    if intent_id:
        attach_intent(payment, intent_id)
    if answer.status == "requires_action":
        mark_requires_action(payment)
    elif answer.status == "unknown":
        # Still pending, but no longer in flight: someone has to ask Stripe (the customer, the reconciler).
        payment.data = {**(payment.data or {}), "unanswered": answer.error.code if answer.error else "unknown"}
        db.session.flush()


def unanswered(payment: Payment) -> bool:
    """A pending payment whose charge got no answer (as opposed to one still being sent)."""
    return payment.status is PaymentStatus.PENDING and bool((payment.data or {}).get("unanswered"))


def intent_metadata(payment: Payment) -> dict[str, str]:
    """What we tell Stripe about the charge; also how we find it again when its answer was lost."""
    return {"payment_id": str(payment.id), "user_id": str(payment.user_id), "purpose": payment.purpose.value,
            "key": payment.idempotency_key}


def attach_intent(payment: Payment, intent_id: str) -> None:
    if payment.stripe_payment_intent_id is None:
        payment.stripe_payment_intent_id = intent_id
        db.session.flush()


def find_intent(payment: Payment) -> Mapping[str, Any] | None:
    """Stripe's PaymentIntent for this payment as a dict: by its id, else by the metadata we sent.

    None when Stripe has no intent for it (the charge never reached Stripe). Raises PaymentError
    when Stripe cannot be asked right now.
    """
    if payment.stripe_payment_intent_id:
        return gateway.retrieve_intent(payment.stripe_payment_intent_id).to_dict()
    user = db.session.get(User, payment.user_id)
    if user.stripe_customer_id is None:
        return None
    intent = gateway.find_intent(user.stripe_customer_id, {"payment_id": str(payment.id),
                                                           "key": payment.idempotency_key})
    if intent is None:
        return None
    attach_intent(payment, intent.id)
    return intent.to_dict()


def may_resend(payment: Payment) -> bool:
    """Whether a charge that never reached Stripe may be sent again with its key (Stripe keeps keys 24 h)."""
    return now() - payment.created_at < RESEND_WITHIN


def cancel_intent(payment: Payment) -> Mapping[str, Any] | None:
    """Cancel the payment's PaymentIntent at Stripe; returns the intent as Stripe now has it."""
    if not payment.stripe_payment_intent_id:
        return None
    return gateway.cancel_intent(payment.stripe_payment_intent_id).to_dict()


# --- status moves (guarded) ------------------------------------------------------------------------

def _move(payment: Payment, allowed: tuple[PaymentStatus, ...], **values: Any) -> bool:
    moved = db.session.execute(
        sa.update(Payment).where(Payment.id == payment.id, Payment.status.in_(allowed))
        .values(updated_at=now(), **values).execution_options(synchronize_session=False)
    ).rowcount
    db.session.refresh(payment)
    return bool(moved)


def mark_succeeded(payment: Payment) -> bool:
    """pending / requires_action → succeeded, once. A payment recorded as failed that Stripe reports as
    paid moves too: Stripe holds the money, so the books must say so (the purchase path gives it back)."""
    return _move(payment, (*OPEN_STATUSES, PaymentStatus.FAILED), status=PaymentStatus.SUCCEEDED)


def mark_requires_action(payment: Payment) -> bool:
    """pending → requires_action: the bank asks the customer to confirm (3-D Secure)."""
    return _move(payment, (PaymentStatus.PENDING,), status=PaymentStatus.REQUIRES_ACTION)


def mark_failed(payment: Payment, code: str, message: str) -> bool:
    """pending / requires_action → failed, once."""
    return _move(payment, OPEN_STATUSES, status=PaymentStatus.FAILED, failure_code=code[:64],
                 failure_message=message)


def wallet_payment(invoice: Invoice, amount: int, key: str, *, description: str) -> Payment:
    """The record of a wallet debit toward an invoice (the debit itself is the caller's)."""
    payment = Payment(
        user_id=invoice.user_id, invoice_id=invoice.id, purpose=PaymentPurpose.INVOICE, amount=amount,
        currency=invoice.currency, status=PaymentStatus.SUCCEEDED, provider="wallet", idempotency_key=key,
        description=description, data={}, created_at=now(),
    )
    return insert_loaded(payment)


def add_refunded(payment: Payment, amount: int) -> None:
    """Count `amount` more as given back (guarded: never past the payment's amount)."""
    table = Payment.__table__
    db.session.execute(
        sa.update(table).where(table.c.id == payment.id, table.c.amount_refunded + amount <= table.c.amount)
        .values(amount_refunded=table.c.amount_refunded + amount, updated_at=now(),
                status=sa.case((table.c.amount_refunded + amount >= table.c.amount, PaymentStatus.REFUNDED.value),
                               else_=table.c.status))
    )
    db.session.refresh(payment)


def raise_refunded_to(payment: Payment, total: int) -> int:
    """Stripe says `total` of the payment is refunded: set it (only ever upwards); returns the increase."""
    total = min(total, payment.amount)
    before = payment.amount_refunded
    if total <= before:
        return 0
    table = Payment.__table__
    moved = db.session.execute(
        sa.update(table).where(table.c.id == payment.id, table.c.amount_refunded == before)
        .values(amount_refunded=total, updated_at=now(),
                status=sa.case((sa.and_(sa.literal(total) >= table.c.amount,
                                        table.c.status == PaymentStatus.SUCCEEDED.value),
                                PaymentStatus.REFUNDED.value), else_=table.c.status))
    ).rowcount
    db.session.refresh(payment)
    return total - before if moved else 0


# --- refunds to the card ----------------------------------------------------------------------------

def refund_key(payment: Payment, why: str) -> str:
    return f"refund:payment:{payment.id}:{why}"


def request_refund(payment: Payment, amount: int, *, why: str, reason: str,
                   actor_id: int | None = None) -> tuple[Refund, bool]:
    """Write a pending refund of a card payment, once per (payment, why); (refund, whether it is new).

    The call to Stripe is `execute_refund`, made by a job after this transaction commits.
    """
    key = refund_key(payment, why)
    existing = db.session.scalar(sa.select(Refund).where(Refund.idempotency_key == key))
    if existing is not None:
        return existing, False
    refund = Refund(payment_id=payment.id, amount=amount, status=RefundStatus.PENDING, reason=reason[:255],
                    idempotency_key=key, actor_id=actor_id, created_at=now())
    db.session.add(refund)
    db.session.flush()
    return refund, True


def execute_refund(refund: Refund) -> bool:
    """Ask Stripe for a pending refund (same key every time); True once it is done.

    Raises PaymentError when Stripe refuses or cannot be reached; the refund stays pending.
    """
    if refund.status is not RefundStatus.PENDING:
        return refund.status is RefundStatus.SUCCEEDED
    payment = db.session.get(Payment, refund.payment_id)
    if not payment.stripe_payment_intent_id:
        raise PaymentError("no_intent", "The payment has no Stripe charge to refund.", RetryStrategy.MANUAL)
    refund_id, status = gateway.refund(intent_id=payment.stripe_payment_intent_id, amount=refund.amount,
                                       idempotency_key=f"{stripe_key(payment)}:{refund.idempotency_key}")
    if status == "failed":
        raise PaymentError("refund_failed", "Stripe could not refund the payment.", RetryStrategy.MANUAL)
    moved = db.session.execute(
        sa.update(Refund).where(Refund.id == refund.id, Refund.status == RefundStatus.PENDING)
        .values(status=RefundStatus.SUCCEEDED, stripe_refund_id=refund_id)
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.refresh(refund)
    if moved:
        add_refunded(payment, refund.amount)
    return True
