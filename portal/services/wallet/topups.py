"""Wallet top-ups by card: a purchase like any other (an invoice, its card payment, settled once),
whose effect credits the wallet. The wallet never pays for its own top-up.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import sqlalchemy as sa

from portal.extensions import db
from portal.models import EntryKind, Invoice, LineKind, Payment, PaymentPurpose, User
from portal.services import invoices, purchases, wallet
from portal.services.invoices import LineDraft


def topup_key(user_id: int, token: str) -> str:
    return f"topup:{user_id}:{token}"


def buy(user: User, amount: int, currency: str, token: str, *, card_label: str) -> purchases.Outcome:
    """Charge the default card `amount` minor units and credit the wallet once it succeeds.

    `token` is the form's: the same form sent twice is one top-up. Commits (the pending payment
    is committed before Stripe is called).
    """
    line = LineDraft(LineKind.CREDIT, "Wallet top-up", amount)
    return purchases.buy(user, TopUp(card_label=card_label), [line], key=topup_key(user.id, token), currency=currency)


def card_payment(user_id: int, token: str) -> Payment | None:
    """The card payment of the top-up made with this form token, if any (a double submit)."""
    invoice = invoices.by_key(topup_key(user_id, token))
    if invoice is None:
        return None
    return db.session.scalar(sa.select(Payment).where(Payment.invoice_id == invoice.id, Payment.provider == "stripe")
                             .order_by(Payment.id.desc()).limit(1))


@purchases.register
@dataclass(frozen=True)
class TopUp(purchases.Effect):
    """Money into the wallet, credited once the card payment succeeds."""

    kind: ClassVar[str] = "topup"
    reason: ClassVar[str] = "topup"
    purpose: ClassVar[PaymentPurpose] = PaymentPurpose.TOPUP
    wallet_pays: ClassVar[bool] = False

    #: "Visa •••• 4242", for the ledger entry.
    card_label: str = ""

    def describe(self) -> str:
        return "your wallet top-up"

    def receipt(self, invoice: Invoice, payment: Payment | None) -> tuple[str, dict[str, Any]]:
        return "topup_receipt", {"amount": invoice.total, "currency": invoice.currency, "invoice": invoice.number,
                                 "balance": wallet.get_wallet(invoice.user_id).balance,
                                 "card": self.card_label or "your card"}

    def card_description(self, invoice: Invoice) -> str:
        return f"Top-up by {self.card_label}" if self.card_label else "Wallet top-up by card"

    def apply(self, invoice: Invoice | None, payment: Payment | None) -> None:
        if payment is None:
            raise ValueError("a top-up is credited from its card payment")
        wallet.credit(payment.user_id, payment.amount, kind=EntryKind.TOPUP,
                      reason=payment.description or "Wallet top-up by card",
                      idempotency_key=f"topup:{payment.id}", reference=f"payment:{payment.id}")
