"""The staff errors & retries pages' read side: the keyset-paged list and one failure with what surrounds
it. Writes nothing.

The list is sorted by next retry (the soonest first, none last) then id. Its queries stay bounded whatever
the table holds: the timed part is read one status at a time, each a range of
ix_operation_errors_status_next_retry in index order (an IN over the statuses would sort every
unresolved row for each page), and the untimed part (manual and closed errors) by id; a page never
counts the table. The failed report (report.py) is the only grouped read of the page.
"""
from __future__ import annotations

import heapq
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import selectinload

from portal.clock import now
from portal.extensions import db
from portal.models import (
    ErrorStatus, Invoice, OperationError, Payment, RetryAttempt, RetryStrategy, Subscription, SubscriptionEvent,
    User,
)
from portal.services.retries import OPEN
from portal.services.retries.registry import HANDLERS

PAGE_SIZE = 50
#: Subscription events shown on a failure (the newest; the customer page has them all).
EVENTS_SHOWN = 50
#: Card payments of the invoice at stake shown on a failure (the newest).
PAYMENTS_SHOWN = 20
#: Other failures of the same subscription shown on a failure (the newest).
RELATED_SHOWN = 10

#: Operation types recorded without a retry handler: they always need a person.
MANUAL_ONLY_TYPES = ("dispute", "refund_shortfall")

#: The status filter's choices: "unresolved" (the default) is pending + retrying + manual.
STATUS_CHOICES = ("unresolved", *(s.value for s in ErrorStatus), "any")

_AGE = re.compile(r"^(\d{1,4})([mhdw])$")
_AGE_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_TYPE = re.compile(r"^[a-z0-9_.-]{1,40}$")


class BadFilter(ValueError):
    """A filter value the list cannot use (the page answers 400 with it)."""


def operation_types(extra: tuple[str, ...] = ()) -> list[str]:
    """The operation types a staff member can filter by: those with a handler, those that never have one."""
    return sorted({*HANDLERS, *MANUAL_ONLY_TYPES, *extra})


def parse_age(text: str | None) -> timedelta | None:
    """"90m", "1h", "1d", "2w" → a timedelta; None for none. Raises BadFilter."""
    if not text:
        return None
    match = _AGE.match(text.strip().lower())
    if not match or int(match.group(1)) == 0:
        raise BadFilter(f"Unknown age {text!r}: use a number and m, h, d or w, like 1h or 7d.")
    return timedelta(**{_AGE_UNITS[match.group(2)]: int(match.group(1))})


@dataclass(frozen=True)
class Filters:
    operation_type: str | None = None
    strategy: RetryStrategy | None = None
    #: "unresolved", "any", or one ErrorStatus value.
    status: str = "unresolved"
    #: Older than this (created before now - age).
    age: str | None = None
    #: The start of the customer's email.
    customer: str | None = None

    @classmethod
    def parse(cls, args) -> Filters:
        """From the query string; raises BadFilter for a value the list does not know."""
        operation_type = (args.get("type") or "").strip() or None
        if operation_type is not None and not _TYPE.match(operation_type):
            raise BadFilter("Unknown type.")
        strategy = (args.get("strategy") or "").strip() or None
        try:
            strategy = RetryStrategy(strategy) if strategy else None
        except ValueError:
            raise BadFilter("Unknown strategy.") from None
        status = (args.get("status") or "").strip() or "unresolved"
        if status not in STATUS_CHOICES:
            raise BadFilter("Unknown status.")
        age = (args.get("age") or "").strip() or None
        parse_age(age)
        customer = (args.get("customer") or "").strip()[:254] or None
        return cls(operation_type, strategy, status, age, customer)

    @property
    def statuses(self) -> tuple[ErrorStatus, ...]:
        if self.status == "unresolved":
            return OPEN
        if self.status == "any":
            return tuple(ErrorStatus)
        return (ErrorStatus(self.status),)

    def args(self) -> dict[str, str]:
        """The query string that gives these filters back (defaults left out)."""
        values = {"type": self.operation_type, "strategy": self.strategy.value if self.strategy else None,
                  "status": None if self.status == "unresolved" else self.status, "age": self.age,
                  "customer": self.customer}
        return {k: v for k, v in values.items() if v}


@dataclass(frozen=True)
class Cursor:
    """Where a page starts: after this row of the order (next_retry_at, id); at None, in the untimed part."""

    next_retry_at: datetime | None
    id: int

    @classmethod
    def parse(cls, after: str | None, after_at: str | None) -> Cursor | None:
        if not after:
            return None
        try:
            at = datetime.fromisoformat(after_at) if after_at else None
            if at is not None and at.tzinfo is None:
                raise ValueError
            return cls(at, int(after))
        except ValueError:
            raise BadFilter("Unknown page.") from None

    def args(self) -> dict[str, str]:
        values = {"after": str(self.id)}
        if self.next_retry_at is not None:
            values["after_at"] = self.next_retry_at.isoformat()
        return values


@dataclass(frozen=True)
class Row:
    """One failure in the list, with its customer's email (read in the same query)."""

    error: OperationError
    email: str | None


@dataclass(frozen=True)
class FailurePage:
    rows: list[Row]
    #: The cursor of the next page, or None on the last page.
    next: Cursor | None


def _filtered(query: sa.Select, filters: Filters) -> sa.Select:
    e = OperationError
    if filters.operation_type:
        query = query.where(e.operation_type == filters.operation_type)
    if filters.strategy is not None:
        query = query.where(e.strategy == filters.strategy)
    age = parse_age(filters.age)
    if age is not None:
        query = query.where(e.created_at < now() - age)
    if filters.customer:
        # The start of the email: a range of the unique index on users.email (emails are stored lower-cased),
        # so the filter costs the same with 1,000 customers or 1,000,000; then their failures by user_id.
        start = filters.customer.lower()
        query = query.where(e.user_id.in_(
            sa.select(User.id).where(User.email >= start, User.email < start + "\U0010ffff").scalar_subquery()))
    return query


