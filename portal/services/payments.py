"""Paying for things: wallet first, then the saved card; settling is idempotent.

A card payment is written as a pending Payment and committed *before* Stripe is called, so a
crash between the two leaves a record to reconcile (the webhook or a retry settles it). The
Stripe idempotency key is the Payment's own key. Settling (the request that saw the charge
succeed, or the webhook, whichever comes first) moves the Payment from pending to succeeded
by a guarded update, so its effects (credit the wallet, pay the invoice, change the plan)
happen exactly once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from portal.clock import now
from portal.extensions import db
from portal.models import (
    EntryKind,
    Invoice,
    InvoiceStatus,
    Payment,
    PaymentMethod,
    PaymentPurpose,
    PaymentStatus,
    User,
)
from portal.payments import gateway
from portal.payments.errors import PaymentError
from portal.services import invoices, wallet

_OPEN = (PaymentStatus.PENDING.value, PaymentStatus.REQUIRES_ACTION.value)


class NoPaymentMethod(PaymentError):
    def __init__(self) -> None:
        from portal.models.errors import RetryStrategy

        super().__init__("no_payment_method", "Add a card first: the wallet does not cover this amount.",
                         RetryStrategy.MANUAL)


@dataclass
class Outcome:
    """What a payment attempt came to, for the page that started it."""

    status: str  #: paid, requires_action, failed
    payment: Payment | None = None
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


def begin_card_payment(
    user: User,
    amount: int,
    currency: str,
    *,
    purpose: PaymentPurpose,
    idempotency_key: str,
    description: str,
    data: dict[str, Any] | None = None,
    invoice: Invoice | None = None,
    method: PaymentMethod | None = None,
) -> Payment:
    """Write the pending card payment (commit before calling `charge`)."""
    method = method or default_method(user.id)
    if method is None:
        raise NoPaymentMethod()
    existing = db.session.scalar(sa.select(Payment).where(Payment.idempotency_key == idempotency_key))
    if existing is not None:
        return existing
    payment = Payment(
        user_id=user.id, invoice_id=invoice.id if invoice else None, purpose=purpose, amount=amount,
        currency=currency, status=PaymentStatus.PENDING, provider="stripe", idempotency_key=idempotency_key,
        payment_method_id=method.id, description=description, data=data or {}, created_at=now(),
    )
    db.session.add(payment)
    db.session.flush()
    return payment


def charge(payment: Payment, *, off_session: bool = False) -> Outcome:
    """Call Stripe for a pending payment and record the answer (flushes; the caller commits)."""
    user = db.session.get(User, payment.user_id)
    method = db.session.get(PaymentMethod, payment.payment_method_id)
    try:
        result = gateway.charge(
            amount=payment.amount, currency=payment.currency, customer_id=ensure_customer(user),
            payment_method_id=method.stripe_payment_method_id, idempotency_key=payment.idempotency_key,
            off_session=off_session,
            metadata={"payment_id": str(payment.id), "user_id": str(user.id), "purpose": payment.purpose.value},
        )
    except PaymentError as error:
        fail(payment, error.code, error.message, intent_id=error.intent_id)
        return Outcome("failed", payment, error=error)
    _attach_intent(payment, result.intent_id)
    if result.status == "succeeded":
        settle(payment.id)
        return Outcome("paid", payment)
    if result.status == "requires_action":
        _set_status(payment, PaymentStatus.REQUIRES_ACTION)
        return Outcome("requires_action", payment, client_secret=result.client_secret)
    return Outcome("processing", payment)  # settled later by the webhook


def _attach_intent(payment: Payment, intent_id: str) -> None:
    if payment.stripe_payment_intent_id is None:
        payment.stripe_payment_intent_id = intent_id
        db.session.flush()


def _set_status(payment: Payment, status: PaymentStatus) -> None:
    db.session.execute(sa.update(Payment).where(Payment.id == payment.id, Payment.status.in_(_OPEN))
                       .values(status=status, updated_at=now()).execution_options(synchronize_session=False))
    db.session.refresh(payment)


def settle(payment_id: int) -> bool:
    """Mark a payment succeeded and apply its effects, once. Returns False if it was already settled."""
    moved = db.session.execute(
        sa.update(Payment).where(Payment.id == payment_id, Payment.status.in_(_OPEN))
        .values(status=PaymentStatus.SUCCEEDED, updated_at=now()).execution_options(synchronize_session=False)
    ).rowcount
    payment = db.session.get(Payment, payment_id)
    db.session.refresh(payment)
    if not moved:
        return False
    if payment.purpose is PaymentPurpose.TOPUP:
        wallet.credit(payment.user_id, payment.amount, kind=EntryKind.TOPUP,
                      reason=payment.description or "Wallet top-up by card",
                      idempotency_key=f"topup:{payment.id}", reference=f"payment:{payment.id}")
    elif payment.invoice_id is not None:
        invoice = db.session.get(Invoice, payment.invoice_id)
        if invoices.record_payment(invoice, payment.amount):
            apply_invoice_effects(invoice, payment.data)
    return True


def fail(payment: Payment, code: str, message: str, *, intent_id: str | None = None) -> bool:
    """Record a refused payment; return any wallet part of its invoice and void the invoice."""
    if intent_id:
        _attach_intent(payment, intent_id)
    moved = db.session.execute(
        sa.update(Payment).where(Payment.id == payment.id, Payment.status.in_(_OPEN))
        .values(status=PaymentStatus.FAILED, failure_code=code, failure_message=message, updated_at=now())
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.refresh(payment)
    if moved and payment.invoice_id is not None:
        invoice = db.session.get(Invoice, payment.invoice_id)
        release_invoice(invoice)
    return bool(moved)


def release_invoice(invoice: Invoice) -> None:
    """Give back what the wallet already paid toward an invoice that will not be paid, and void it."""
    if invoice.status is not InvoiceStatus.OPEN:
        return
    wallet_paid = int(db.session.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(Payment.amount), 0)).where(
            Payment.invoice_id == invoice.id, Payment.provider == "wallet",
            Payment.status == PaymentStatus.SUCCEEDED)
    ))  # SUM of bigint is NUMERIC on PostgreSQL
    if wallet_paid:
        wallet.credit(invoice.user_id, wallet_paid, kind=EntryKind.REFUND,
                      reason=f"Returned: card payment for {invoice.number} failed",
                      idempotency_key=f"invoice:{invoice.number}:wallet-return", reference=f"invoice:{invoice.number}")
        db.session.execute(sa.update(Payment).where(Payment.invoice_id == invoice.id, Payment.provider == "wallet",
                                                    Payment.status == PaymentStatus.SUCCEEDED)
                           .values(status=PaymentStatus.REFUNDED, amount_refunded=Payment.amount, updated_at=now()))
    invoices.void(invoice, "payment failed")


def pay_from_wallet(user: User, invoice: Invoice, *, effects: dict[str, Any]) -> int:
    """Take what the wallet can of the invoice's amount due; returns the amount taken."""
    take = min(wallet.get_wallet(user.id, invoice.currency).balance, invoice.amount_due)
    if take <= 0:
        return 0
    key = f"invoice:{invoice.number}:wallet"
    wallet.debit(user.id, take, reason=f"Payment of {invoice.number}", idempotency_key=key,
                 reference=f"invoice:{invoice.number}")
    payment = Payment(
        user_id=user.id, invoice_id=invoice.id, purpose=PaymentPurpose.INVOICE, amount=take, currency=invoice.currency,
        status=PaymentStatus.PENDING, provider="wallet", idempotency_key=key, description=f"Wallet → {invoice.number}",
        data=effects, created_at=now(),
    )
    db.session.add(payment)
    db.session.flush()
    settle(payment.id)
    return take


