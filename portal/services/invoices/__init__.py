"""Invoices: numbered, built from copied line values, paid in full or not at all."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import set_committed_value

from portal.clock import now
from portal.extensions import db
from portal.models import Invoice, InvoiceLine, InvoiceStatus, LineKind, NumberSequence
from portal.services.statements import connection, insert_loaded


@dataclass
class LineDraft:
    """An invoice line before it is written (pure data, built by the billing core or a service)."""

    kind: LineKind
    description: str
    amount: int
    quantity: int = 1
    unit_price: Decimal | None = None
    feature_id: int | None = None
    breakdown: list[dict[str, Any]] = field(default_factory=list)
    period_start: datetime | None = None
    period_end: datetime | None = None


_SEQUENCES = NumberSequence.__table__
_TAKE_NUMBERS = (sa.update(_SEQUENCES).where(_SEQUENCES.c.name == sa.bindparam("prefix"))
                 .values(value=_SEQUENCES.c.value + sa.bindparam("count", type_=_SEQUENCES.c.value.type))
                 .returning(_SEQUENCES.c.value))


def next_number(prefix: str = "INV") -> str:
    """The next invoice number; the counter moves in the caller's transaction, so numbers have no gaps."""
    return take_numbers(1, prefix)[0]


def take_numbers(count: int, prefix: str = "INV") -> list[str]:
    """The next `count` invoice numbers, in order, by one update of the counter. It moves in the caller's
    transaction (numbers have no gaps), whose row lock is held until it ends: take them late."""
    if count <= 0:
        return []
    table = NumberSequence.__table__
    last = db.session.execute(_TAKE_NUMBERS, {"prefix": prefix, "count": count}).scalar_one_or_none()
    if last is None:
        try:
            with db.session.begin_nested():
                db.session.execute(sa.insert(table).values(name=prefix, value=count))
            last = count
        except IntegrityError:  # another transaction created the counter first
            last = db.session.execute(_TAKE_NUMBERS, {"prefix": prefix, "count": count}).scalar_one()
    return [f"{prefix}-{value:06d}" for value in range(last - count + 1, last + 1)]


def create_invoice(
    user_id: int,
    currency: str,
    lines: list[LineDraft],
    *,
    reason: str,
    subscription_id: int | None = None,
    period_start: datetime | None = None,
    period_end: datetime | None = None,
    idempotency_key: str | None = None,
    purchase: dict[str, Any] | None = None,
    known_new: bool = False,
) -> Invoice:
    """Write an open invoice with its lines; the same idempotency key returns the first invoice
    (`known_new`: the caller looked the key up itself, and handles the unique index's IntegrityError)."""
    if idempotency_key is not None and not known_new:
        existing = by_key(idempotency_key)
        if existing is not None:
            return existing
    invoice = Invoice(
        number=next_number(),
        user_id=user_id,
        subscription_id=subscription_id,
        status=InvoiceStatus.OPEN,
        reason=reason,
        currency=currency,
        total=sum(line.amount for line in lines),
        amount_paid=0,
        period_start=period_start,
        period_end=period_end,
        due_at=now(),
        idempotency_key=idempotency_key,
        purchase=purchase or {},
        created_at=now(),
    )
    # Written by two statements rather than the unit of work (several times their cost in Python);
    # `invoice.lines` loads from the rows when read.
    insert_loaded(invoice)
    insert_lines([(invoice.id, lines)])
    return invoice


#: An executemany: psycopg sends it in one pipeline (one round trip), SQLite runs it in process; asking
#: for RETURNING instead (one multi-row INSERT) cost a batch of renewals ~20 % more (bench/renewals.py).
_LINES_INSERT = InvoiceLine.__table__.insert()


def insert_lines(invoices_lines: list[tuple[int, list[LineDraft]]]) -> None:
    """Write the lines of new invoices, (invoice id, its drafts in order), all in one statement."""
    rows = [{"invoice_id": invoice_id, "position": position, "kind": draft.kind, "description": draft.description,
             "quantity": draft.quantity, "unit_price": draft.unit_price, "amount": draft.amount,
             "feature_id": draft.feature_id, "breakdown": draft.breakdown, "period_start": draft.period_start,
             "period_end": draft.period_end}
            for invoice_id, lines in invoices_lines for position, draft in enumerate(lines, start=1)]
    if rows:
        connection().execute(_LINES_INSERT, rows)


def by_key(idempotency_key: str) -> Invoice | None:
    return db.session.scalar(sa.select(Invoice).where(Invoice.idempotency_key == idempotency_key))


