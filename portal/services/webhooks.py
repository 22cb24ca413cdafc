"""Stripe webhook events: stored by event id, handled once, in whatever order they arrive.

Stripe delivers at least once and in no particular order. The event row (unique on Stripe's
event id) makes a second delivery a no-op; each handler is idempotent on its own as well
(settling and failing a payment are guarded updates in the purchase path, a refunded amount is
*set* from Stripe's total, saving a card looks it up first), so an event that races the request
which caused it, or arrives after a later one, changes nothing twice and never moves a payment
backwards.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from portal.clock import now
from portal.extensions import db
from portal.models import (
    EntryKind,
    OperationError,
    Payment,
    PaymentPurpose,
    RetryStrategy,
    User,
    WalletEntry,
    WebhookEvent,
)
from portal.payments.errors import PaymentError
from portal.services import payments, purchases, retries, wallet
from portal.services.payments import cards as payment_methods

log = logging.getLogger(__name__)

RECEIVED, PROCESSED, IGNORED, FAILED = "received", "processed", "ignored", "failed"
_DONE = (PROCESSED, IGNORED)


class InvalidEvent(ValueError):
    """The signed body is not a Stripe event (no id or type)."""


@dataclass(frozen=True)
class Receipt:
    event: WebhookEvent
    #: True when this delivery found the event already handled and did nothing.
    duplicate: bool

    @property
    def failed(self) -> bool:
        return self.event.status == FAILED


def receive(payload: Mapping[str, Any]) -> Receipt:
    """Store a verified event and handle it unless an earlier delivery already did (flushes)."""
    event_id, event_type = payload.get("id"), payload.get("type")
    if not isinstance(event_id, str) or not event_id or not isinstance(event_type, str) or not event_type:
        raise InvalidEvent("the body is not a Stripe event")
    record = _by_stripe_id(event_id)
    if record is not None and record.status in _DONE:
        return Receipt(record, duplicate=True)
    if record is None:
        try:
            with db.session.begin_nested():
                record = WebhookEvent(stripe_event_id=event_id[:64], type=event_type[:64], payload=dict(payload),
                                      status=RECEIVED, received_at=now())
                db.session.add(record)
                db.session.flush()
        except IntegrityError:  # a concurrent delivery of the same event stored it first
            return Receipt(_by_stripe_id(event_id), duplicate=True)
    handle(record)
    return Receipt(record, duplicate=False)


def reprocess(webhook_event_id: int) -> str:
    """Handle a stored event again (for the retry job); returns its new status."""
    record = db.session.get(WebhookEvent, webhook_event_id)
    if record is None:
        raise LookupError(f"no webhook event {webhook_event_id}")
    if record.status not in _DONE:
        handle(record)
    return record.status


def handle(record: WebhookEvent) -> None:
    """Run the event's handler in a savepoint; mark the row processed, ignored or failed."""
    handler = HANDLERS.get(record.type)
    if handler is None:
        _finish(record, IGNORED)
        return
    data = record.payload.get("data") or {}
    obj = data.get("object") if isinstance(data, Mapping) else None
    if not isinstance(obj, Mapping):
        _finish(record, IGNORED)
        return
    try:
        with db.session.begin_nested():
            handled = handler(obj)
    except Exception as exc:  # noqa: BLE001 - any failure is recorded and Stripe retries the delivery
        log.exception("webhook %s (%s) failed", record.stripe_event_id, record.type)
        _finish(record, FAILED)
        _record_failure(record, exc)
        return
    _finish(record, PROCESSED if handled else IGNORED)
    _resolve_failure(record)


def _by_stripe_id(event_id: str) -> WebhookEvent | None:
    return db.session.scalar(sa.select(WebhookEvent).where(WebhookEvent.stripe_event_id == event_id))


def _finish(record: WebhookEvent, status: str) -> None:
    record.status = status
    record.processed_at = now()
    db.session.flush()


# --- payment intents --------------------------------------------------------------------------

