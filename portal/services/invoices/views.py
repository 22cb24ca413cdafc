"""The invoice pages' read side: the keyset-paged list, one invoice with its lines' breakdowns and
the payments toward it. Writes nothing."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import selectinload

from portal import display
from portal.extensions import db
from portal.models import Invoice, InvoiceStatus, Payment, PaymentMethod
from portal.services.statements import newest_first

#: Invoices per page of the list.
PAGE_SIZE = 20

_VISIBLE = (InvoiceStatus.OPEN, InvoiceStatus.PAID, InvoiceStatus.VOID, InvoiceStatus.UNCOLLECTIBLE)


@dataclass(frozen=True)
class InvoicePage:
    invoices: list[Invoice]
    #: `before` for the next (older) page, or None on the last page.
    next_before: int | None


def invoice_page(user_id: int, before: int | None = None, size: int = PAGE_SIZE) -> InvoicePage:
    """The customer's invoices, newest first, `size` at a time, keyset-paginated on id."""
    query = sa.select(Invoice).where(Invoice.user_id == user_id, Invoice.status.in_(_VISIBLE))
    return InvoicePage(*newest_first(query, Invoice.id, before=before, size=size))


def owned_invoice(user_id: int, number: str) -> Invoice | None:
    """The customer's own invoice by number; another customer's number looks missing."""
    return db.session.scalar(
        sa.select(Invoice).where(Invoice.number == number, Invoice.user_id == user_id, Invoice.status.in_(_VISIBLE))
        .options(selectinload(Invoice.lines))
    )


def invoice_payments(invoice: Invoice) -> list[Payment]:
    """Payments made toward an invoice (wallet and card), oldest first."""
    return list(db.session.scalars(
        sa.select(Payment).where(Payment.invoice_id == invoice.id, Payment.user_id == invoice.user_id)
        .order_by(Payment.id)
    ))


@dataclass(frozen=True)
class BreakdownRow:
    description: str
    amount: str | None


def breakdown_rows(items: Iterable[Mapping[str, Any]] | None, currency: str) -> list[BreakdownRow]:
    """An invoice line's stored pricing breakdown, ready to show (amounts are exact major units)."""
    rows = []
    for item in items or []:
        if not isinstance(item, Mapping):
            continue
        amount = item.get("amount")
        shown = None
        if amount is not None:
            try:
                shown = display.unit_money(Decimal(str(amount)), currency)
            except ArithmeticError:  # decimal.InvalidOperation: show the description only
                shown = None
        rows.append(BreakdownRow(str(item.get("description", "")), shown))
    return rows


@dataclass
class InvoiceView:
    invoice: Invoice
    lines: list[tuple[Any, list[BreakdownRow]]] = field(default_factory=list)
    payments: list[Payment] = field(default_factory=list)
    #: The saved cards the payments used, by our id (a removed card is simply missing).
    cards: dict[int, PaymentMethod] = field(default_factory=dict)


def invoice_view(invoice: Invoice) -> InvoiceView:
    lines = [(line, breakdown_rows(line.breakdown, invoice.currency)) for line in invoice.lines]
    paid = invoice_payments(invoice)
    ids = {p.payment_method_id for p in paid if p.payment_method_id is not None}
    cards = {}
    if ids:
        cards = {m.id: m for m in db.session.scalars(
            sa.select(PaymentMethod).where(PaymentMethod.id.in_(ids), PaymentMethod.user_id == invoice.user_id))}
    return InvoiceView(invoice, lines, paid, cards)
