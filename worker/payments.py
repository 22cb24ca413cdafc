"""Payment jobs: refunds and card detaches after the commit that asked for them, and the reconciler
that brings card payments left open (a crash, a lost answer, an abandoned 3-D Secure) to an end."""
from __future__ import annotations

from datetime import timedelta

from worker import job


@job("billing")
def refund_payment(refund_id: int) -> bool:
    """Refund a card payment to the card (the refund row was written by the transaction that enqueued this)."""
    from portal.services import purchases

    return purchases.execute_refund(refund_id)


@job("billing")
def detach_card(stripe_payment_method_id: str) -> None:
    """Detach a card the customer removed, at Stripe."""
    from portal.payments import gateway

    gateway.detach_payment_method(stripe_payment_method_id)


@job("billing")
def reconcile_payments() -> dict[str, int]:
    """Remind customers of a payment waiting at their bank (PAYMENT_AUTH_REMINDER_MINUTES), then settle,
    fail or cancel card payments open longer than PAYMENT_RECONCILE_AFTER_MINUTES."""
    from flask import current_app

    from portal.services import purchases

    cfg = current_app.config
    return purchases.reconcile_open_payments(older_than=timedelta(minutes=cfg["PAYMENT_RECONCILE_AFTER_MINUTES"]),
                                             remind_after=timedelta(minutes=cfg["PAYMENT_AUTH_REMINDER_MINUTES"]))