def _rows_query() -> sa.Select:
    return sa.select(OperationError, User.email).outerjoin(User, User.id == OperationError.user_id)


def failures_page(filters: Filters, *, after: Cursor | None = None, size: int = PAGE_SIZE) -> FailurePage:
    """One page of failures matching `filters`, soonest next retry first, those without one last (by id)."""
    e = OperationError
    want = size + 1
    found: list[Row] = []
    if after is None or after.next_retry_at is not None:
        # The timed part: each status's range of the (status, next_retry_at) index, in its order, merged.
        streams = []
        for status in filters.statuses:
            query = _filtered(_rows_query(), filters).where(e.status == status, e.next_retry_at.is_not(None))
            if after is not None:
                query = query.where(e.next_retry_at >= after.next_retry_at,
                                    sa.or_(e.next_retry_at > after.next_retry_at, e.id > after.id))
            streams.append([Row(error, email) for error, email in
                            db.session.execute(query.order_by(e.next_retry_at, e.id).limit(want)).all()])
        found = list(heapq.merge(*streams, key=lambda row: (row.error.next_retry_at, row.error.id)))[:want]
    if len(found) < want:
        # The untimed part (waiting for a person, closed): by id.
        query = _filtered(_rows_query(), filters).where(e.status.in_(filters.statuses), e.next_retry_at.is_(None))
        if after is not None and after.next_retry_at is None:
            query = query.where(e.id > after.id)
        found += [Row(error, email) for error, email in
                  db.session.execute(query.order_by(e.id).limit(want - len(found))).all()]
    rows = found[:size]
    more = len(found) > size
    return FailurePage(rows, Cursor(rows[-1].error.next_retry_at, rows[-1].error.id) if more else None)


def rows_by_id(ids: list[int]) -> list[Row]:
    """These failures with their customers' emails, in the order given (the rows a bulk action touched)."""
    if not ids:
        return []
    found = {error.id: Row(error, email) for error, email in
             db.session.execute(_rows_query().where(OperationError.id.in_(ids))).all()}
    return [found[i] for i in ids if i in found]


@dataclass
class Detail:
    """One failure and what surrounds it, each part read once."""

    error: OperationError
    customer: User | None
    #: Every try after the original failure (attempt 2 on), oldest first.
    attempts: list[RetryAttempt]
    subscription: Subscription | None
    #: The subscription's state history, oldest first (the newest EVENTS_SHOWN).
    events: list[SubscriptionEvent]
    #: More events exist than shown.
    more_events: bool
    invoice: Invoice | None
    #: Card payments of that invoice, newest first.
    payments: list[Payment]
    #: Other failures of the same subscription, newest first.
    related: list[OperationError]
    #: Staff and customers named on the page (who tried, who resolved, who changed the subscription): id → email.
    people: dict[int, str] = field(default_factory=dict)


def _invoice_of(error: OperationError) -> Invoice | None:
    """The invoice at stake: named in the context by id or number, else the one the failing payment paid."""
    context = error.context or {}
    query = sa.select(Invoice).options(selectinload(Invoice.lines))
    invoice_id = context.get("invoice_id")
    if isinstance(invoice_id, int) and not isinstance(invoice_id, bool):
        return db.session.scalar(query.where(Invoice.id == invoice_id))
    if isinstance(context.get("invoice"), str):
        return db.session.scalar(query.where(Invoice.number == context["invoice"]))
    payment_id = context.get("payment_id")
    if isinstance(payment_id, int) and not isinstance(payment_id, bool):
        return db.session.scalar(query.join(Payment, Payment.invoice_id == Invoice.id).where(Payment.id == payment_id))
    return None


def failure_detail(error_id: int) -> Detail | None:
    """One failure with its attempts, customer, subscription history, invoice and payments; None if unknown."""
    error = db.session.get(OperationError, error_id, populate_existing=True)
    if error is None:
        return None
    attempts = list(db.session.scalars(sa.select(RetryAttempt).where(RetryAttempt.operation_error_id == error.id)
                                       .order_by(RetryAttempt.attempt_number)))
    customer = db.session.get(User, error.user_id) if error.user_id else None
    subscription = db.session.get(Subscription, error.subscription_id) if error.subscription_id else None
    events: list[SubscriptionEvent] = []
    related: list[OperationError] = []
    if subscription is not None:
        events = list(db.session.scalars(
            sa.select(SubscriptionEvent).where(SubscriptionEvent.subscription_id == subscription.id)
            .order_by(SubscriptionEvent.id.desc()).limit(EVENTS_SHOWN + 1)))
        related = list(db.session.scalars(
            sa.select(OperationError).where(OperationError.subscription_id == subscription.id,
                                            OperationError.id != error.id)
            .order_by(OperationError.id.desc()).limit(RELATED_SHOWN)))
    more_events = len(events) > EVENTS_SHOWN
    events = events[:EVENTS_SHOWN][::-1]
    invoice = _invoice_of(error)
    payments = list(db.session.scalars(
        sa.select(Payment).where(Payment.invoice_id == invoice.id).order_by(Payment.id.desc())
        .limit(PAYMENTS_SHOWN))) if invoice is not None else []
    ids = {a.actor_id for a in attempts} | {ev.actor_id for ev in events} | {error.resolved_by_id}
    ids.discard(None)
    people = dict(db.session.execute(sa.select(User.id, User.email).where(User.id.in_(ids))).all()) if ids else {}
    return Detail(error, customer, attempts, subscription, events, more_events, invoice, payments, related, people)