def payment_for_intent(intent: Mapping[str, Any]) -> Payment | None:
    """Our card payment for a PaymentIntent: by its id, else by the payment_id we put in its metadata.

    The metadata match covers a crash between Stripe's answer and our recording the intent id;
    it is accepted only when nothing else is attached and the amount, currency and user agree.
    """
    intent_id = intent.get("id")
    if not isinstance(intent_id, str):
        return None
    payment = db.session.scalar(sa.select(Payment).where(Payment.stripe_payment_intent_id == intent_id))
    if payment is not None:
        return payment
    metadata = intent.get("metadata") or {}
    raw_id, raw_user = str(metadata.get("payment_id") or ""), str(metadata.get("user_id") or "")
    if not raw_id.isdigit():
        return None
    payment = db.session.get(Payment, int(raw_id))
    if (
        payment is None
        or payment.provider != "stripe"
        or payment.stripe_payment_intent_id is not None
        or payment.amount != intent.get("amount")
        or payment.currency.lower() != str(intent.get("currency") or "").lower()
        or (raw_user and raw_user != str(payment.user_id))
    ):
        return None
    payment.stripe_payment_intent_id = intent_id
    db.session.flush()
    return payment


def _on_intent_event(intent: Mapping[str, Any]) -> bool:
    payment = payment_for_intent(intent)
    if payment is None:
        return False
    purchases.apply_intent(payment, intent)
    return True


# --- refunds and saved cards ------------------------------------------------------------------

def _on_charge_refunded(charge: Mapping[str, Any]) -> bool:
    """Record how much of the payment Stripe has refunded (set from its total, never added to); a
    refunded top-up takes its money back out of the wallet."""
    intent_id = charge.get("payment_intent")
    refunded = charge.get("amount_refunded")
    if not isinstance(intent_id, str) or not isinstance(refunded, int) or isinstance(refunded, bool):
        return False
    # Locked: two refund events of one charge handled at once must not both take the same money back.
    payment = db.session.scalar(sa.select(Payment).where(Payment.stripe_payment_intent_id == intent_id)
                                .with_for_update().execution_options(populate_existing=True))
    if payment is None:
        return False
    increase = payments.raise_refunded_to(payment, refunded)
    if increase:
        purchases.notify_refund(payment, increase)
    if payment.purpose is PaymentPurpose.TOPUP:
        _take_back_topup(payment, min(refunded, payment.amount))
    return True


def _take_back_topup(payment: Payment, refunded: int) -> None:
    """Debit the wallet for the refunded part of a top-up it was credited with, exactly once.

    The key names the payment and the refunded total, so partial refunds add up and a repeated or
    late event changes nothing. Money the wallet no longer holds is recorded for staff.
    """
    credited = db.session.scalar(sa.select(WalletEntry).where(WalletEntry.idempotency_key == f"topup:{payment.id}"))
    if credited is None:  # never credited (refunded because it could not be applied): nothing to take back
        return
    target = min(refunded, credited.amount)
    taken = -int(db.session.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(WalletEntry.amount), 0)).where(
            WalletEntry.wallet_id == credited.wallet_id, WalletEntry.kind == EntryKind.REFUND,
            WalletEntry.reference == f"payment:{payment.id}", WalletEntry.amount < 0)
    ))
    owed = target - taken
    if owed <= 0:
        return
    balance = wallet.get_wallet(payment.user_id).balance
    take = min(owed, balance)
    if take > 0:
        wallet.debit(payment.user_id, take, kind=EntryKind.REFUND, reason="Top-up refunded to your card",
                     idempotency_key=f"topup-refund:{payment.id}:{taken + take}", reference=f"payment:{payment.id}")
    if take < owed:
        retries.record_failure(
            "refund_shortfall", "wallet_short",
            f"Top-up payment {payment.id} was refunded to the card, but the wallet held only {balance} of the "
            f"{owed} to take back; {owed - take} minor units are owed.",
            dedupe_key=f"refund-shortfall:{payment.id}:{target}", strategy=RetryStrategy.MANUAL,
            context={"payment_id": payment.id, "refunded": target, "taken": taken + take, "short": owed - take,
                     "currency": payment.currency},
            user_id=payment.user_id,
        )


