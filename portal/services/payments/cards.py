"""Saved cards: kept at Stripe, mirrored here with only what the pages show."""
from __future__ import annotations

import sqlalchemy as sa

from portal.clock import now
from portal.extensions import db
from portal.models import PaymentMethod, User
from portal.payments import gateway
from portal.payments.errors import PaymentError
from portal.services import outbox
from portal.services.payments import ensure_customer


def list_methods(user_id: int) -> list[PaymentMethod]:
    return list(db.session.scalars(
        sa.select(PaymentMethod).where(PaymentMethod.user_id == user_id)
        .order_by(PaymentMethod.is_default.desc(), PaymentMethod.id)
    ))


def start_setup(user: User) -> tuple[str, str]:
    """A SetupIntent for Stripe.js to collect a card: (id, client_secret)."""
    return gateway.create_setup_intent(ensure_customer(user))


class SetupNotConfirmed(PaymentError):
    def __init__(self) -> None:
        from portal.models.errors import RetryStrategy

        super().__init__("setup_not_confirmed", "The card was not confirmed with your bank. Please try again.",
                         RetryStrategy.MANUAL)


def save(user: User, stripe_payment_method_id: str, *, setup_intent_id: str | None = None) -> PaymentMethod:
    """Attach the card to the user's Stripe customer and keep its display details; idempotent.

    From the browser, `setup_intent_id` is required: the card is kept only if that SetupIntent
    belongs to this customer, succeeded, and set up this very card.
    """
    existing = db.session.scalar(
        sa.select(PaymentMethod).where(PaymentMethod.stripe_payment_method_id == stripe_payment_method_id)
    )
    if existing is not None:
        if existing.user_id != user.id:
            raise LookupError("no such payment method")
        return existing
    if setup_intent_id is not None:
        intent = gateway.retrieve_setup_intent(setup_intent_id)
        if (intent.customer != ensure_customer(user) or intent.status != "succeeded"
                or intent.payment_method != stripe_payment_method_id):
            raise SetupNotConfirmed()
    card = gateway.attach_payment_method(stripe_payment_method_id, ensure_customer(user))
    first = not list_methods(user.id)
    method = PaymentMethod(
        user_id=user.id, stripe_payment_method_id=card.stripe_id, brand=card.brand, last4=card.last4,
        exp_month=card.exp_month, exp_year=card.exp_year, is_default=first, created_at=now(),
    )
    db.session.add(method)
    db.session.flush()
    return method


def set_default(method: PaymentMethod) -> None:
    db.session.execute(sa.update(PaymentMethod).where(PaymentMethod.user_id == method.user_id)
                       .values(is_default=PaymentMethod.id == method.id))
    db.session.refresh(method)


def remove(method: PaymentMethod) -> None:
    """Forget the card (the next one becomes the default); it is detached at Stripe by a job once
    this transaction commits, so a rolled-back removal leaves the card usable in both places."""
    outbox.enqueue_after_commit("worker.payments.detach_card", method.stripe_payment_method_id,
                                queue_name="billing")
    was_default, user_id = method.is_default, method.user_id
    db.session.delete(method)
    db.session.flush()
    if was_default:
        remaining = list_methods(user_id)
        if remaining:
            set_default(remaining[0])


def owned(user_id: int, method_id: int) -> PaymentMethod | None:
    """The user's own payment method by our id, or None (another customer's id looks missing)."""
    return db.session.scalar(
        sa.select(PaymentMethod).where(PaymentMethod.id == method_id, PaymentMethod.user_id == user_id)
    )