def pay_invoice(user: User, invoice: Invoice, *, effects: dict[str, Any], off_session: bool = False,
                method: PaymentMethod | None = None) -> Outcome:
    """Pay an open invoice: wallet first, then the card. Commits between the steps (see module doc)."""
    if invoices.mark_paid_if_nothing_due(invoice):
        apply_invoice_effects(invoice, effects)
        db.session.commit()
        return Outcome("paid")
    pay_from_wallet(user, invoice, effects=effects)
    if invoice.status is InvoiceStatus.PAID:
        db.session.commit()
        return Outcome("paid")
    try:
        payment = begin_card_payment(
            user, invoice.amount_due, invoice.currency, purpose=PaymentPurpose.INVOICE,
            idempotency_key=f"invoice:{invoice.number}:card", description=f"Card → {invoice.number}",
            data=effects, invoice=invoice, method=method,
        )
    except NoPaymentMethod as error:
        release_invoice(invoice)
        db.session.commit()
        return Outcome("failed", error=error)
    db.session.commit()
    outcome = charge(payment, off_session=off_session)
    db.session.commit()
    return outcome


def apply_invoice_effects(invoice: Invoice, effects: dict[str, Any]) -> None:
    """Run what a paid invoice was for (a plan change, prepaid units); each effect is idempotent."""
    kind = effects.get("type")
    if kind == "plan_change":
        from portal.services import plan_changes

        plan_changes.apply_paid_change(invoice, effects)
    elif kind == "package":
        from portal.services import usage

        # Runs once: only the settle that completes the invoice gets here.
        usage.add_prepaid_units(invoice.user_id, effects["feature"], int(effects["units"]))