def _on_dispute_created(dispute: Mapping[str, Any]) -> bool:
    """A chargeback: nothing is automatic about it; staff see it with everything they need."""
    dispute_id = dispute.get("id")
    if not isinstance(dispute_id, str):
        return False
    intent_id = dispute.get("payment_intent")
    payment = db.session.scalar(sa.select(Payment).where(Payment.stripe_payment_intent_id == intent_id)) \
        if isinstance(intent_id, str) else None
    retries.record_failure(
        "dispute", str(dispute.get("reason") or "disputed"),
        f"The customer's bank disputes charge {dispute.get('charge')} ({dispute.get('amount')} "
        f"{str(dispute.get('currency') or '').upper()}): {dispute.get('reason') or 'no reason given'}.",
        dedupe_key=f"dispute:{dispute_id}", strategy=RetryStrategy.MANUAL,
        context={"dispute_id": dispute_id, "charge": dispute.get("charge"), "payment_intent": intent_id,
                 "amount": dispute.get("amount"), "currency": dispute.get("currency"),
                 "reason": dispute.get("reason"), "payment_id": payment.id if payment else None},
        user_id=payment.user_id if payment else None,
    )
    return True


def _on_setup_succeeded(setup_intent: Mapping[str, Any]) -> bool:
    """Save the card a SetupIntent collected for the customer it belongs to (idempotent)."""
    customer, method_id = setup_intent.get("customer"), setup_intent.get("payment_method")
    if not isinstance(customer, str) or not isinstance(method_id, str):
        return False
    user = db.session.scalar(sa.select(User).where(User.stripe_customer_id == customer))
    if user is None:
        return False
    try:
        payment_methods.save(user, method_id)
    except LookupError:  # the card is saved for another of our customers
        return False
    except PaymentError as error:
        if error.retryable:
            raise
        log.warning("setup_intent %s: card %s not saved: %s", setup_intent.get("id"), method_id, error.code)
        return False
    return True


HANDLERS: dict[str, Callable[[Mapping[str, Any]], bool]] = {
    "payment_intent.succeeded": _on_intent_event,
    "payment_intent.payment_failed": _on_intent_event,
    "charge.refunded": _on_charge_refunded,
    "charge.dispute.created": _on_dispute_created,
    "setup_intent.succeeded": _on_setup_succeeded,
}


# --- failures -----------------------------------------------------------------------------------

def _failure_key(record: WebhookEvent) -> str:
    return f"webhook:{record.stripe_event_id}"


def _record_failure(record: WebhookEvent, exc: Exception) -> None:
    """One OperationError per failing event (Stripe also redelivers it; either retry may fix it)."""
    code = str(getattr(exc, "code", None) or type(exc).__name__)[:64]
    failure = retries.record_failure(
        "webhook", code, str(exc) or type(exc).__name__, dedupe_key=_failure_key(record),
        strategy=RetryStrategy.EXPONENTIAL,
        context={"webhook_event_id": record.id, "stripe_event_id": record.stripe_event_id, "type": record.type},
    )
    retries.tried(failure)


@retries.handler("webhook")
def retry_event(error: OperationError) -> retries.Result:
    """Handle the stored event again (Stripe may also redeliver it: whichever comes first does it)."""
    event_id = (error.context or {}).get("webhook_event_id")
    record = db.session.get(WebhookEvent, event_id) if event_id is not None else None
    if record is None:
        return retries.Result.moot("the stored event no longer exists")
    status = reprocess(record.id)
    if status == FAILED:
        return retries.Result.failed()
    return retries.Result.succeeded(f"event {status}")


def _resolve_failure(record: WebhookEvent) -> None:
    retries.resolve(_failure_key(record))
