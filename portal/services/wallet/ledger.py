"""Reading the wallet ledger: filters, keyset pages (newest first) and a streamed CSV export.

Pages are cut by id, never by OFFSET: `before=<id>` reads the next older page straight from the
(wallet_id, id) or (wallet_id, kind, id) index however deep the ledger is, and a page stays
correct while new entries arrive. Every query is scoped by the customer's wallet, so another
customer's entry id finds nothing.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

import sqlalchemy as sa

from portal.billing.money import minor_exponent
from portal.extensions import db
from portal.models import EntryKind, Payment, PaymentPurpose, Refund, Wallet, WalletEntry

PAGE_SIZE = 50
CSV_BATCH = 1000
CSV_COLUMNS = ["date", "type", "description", "amount", "currency", "balance_after", "reference"]


@dataclass(frozen=True)
class LedgerFilter:
    """Which entries to show: one kind and/or a range of UTC calendar days (both ends included)."""

    kind: EntryKind | None = None
    start: date | None = None
    end: date | None = None

    def conditions(self, wallet_id: int) -> list[sa.ColumnElement[bool]]:
        where = [WalletEntry.wallet_id == wallet_id]
        if self.kind is not None:
            where.append(WalletEntry.kind == self.kind)
        if self.start is not None:
            where.append(WalletEntry.created_at >= _midnight(self.start))
        if self.end is not None:
            where.append(WalletEntry.created_at < _midnight(self.end + timedelta(days=1)))
        return where

    def as_args(self) -> dict[str, str]:
        """The query-string form of the filter (for links and the CSV export)."""
        args: dict[str, str] = {}
        if self.kind is not None:
            args["kind"] = self.kind.value
        if self.start is not None:
            args["from"] = self.start.isoformat()
        if self.end is not None:
            args["to"] = self.end.isoformat()
        return args

    @property
    def active(self) -> bool:
        return self.kind is not None or self.start is not None or self.end is not None


@dataclass
class LedgerPage:
    entries: list[WalletEntry] = field(default_factory=list)
    #: `before=` value for the next older page, None when this page holds the oldest entry.
    older_than: int | None = None
    #: `after=` value for the next newer page, None on the newest page.
    newer_than: int | None = None


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=timezone.utc)


def find_wallet(user_id: int) -> Wallet | None:
    """The customer's wallet if one exists (reading never creates it)."""
    return db.session.scalar(sa.select(Wallet).where(Wallet.user_id == user_id))


def ledger_page(wallet_id: int, flt: LedgerFilter, *, before: int | None = None, after: int | None = None,
                size: int = PAGE_SIZE) -> LedgerPage:
    """One page of entries, newest first: the newest, those older than `before`, or newer than `after`."""
    bounded = _bounded_conditions(wallet_id, flt)
    if bounded is None:
        return LedgerPage()
    where, low, high = bounded
    query = sa.select(WalletEntry).where(*where)
    if after is not None:
        rows = list(db.session.scalars(
            query.where(WalletEntry.id > after).order_by(WalletEntry.id.asc()).limit(size + 1)))
        more_newer = len(rows) > size
        entries = list(reversed(rows[:size]))
        more_older = bool(entries) and (entries[-1].id > low if low is not None
                                         else _exists(where, WalletEntry.id < entries[-1].id))
    else:
        if before is not None:
            query = query.where(WalletEntry.id < before)
        rows = list(db.session.scalars(query.order_by(WalletEntry.id.desc()).limit(size + 1)))
        more_older = len(rows) > size
        entries = rows[:size]
        more_newer = before is not None and bool(entries) and (
            entries[0].id < high if high is not None else _exists(where, WalletEntry.id > entries[0].id))
    if not entries:
        return LedgerPage()
    return LedgerPage(entries, entries[-1].id if more_older else None, entries[0].id if more_newer else None)


