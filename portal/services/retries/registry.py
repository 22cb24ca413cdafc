"""Retry handlers by operation type, registered where their domain lives (as purchase effects are).

A handler takes the OperationError and tries the operation once more; it may commit (a payment
commits before Stripe is called). It returns a Result, or raises (a PaymentError is a failed try with
that error's strategy; anything else is unknown and goes to a person).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from portal.models import OperationError, RetryOutcome, RetryStrategy


@dataclass(frozen=True)
class Result:
    outcome: RetryOutcome
    #: For a failed try: what failed (None: the code and message the operation recorded on the error).
    code: str | None = None
    message: str = ""
    #: For a failed try: the strategy its error class asks for (None: keep the error's).
    strategy: RetryStrategy | None = None

    @classmethod
    def succeeded(cls, message: str = "") -> Result:
        return cls(RetryOutcome.SUCCEEDED, message=message)

    @classmethod
    def failed(cls, code: str | None = None, message: str = "", strategy: RetryStrategy | None = None) -> Result:
        return cls(RetryOutcome.FAILED, code, message, strategy)

    @classmethod
    def waiting(cls, message: str = "") -> Result:
        return cls(RetryOutcome.WAITING, message=message)

    @classmethod
    def moot(cls, message: str) -> Result:
        return cls(RetryOutcome.MOOT, message=message)


Handler = Callable[[OperationError], Result]

#: operation type -> handler. Types without one (a dispute, a refund shortfall) need a person.
HANDLERS: dict[str, Handler] = {}


def handler(*operation_types: str) -> Callable[[Handler], Handler]:
    """Register the decorated function as the retry of these operation types."""
    def register(fn: Handler) -> Handler:
        for operation_type in operation_types:
            if HANDLERS.get(operation_type, fn) is not fn:
                raise ValueError(f"a retry handler for {operation_type!r} is already registered")
            HANDLERS[operation_type] = fn
        return fn
    return register
