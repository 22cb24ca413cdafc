"""What paying an invoice does: one small class per kind of purchase, found through a registry.

An effect is the typed record of what was priced (stored on the invoice as JSON) and the one
place that applies it once the invoice is paid in full. The purchase path calls `check` before
applying: a subject that moved on since it was priced (the subscription renewed, another plan
change went first) makes the payment go back to the customer instead of being applied twice or
late (DESIGN §3.10).

Kinds register themselves where their domain lives (plan changes, packages, top-ups, renewals),
so this module and the purchase path import none of them: lower layers never import higher ones.
"""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from portal.models import Invoice, Payment, PaymentPurpose
from portal.payments.errors import PaymentError


class Stale(Exception):
    """The purchase's subject is no longer in the state it was priced for; the message says how."""


class UnknownPurchase(LookupError):
    """An invoice names a kind of purchase no module registered."""


class Effect:
    """Base of every purchase effect: a frozen dataclass with the fields it was priced with."""

    #: Registry name, stored as "type" in the invoice's purchase JSON.
    kind: ClassVar[str]
    #: The invoice reason (invoices list it; "upgrade" and "renewal" allow one open per subscription).
    reason: ClassVar[str]
    #: What the card payment is recorded as.
    purpose: ClassVar[PaymentPurpose] = PaymentPurpose.INVOICE
    #: Whether the wallet pays first (not for a wallet top-up).
    wallet_pays: ClassVar[bool] = True
    #: A refused card ends the purchase: the invoice is voided and the wallet part returned.
    #: Renewals keep theirs open for the retries instead.
    void_on_failure: ClassVar[bool] = True

    #: Whether `apply_many` is implemented: many purchases of this kind may be paid at once from their
    #: wallets (`purchases.bulk`).
    applies_many: ClassVar[bool] = False

    @classmethod
    def apply_many(cls, paid: list[tuple[Effect, Any]]) -> None:
        """Deliver many purchases of this kind paid at once (`purchases.bulk`), each with its
        `bulk.PaidInvoice`: what `apply` does for each, in a few statements for all."""
        raise NotImplementedError

    def check(self, invoice: Invoice) -> None:
        """Raise Stale if the subject is no longer what was priced (lock what you read)."""

    def apply(self, invoice: Invoice, payment: Payment | None) -> None:
        """Deliver what was bought; runs once, when the invoice becomes paid (`payment`: the last part)."""
        raise NotImplementedError

    def unpaid(self, invoice: Invoice, error: PaymentError) -> None:
        """A kind that keeps its invoice open when the card is refused (void_on_failure False) hears it
        here, once per refusal: a renewal moves the subscription to past due."""

    def describe(self) -> str:
        """A few words for the payment pages ("your plan upgrade")."""
        return "your purchase"

    def receipt(self, invoice: Invoice, payment: Payment | None) -> tuple[str, dict[str, Any]]:
        """The email that says it is paid: (kind, context); an invoice receipt unless a kind says more."""
        what = invoice.lines[0].description if invoice.lines else invoice.number
        return "invoice_paid", {"invoice": invoice.number, "amount": invoice.total, "currency": invoice.currency,
                                "what": what, "paid_at": invoice.paid_at}

    def card_description(self, invoice: Invoice) -> str:
        """The card payment's description (shown on the invoice and the payment pages)."""
        return f"Card → {invoice.number}"

    def data(self) -> dict[str, Any]:
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}  # type: ignore[arg-type]
        return {"type": self.kind, **{k: v.isoformat() if isinstance(v, datetime) else v for k, v in values.items()}}


E = TypeVar("E", bound=type[Effect])
REGISTRY: dict[str, type[Effect]] = {}


def register(cls: E) -> E:
    """Class decorator: make a purchase kind loadable from an invoice."""
    existing = REGISTRY.get(cls.kind)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"two purchase effects are named {cls.kind!r}")
    REGISTRY[cls.kind] = cls
    return cls


def load(data: Mapping[str, Any]) -> Effect:
    """The effect an invoice's purchase JSON describes."""
    kind = data.get("type") or Nothing.kind
    cls = REGISTRY.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise UnknownPurchase(f"no purchase effect is registered for {kind!r}")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if field.name not in data:
            continue
        value = data[field.name]
        if value is not None and datetime in _types(hints.get(field.name)):
            value = datetime.fromisoformat(value)
        values[field.name] = value
    return cls(**values)


def _types(hint: Any) -> tuple[Any, ...]:
    return typing.get_args(hint) or (hint,)


@register
@dataclasses.dataclass(frozen=True)
class Nothing(Effect):
    """An invoice issued on its own (by staff, or before purchases were typed): paying it is all."""

    kind: ClassVar[str] = "none"
    reason: ClassVar[str] = "manual"

    def apply(self, invoice: Invoice, payment: Payment | None) -> None:
        pass
