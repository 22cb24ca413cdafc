"""Stripe calls (stripe-python), each with our own idempotency key. No database writes here."""
from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import stripe
from flask import current_app

from portal.payments.errors import PaymentError, classify, from_intent


def client() -> stripe.StripeClient:
    """The app's Stripe client (pointed at localstripe when STRIPE_API_BASE is set)."""
    existing = current_app.extensions.get("stripe_client")
    if existing is None:
        cfg = current_app.config
        kwargs: dict[str, Any] = {"max_network_retries": 2}
        if cfg.get("STRIPE_API_BASE"):
            kwargs["base_addresses"] = {"api": cfg["STRIPE_API_BASE"]}
        existing = stripe.StripeClient(cfg["STRIPE_SECRET_KEY"], **kwargs)
        current_app.extensions["stripe_client"] = existing
    return existing


def _options(key: str | None) -> dict[str, Any]:
    return {"idempotency_key": key} if key else {}


def key_prefix() -> str:
    """This installation's start of every Idempotency-Key sent to Stripe.

    STRIPE_IDEMPOTENCY_PREFIX when set, else derived from SECRET_KEY: two installations sharing
    one Stripe account (staging and production, say) never send each other's keys.
    """
    cfg = current_app.config
    prefix = cfg.get("STRIPE_IDEMPOTENCY_PREFIX")
    if not prefix:
        prefix = "sp" + hashlib.sha256(f"stripe-keys:{cfg['SECRET_KEY']}".encode()).hexdigest()[:10]
    return prefix


@dataclass(frozen=True)
class CardDetails:
    stripe_id: str
    customer: str | None
    brand: str
    last4: str
    exp_month: int
    exp_year: int


@dataclass(frozen=True)
class ChargeResult:
    intent_id: str
    status: str  #: succeeded, processing, requires_action
    client_secret: str | None


def create_customer(email: str, name: str, user_id: int) -> str:
    """A Stripe customer for one of our users.

    The key is new for each call (stripe-python's own retries of this call share it): a user id can
    come back after a database restore, and a key naming it would hand the new user the old
    customer. A crash before our commit leaves at worst an unused customer at Stripe, never a charge.
    """
    try:
        customer = client().v1.customers.create(
            params={"email": email, "name": name or email, "metadata": {"user_id": str(user_id)}},
            options=_options(f"{key_prefix()}:customer:{user_id}:{uuid.uuid4().hex}"),
        )
    except stripe.StripeError as exc:
        raise classify(exc) from exc
    return customer.id


def create_setup_intent(customer_id: str) -> tuple[str, str]:
    """(id, client_secret) of a SetupIntent that saves a card for off-session use."""
    try:
        intent = client().v1.setup_intents.create(params={"customer": customer_id, "usage": "off_session"})
    except stripe.StripeError as exc:
        raise classify(exc) from exc
    return intent.id, intent.client_secret


def retrieve_setup_intent(intent_id: str):
    try:
        return client().v1.setup_intents.retrieve(intent_id)
    except stripe.StripeError as exc:
        raise classify(exc) from exc


def card_details(payment_method_id: str) -> CardDetails:
    try:
        pm = client().v1.payment_methods.retrieve(payment_method_id)
    except stripe.StripeError as exc:
        raise classify(exc) from exc
    card = pm.card
    return CardDetails(pm.id, pm.customer, card.brand or "card", card.last4, int(card.exp_month), int(card.exp_year))


def attach_payment_method(payment_method_id: str, customer_id: str) -> CardDetails:
    """Attach a card to the customer (a no-op when it already is)."""
    details = card_details(payment_method_id)
    if details.customer == customer_id:
        return details
    if details.customer is not None:
        raise PaymentError("foreign_payment_method", "That card belongs to another account.",
                           strategy=_manual())
    try:
        client().v1.payment_methods.attach(payment_method_id, params={"customer": customer_id})
    except stripe.StripeError as exc:
        raise classify(exc) from exc
    return card_details(payment_method_id)