_ID_BY_KEY = sa.select(Invoice.__table__.c.id).where(Invoice.__table__.c.idempotency_key == sa.bindparam("key"))


def id_by_key(idempotency_key: str) -> int | None:
    """The id of the invoice with this key (a lighter `by_key` for the common answer: none)."""
    return db.session.execute(_ID_BY_KEY, {"key": idempotency_key}).scalar()


def lock(invoice_id: int) -> Invoice:
    """The invoice, re-read and locked until the transaction ends (FOR UPDATE; SQLite's writer lock).

    Everything that pays, settles or releases an invoice takes this lock first, so a request and a
    webhook working on the same invoice take turns.
    """
    return db.session.execute(
        sa.select(Invoice).where(Invoice.id == invoice_id).with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one()


def open_for_subscription(subscription_id: int, reason: str) -> Invoice | None:
    """The open invoice of this kind for the subscription (one at most for upgrades and renewals)."""
    return db.session.scalar(
        sa.select(Invoice).where(Invoice.subscription_id == subscription_id, Invoice.reason == reason,
                                 Invoice.status == InvoiceStatus.OPEN).order_by(Invoice.id.desc()).limit(1)
    )


class InvoiceClosed(ValueError):
    """The invoice cannot take this payment: it is not open, or the payment is more than it owes."""


_INVOICES = Invoice.__table__
_REACHES = _INVOICES.c.amount_paid + sa.bindparam("amount", type_=_INVOICES.c.amount_paid.type) >= _INVOICES.c.total
_RECORD_PAYMENT = (
    sa.update(_INVOICES)
    .where(_INVOICES.c.id == sa.bindparam("invoice_id"), _INVOICES.c.status == InvoiceStatus.OPEN.value,
           _INVOICES.c.amount_paid + sa.bindparam("amount") <= _INVOICES.c.total)
    .values(amount_paid=_INVOICES.c.amount_paid + sa.bindparam("amount"),
            status=sa.case((_REACHES, InvoiceStatus.PAID.value), else_=_INVOICES.c.status),
            paid_at=sa.case((_REACHES, sa.bindparam("paid_now", type_=_INVOICES.c.paid_at.type)),
                            else_=_INVOICES.c.paid_at))
    .returning(_INVOICES.c.amount_paid, _INVOICES.c.total, _INVOICES.c.status, _INVOICES.c.paid_at)
)


def record_payment(invoice: Invoice, amount: int) -> bool:
    """Add a payment to the invoice by a guarded update; returns True when it is now paid in full.

    One statement: the guard, the new amount and, when it reaches the total, the paid status (every
    expression reads the row as it was before the update)."""
    row = db.session.execute(_RECORD_PAYMENT, {"invoice_id": invoice.id, "amount": amount, "paid_now": now()}).first()
    if row is None:
        raise InvoiceClosed(f"invoice {invoice.number} cannot take a payment of {amount}")
    # The object as the row now is, without reading it again (nothing else of it changed).
    for key in ("amount_paid", "total", "status", "paid_at"):
        set_committed_value(invoice, key, getattr(row, key))
    return row.amount_paid >= row.total


def mark_paid_if_nothing_due(invoice: Invoice) -> bool:
    """Invoices whose total is zero or less (credits cover them) are paid on issue."""
    if invoice.status is InvoiceStatus.OPEN and invoice.total <= 0:
        invoice.status, invoice.paid_at = InvoiceStatus.PAID, now()
        db.session.flush()
        return True
    return invoice.status is InvoiceStatus.PAID


def void(invoice: Invoice, reason: str) -> None:
    """Void an unpaid invoice (a failed upgrade payment, a cancelled purchase)."""
    table = Invoice.__table__
    result = db.session.execute(
        sa.update(table).where(table.c.id == invoice.id, table.c.status == InvoiceStatus.OPEN.value)
        .values(status=InvoiceStatus.VOID.value)
    )
    if result.rowcount:
        db.session.refresh(invoice)


def mark_uncollectible(invoice: Invoice, reason: str) -> None:
    """Stop collecting an unpaid invoice (a renewal still unpaid when the grace period ended)."""
    table = Invoice.__table__
    result = db.session.execute(
        sa.update(table).where(table.c.id == invoice.id, table.c.status == InvoiceStatus.OPEN.value)
        .values(status=InvoiceStatus.UNCOLLECTIBLE.value)
    )
    if result.rowcount:
        db.session.refresh(invoice)