def _bounded_conditions(wallet_id: int, flt: LedgerFilter):
    """The filter's WHERE terms; with a date range, also the id span of the matching entries.

    Ordering by id while filtering by date leaves a planner two indexes to choose from. SQLite
    takes the date index and sorts the whole range for 51 rows (~100 ms at 100k entries), so
    there the ids are bounded first (one covering-index pass over the range) and every page
    walks the (wallet_id, id) index instead; the date terms stay, so the result is exact even
    where entry times are not in id order. PostgreSQL's planner, with statistics, chooses well
    on its own (measured) and would turn min/max into index walks, so it gets the plain terms.
    Returns None when nothing matches.
    """
    where = flt.conditions(wallet_id)
    if (flt.start is None and flt.end is None) or db.session.get_bind().dialect.name != "sqlite":
        return where, None, None
    low, high = db.session.execute(sa.select(sa.func.min(WalletEntry.id), sa.func.max(WalletEntry.id))
                                   .where(*where)).one()
    if high is None:
        return None
    return [*where, WalletEntry.id.between(low, high)], low, high


def _exists(where: list[sa.ColumnElement[bool]], bound: sa.ColumnElement[bool]) -> bool:
    return db.session.scalar(sa.select(WalletEntry.id).where(*where, bound).limit(1)) is not None


def owned_entry(user_id: int, entry_id: int) -> WalletEntry | None:
    """The customer's own ledger entry, or None (another customer's id looks missing)."""
    return db.session.scalar(
        sa.select(WalletEntry).join(Wallet, Wallet.id == WalletEntry.wallet_id)
        .where(WalletEntry.id == entry_id, Wallet.user_id == user_id)
    )


def owned_topup(user_id: int, payment_id: int) -> Payment | None:
    """The customer's own card top-up, or None (another customer's id looks missing)."""
    return db.session.scalar(
        sa.select(Payment).where(Payment.id == payment_id, Payment.user_id == user_id,
                                 Payment.purpose == PaymentPurpose.TOPUP, Payment.provider == "stripe")
    )


def topup_entry(payment: Payment) -> WalletEntry | None:
    """The ledger entry a settled top-up wrote (the TopUp purchase keys it `topup:<payment id>`)."""
    return db.session.scalar(sa.select(WalletEntry).where(WalletEntry.idempotency_key == f"topup:{payment.id}"))


def topup_given_back(payment: Payment) -> Refund | None:
    """The refund of a top-up that was paid but could not be credited (it arrived after being cancelled)."""
    return db.session.scalar(sa.select(Refund).where(Refund.payment_id == payment.id).order_by(Refund.id).limit(1))


def csv_chunks(wallet_id: int, flt: LedgerFilter, *, batch: int = CSV_BATCH) -> Iterator[str]:
    """The filtered ledger as CSV text, newest first, read and yielded `batch` rows at a time.

    Rows are plain tuples, not ORM objects, so memory stays flat however long the ledger is.
    """
    columns = (WalletEntry.id, WalletEntry.created_at, WalletEntry.kind, WalletEntry.reason, WalletEntry.amount,
               WalletEntry.currency, WalletEntry.balance_after, WalletEntry.reference)
    yield _csv_line(CSV_COLUMNS)
    bounded = _bounded_conditions(wallet_id, flt)
    if bounded is None:
        return
    where = bounded[0]
    exponents: dict[str, int] = {}  # looked up once per currency, not twice per row
    last: int | None = None
    while True:
        query = sa.select(*columns).where(*where)
        if last is not None:
            query = query.where(WalletEntry.id < last)
        rows = db.session.execute(query.order_by(WalletEntry.id.desc()).limit(batch)).all()
        if not rows:
            return
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        for row in rows:
            exponent = exponents.get(row.currency)
            if exponent is None:
                exponent = exponents[row.currency] = minor_exponent(row.currency)
            writer.writerow([
                row.created_at.isoformat(timespec="seconds"), row.kind.value, _cell(row.reason),
                _major(row.amount, exponent), row.currency, _major(row.balance_after, exponent),
                _cell(row.reference or ""),
            ])
        yield buffer.getvalue()
        if len(rows) < batch:
            return
        last = rows[-1].id


def _major(minor: int, exponent: int) -> str:
    """Minor units as an exact decimal string in major units (1234, 2 -> "12.34"), as from_minor gives."""
    return str(Decimal(minor).scaleb(-exponent)) if exponent else str(minor)


def _csv_line(values: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(values)
    return buffer.getvalue()


def _cell(text: str) -> str:
    # Spreadsheets run a cell starting with = + - @ as a formula; free text must not.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
