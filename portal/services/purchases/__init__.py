"""Purchases: the one path for anything paid through an invoice (plan changes, packages, top-ups,
renewals). See `flow` for the path, `bank` for acting on Stripe's answers, `effects` for the typed
purchases it applies. Kinds of purchase register their effect where their domain lives.
"""
from portal.services.purchases.bank import (
    apply_intent,
    cancel,
    cancel_purchase,
    client_secret,
    confirm,
    execute_refund,
    notify_refund,
    reconcile,
    reconcile_open_payments,
)
from portal.services.purchases.effects import Effect, Stale, register
from portal.services.purchases.flow import (
    Outcome,
    PurchaseInProgress,
    buy,
    fail,
    give_back,
    outcome_of,
    payment_check_key,
    release,
    resume,
    settle,
    unanswered,
    write_off,
)

__all__ = [
    "Effect", "Outcome", "PurchaseInProgress", "Stale", "apply_intent", "buy", "cancel", "cancel_purchase",
    "client_secret", "confirm", "execute_refund", "fail", "notify_refund", "give_back", "outcome_of", "payment_check_key", "reconcile",
    "reconcile_open_payments", "register", "release", "resume", "settle", "unanswered", "write_off",
]
