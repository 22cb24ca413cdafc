"""Stripe errors, classified into what the customer is told and how we retry (DESIGN §4)."""
from __future__ import annotations

from dataclasses import dataclass

import stripe

from portal.models.errors import RetryStrategy


class PaymentError(Exception):
    """A payment that did not go through. `message` is fit to show the customer."""

    def __init__(self, code: str, message: str, strategy: RetryStrategy, *, decline_code: str | None = None,
                 intent_id: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.strategy = code, message, strategy
        self.decline_code, self.intent_id = decline_code, intent_id

    @property
    def retryable(self) -> bool:
        return self.strategy is not RetryStrategy.MANUAL


class CardDeclined(PaymentError):
    pass


class AuthenticationRequired(PaymentError):
    pass


class TransientPaymentError(PaymentError):
    """The provider did not answer (network, timeout, rate limit, 5xx): the outcome is unknown.

    Never a decline: the charge may have gone through. The payment stays pending with its
    idempotency key, and a retry or the reconciler asks Stripe what happened (DESIGN §3.9).
    """


@dataclass(frozen=True)
class _Rule:
    cls: type[PaymentError]
    strategy: RetryStrategy
    message: str


_DECLINE = _Rule(CardDeclined, RetryStrategy.FIXED_INTERVAL,
                 "Your card was declined. Use another card or contact your bank.")
#: Card error codes (and decline codes) to rule; anything unknown needs a person.
_CARD_RULES: dict[str, _Rule] = {
    "card_declined": _DECLINE,
    "insufficient_funds": _Rule(CardDeclined, RetryStrategy.FIXED_INTERVAL,
                                "Your card has insufficient funds. Top up the card or use another one."),
    "expired_card": _Rule(CardDeclined, RetryStrategy.MANUAL, "Your card has expired. Add a new card."),
    "incorrect_cvc": _Rule(CardDeclined, RetryStrategy.MANUAL, "The card's security code is incorrect."),
    "incorrect_number": _Rule(CardDeclined, RetryStrategy.MANUAL, "The card number is incorrect."),
    "processing_error": _Rule(TransientPaymentError, RetryStrategy.EXPONENTIAL,
                              "The card could not be processed just now. Please try again in a moment."),
    "authentication_required": _Rule(AuthenticationRequired, RetryStrategy.MANUAL,
                                     "Your bank asks you to confirm this payment. "
                                     "Pay from the portal to complete the authentication."),
    "payment_intent_authentication_failure": _Rule(AuthenticationRequired, RetryStrategy.MANUAL,
                                                   "The card's authentication failed. Try again or use another card."),
}


def classify(error: stripe.StripeError, intent_id: str | None = None) -> PaymentError:
    """Map a stripe-python error to a PaymentError with a customer message and a retry strategy."""
    if isinstance(error, stripe.CardError):
        decline = getattr(error, "error", None) and getattr(error.error, "decline_code", None)
        code = error.code or "card_declined"
        rule = _CARD_RULES.get(decline or "") or _CARD_RULES.get(code) or _DECLINE
        return rule.cls(code, rule.message, rule.strategy, decline_code=decline, intent_id=intent_id)
    if isinstance(error, (stripe.APIConnectionError, stripe.RateLimitError)):
        return TransientPaymentError(
            "network" if isinstance(error, stripe.APIConnectionError) else "rate_limited",
            "The payment service could not be reached. Please try again in a moment.",
            RetryStrategy.EXPONENTIAL, intent_id=intent_id)
    if isinstance(error, stripe.APIError) or (error.http_status or 0) >= 500:
        return TransientPaymentError("provider_error", "The payment service had a problem. Please try again shortly.",
                                     RetryStrategy.EXPONENTIAL, intent_id=intent_id)
    if isinstance(error, stripe.IdempotencyError):
        if (error.http_status or 0) == 409:  # the first request with this key is still running
            return TransientPaymentError("in_progress", "This payment is still being processed. "
                                         "Check again in a moment.", RetryStrategy.EXPONENTIAL, intent_id=intent_id)
        return PaymentError("idempotency_conflict", "This payment conflicts with an earlier attempt.",
                            RetryStrategy.MANUAL, intent_id=intent_id)
    return PaymentError(error.code or error.__class__.__name__.lower(),
                        "The payment could not be completed. Our team has been notified.",
                        RetryStrategy.MANUAL, intent_id=intent_id)


def from_intent(intent) -> PaymentError:
    """A PaymentError for an intent that came back unsuccessful without an exception."""
    if intent.status == "requires_action":
        rule = _CARD_RULES["authentication_required"]
        return rule.cls("authentication_required", rule.message, rule.strategy, intent_id=intent.id)
    last = getattr(intent, "last_payment_error", None) or {}
    code = (last.get("code") if isinstance(last, dict) else getattr(last, "code", None)) or "card_declined"
    rule = _CARD_RULES.get(code, _DECLINE)
    return rule.cls(code, rule.message, rule.strategy, intent_id=intent.id)


def from_code(code: str, message: str) -> PaymentError:
    """The error a recorded refusal stands for (its code as Stripe gave it): the retry strategy comes
    from the same rules as a live error's; `message` is what the customer was told."""
    rule = _CARD_RULES.get(code)
    if rule is None:
        strategy = RetryStrategy.MANUAL if code not in ("network", "rate_limited", "api_error") \
            else RetryStrategy.EXPONENTIAL
        return PaymentError(code, message, strategy)
    return rule.cls(code, message, rule.strategy)