def detach_payment_method(payment_method_id: str) -> None:
    try:
        client().v1.payment_methods.detach(payment_method_id)
    except stripe.InvalidRequestError:
        pass  # already detached or gone: the goal is met
    except stripe.StripeError as exc:
        raise classify(exc) from exc


def charge(
    *,
    amount: int,
    currency: str,
    customer_id: str,
    payment_method_id: str,
    idempotency_key: str,
    off_session: bool,
    metadata: dict[str, str],
) -> ChargeResult:
    """Create and confirm a PaymentIntent. Raises a classified PaymentError when the card is refused."""
    params: dict[str, Any] = {
        "amount": amount,
        "currency": currency.lower(),
        "customer": customer_id,
        "payment_method": payment_method_id,
        "confirm": True,
        "metadata": metadata,
    }
    if off_session:
        params["off_session"] = True
    try:
        intent = client().v1.payment_intents.create(params=params, options=_options(idempotency_key))
    except stripe.StripeError as exc:
        intent_id = None
        payment_intent = getattr(getattr(exc, "error", None), "payment_intent", None)
        if payment_intent is not None:
            intent_id = payment_intent.get("id") if isinstance(payment_intent, dict) else payment_intent.id
        raise classify(exc, intent_id) from exc
    if intent.status in ("succeeded", "processing"):
        return ChargeResult(intent.id, intent.status, intent.client_secret)
    if intent.status == "requires_action" and not off_session:
        return ChargeResult(intent.id, intent.status, intent.client_secret)
    raise from_intent(intent)


def retrieve_intent(intent_id: str):
    try:
        return client().v1.payment_intents.retrieve(intent_id)
    except stripe.StripeError as exc:
        raise classify(exc, intent_id) from exc


def find_intent(customer_id: str, metadata: Mapping[str, str]):
    """The customer's PaymentIntent whose metadata holds all of `metadata`, or None.

    For a charge whose answer never reached us (a timeout, a crash): we know what we sent, not the
    id Stripe gave it. The newest 100 intents of the customer are enough for a payment that is
    reconciled within hours.
    """
    try:
        page = client().v1.payment_intents.list(params={"customer": customer_id, "limit": 100})
    except stripe.StripeError as exc:
        raise classify(exc) from exc
    for intent in page.data:
        found = intent.to_dict().get("metadata") or {}
        if all(found.get(key) == value for key, value in metadata.items()):
            return intent
    return None


def cancel_intent(intent_id: str):
    """Cancel a PaymentIntent that has not been paid; returns the intent as Stripe now has it.

    An intent that can no longer be cancelled (it succeeded, or is processing) is returned as it
    is, so the caller settles what actually happened.
    """
    try:
        return client().v1.payment_intents.cancel(intent_id)
    except stripe.InvalidRequestError:
        return retrieve_intent(intent_id)
    except stripe.StripeError as exc:
        raise classify(exc, intent_id) from exc


def refund(*, intent_id: str, amount: int, idempotency_key: str) -> tuple[str, str]:
    """Refund part or all of a payment; returns (refund id, status)."""
    try:
        result = client().v1.refunds.create(params={"payment_intent": intent_id, "amount": amount},
                                            options=_options(idempotency_key))
    except stripe.StripeError as exc:
        raise classify(exc, intent_id) from exc
    return result.id, result.status


def construct_event(payload: bytes, signature: str | None) -> stripe.Event:
    """Verify a webhook's signature on the raw body (raises ValueError or SignatureVerificationError)."""
    return stripe.Webhook.construct_event(payload, signature, current_app.config["STRIPE_WEBHOOK_SECRET"],
                                          tolerance=current_app.config.get("STRIPE_WEBHOOK_TOLERANCE", 300))


def _manual():
    from portal.models.errors import RetryStrategy

    return RetryStrategy.MANUAL
