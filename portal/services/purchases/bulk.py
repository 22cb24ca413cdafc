"""The purchase path for a batch: many new purchases, each paid in full from its customer's wallet, in the
caller's transaction with a few statements for all of them (a batch job's renewals).

    pay_from_wallets ─ the numbers (one update of the counter) ─ the invoices, paid (one insert) ─ their
                       lines (one) ─ the wallet debits, guarded (one update) and their ledger entries (one)
                       ─ the wallet payments (one) ─ the effects (`Effect.apply_many`) ─ the receipts

It writes what `flow.buy` writes for a new invoice the wallet covers (an invoice born paid rather than
paid by a second update: the same rows, the same keys), so pages, refunds and reports see no difference.
Only what is certain goes this way: the caller picks new purchases whose wallet covered them when it
read it, of a kind that applies many at once; anything else, and anything a batch leaves, takes
`flow.buy`. A batch is all or nothing: an error (a balance that fell meanwhile, a unique key, a subject
that moved) raises, and the caller rolls the transaction back — no number, debit or effect of it survives.
Locks as in `flow.buy`: the caller's subjects, then the numbers, then the wallets (by the guarded debits).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from portal.clock import now
from portal.models import Invoice, InvoiceStatus, Payment, PaymentPurpose, PaymentStatus
from portal.services import invoices, notifications, wallet
from portal.services.invoices import LineDraft
from portal.services.purchases.effects import Effect
from portal.services.purchases.flow import wallet_part
from portal.services.statements import connection


@dataclass
class WalletOrder:
    """A new purchase to invoice and pay in full from the customer's wallet."""

    effect: Effect
    lines: list[LineDraft]
    key: str
    currency: str
    wallet_id: int
    #: The customer, as `notifications.notify_many` takes them (id, email, name, timezone, usage_emails).
    recipient: Any
    subscription_id: int | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None

    @property
    def total(self) -> int:
        return sum(line.amount for line in self.lines)


@dataclass
class PaidInvoice:
    """An invoice `pay_from_wallets` wrote, paid: what its effect and receipt read of it."""

    id: int
    number: str
    user_id: int
    subscription_id: int | None
    currency: str
    total: int
    paid_at: datetime
    lines: list[LineDraft] = field(default_factory=list)
    status: InvoiceStatus = InvoiceStatus.PAID

    @property
    def amount_paid(self) -> int:
        return self.total

    @property
    def amount_due(self) -> int:
        return 0


_INVOICES = Invoice.__table__
_INSERT_INVOICES = _INVOICES.insert().returning(_INVOICES.c.id, sort_by_parameter_order=True)
_PAYMENTS = Payment.__table__


def pay_from_wallets(orders: list[WalletOrder]) -> list[PaidInvoice]:
    """Invoice every order and pay it from its wallet; apply the effects and queue the receipts. Flushes
    nothing of the session's own: all of it is written by statements, in the caller's transaction."""
    if not orders:
        return []
    kinds = {type(order.effect) for order in orders}
    if len(kinds) != 1 or not next(iter(kinds)).applies_many:
        raise ValueError("pay_from_wallets takes orders of one kind that applies many at once")
    if any(order.total <= 0 for order in orders):
        raise ValueError("pay_from_wallets takes orders with something to pay")
    at = now()
    # The numbers last but for what names them: the counter's row is locked from here to the commit.
    numbers = invoices.take_numbers(len(orders))
    ids = list(connection().execute(_INSERT_INVOICES, [
        {"number": number, "user_id": order.recipient.id, "subscription_id": order.subscription_id,
         "status": InvoiceStatus.PAID, "reason": order.effect.reason, "currency": order.currency,
         "total": order.total, "amount_paid": order.total, "period_start": order.period_start,
         "period_end": order.period_end, "due_at": at, "paid_at": at, "idempotency_key": order.key,
         "purchase": order.effect.data(), "created_at": at}
        for order, number in zip(orders, numbers)]).scalars())
    paid = [PaidInvoice(invoice_id, number, order.recipient.id, order.subscription_id, order.currency, order.total,
                        at, order.lines)
            for order, invoice_id, number in zip(orders, ids, numbers)]
    invoices.insert_lines([(invoice.id, invoice.lines) for invoice in paid])
    parts = [wallet_part(invoice.number) for invoice in paid]  # named as `flow.buy` names a new invoice's
    wallet.debit_many([wallet.Debit(order.wallet_id, invoice.total, invoice.currency, part.reason, part.key,
                                    reference=part.reference)
                       for order, invoice, part in zip(orders, paid, parts)])
    connection().execute(_PAYMENTS.insert(), [
        {"user_id": invoice.user_id, "invoice_id": invoice.id, "purpose": PaymentPurpose.INVOICE,
         "amount": invoice.total, "currency": invoice.currency, "status": PaymentStatus.SUCCEEDED,
         "provider": "wallet", "idempotency_key": part.key, "description": part.description, "data": {},
         "created_at": at, "amount_refunded": 0}
        for invoice, part in zip(paid, parts)])
    next(iter(kinds)).apply_many([(order.effect, invoice) for order, invoice in zip(orders, paid)])
    receipts: dict[str, list[tuple[Any, dict[str, Any], str]]] = defaultdict(list)
    for order, invoice in zip(orders, paid):
        kind, context = order.effect.receipt(invoice, None)
        receipts[kind].append((order.recipient, context, f"receipt:{invoice.number}"))
    for kind, emails in receipts.items():
        notifications.notify_many(kind, emails)
    return paid
