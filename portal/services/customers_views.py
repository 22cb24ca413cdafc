"""The staff customers pages' read side: the search and one customer's whole account. Writes nothing.

Every query is bounded by an index, so the pages cost the same with 1,000 customers as with 10,000:

- The list (no search) walks the users primary key backwards, `before=<id>` for the next page.
- A search matches the start of the email (the unique index on users.email, as a range) or the
  start of the name (a range on lower(name): an index on that expression makes it a range walk
  too; until there is one, names are read in full, so a search with an @ or a digit, which no name
  has, looks at emails only), ordered by email with `after=<email>` as the cursor. Never OFFSET,
  never COUNT.
- The rows carry their plan, status and wallet balance from one joined query (no N+1).
- Each section of a customer's page is one keyset page (newest first) from the customer's own
  index: subscription events, ledger, invoices, payments (and their refunds, in one more query),
  emails, errors, the account's audit trail.

The audit log page's read side is here too (`audit_page`): keyset pages of audit rows by id, filtered
by actor, action prefix, target and days.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import aliased

from portal.billing.lifecycle import LIVE_STATUSES, SubscriptionStatus
from portal.extensions import db
from portal.models import (
    AuditLog,
    EmailLog,
    Invoice,
    OperationError,
    Payment,
    PaymentStatus,
    Plan,
    Refund,
    RefundStatus,
    Role,
    Subscription,
    SubscriptionEvent,
    User,
    Wallet,
)
from portal.services.invoices.views import invoice_page
from portal.services.statements import newest_first
from portal.services.wallet.ledger import LedgerFilter, find_wallet, ledger_page

#: Customers per page of the list or a search.
PAGE_SIZE = 25
#: Rows per page of each section of a customer's page.
SECTION_SIZE = 10
#: The sections of a customer's page that page on their own (`<name>_before=<id>`).
PAGED_SECTIONS = ("events", "ledger", "invoices", "payments", "emails", "errors", "actions")
#: The longest search text looked at (an email is at most 254 characters).
MAX_QUERY = 254


# --- the search ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CustomerRow:
    id: int
    email: str
    name: str
    created_at: datetime
    is_active: bool
    plan_name: str | None
    status: SubscriptionStatus | None
    grace_until: datetime | None
    balance: int | None
    currency: str


@dataclass(frozen=True)
class CustomerPage:
    rows: list[CustomerRow]
    #: The search text as it was matched (trimmed, lower-cased); "" for the plain list.
    query: str
    #: The list: `before` for the next (older) page. A search: `after` (an email) for the next page.
    next_before: int | None = None
    next_after: str | None = None


def normalize_query(text: str | None) -> str:
    """The search text as it is matched: trimmed, lower-cased, at most MAX_QUERY characters."""
    return (text or "").strip().lower()[:MAX_QUERY]


def _prefix_range(column: sa.ColumnElement, prefix: str) -> sa.ColumnElement[bool]:
    """`column` starts with `prefix`, as a range an index can walk (>= prefix and < its successor),
    rechecked with LIKE (escaped) so that no collation lets a near miss through."""
    successor = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return sa.and_(column >= prefix, column < successor, column.startswith(prefix, autoescape=True))


def looks_like_email(query: str) -> bool:
    """A search with an @ or a digit is taken for an email (names have neither), so names are not searched."""
    return "@" in query or any(ch.isdigit() for ch in query)


def search(text: str | None = None, *, before: int | None = None, after: str | None = None,
           size: int = PAGE_SIZE) -> CustomerPage:
    """Customers whose email or name starts with `text`, by email; without text, the newest first."""
    query = normalize_query(text)
    live = aliased(Subscription)
    columns = (User.id, User.email, User.name, User.created_at, User.is_active_account, User.currency,
               Plan.name.label("plan_name"), live.status, live.grace_until, Wallet.balance)
    stmt = (
        sa.select(*columns)
        .outerjoin(live, sa.and_(live.user_id == User.id,
                                 live.status.in_(sorted(LIVE_STATUSES, key=lambda s: s.value))))
        .outerjoin(Plan, Plan.id == live.plan_id)
        .outerjoin(Wallet, Wallet.user_id == User.id)
        .where(User.role == Role.CUSTOMER)
    )
    if not query:
        if before is not None:
            stmt = stmt.where(User.id < before)
        rows = db.session.execute(stmt.order_by(User.id.desc()).limit(size + 1)).all()
        page = [_row(r) for r in rows[:size]]
        return CustomerPage(page, query, next_before=page[-1].id if len(rows) > size else None)
    # One page of matches from each index (email; lower(name)), merged: an OR would make the planner walk
    # the whole email index in order instead.
    walks = [_prefix_range(User.email, query)]
    if not looks_like_email(query):
        walks.append(_prefix_range(sa.func.lower(User.name), query))
    matches = []
    for condition in walks:
        walk = sa.select(User.id).where(User.role == Role.CUSTOMER, condition)
        if after is not None:
            walk = walk.where(User.email > after)
        matches.append(sa.select(walk.order_by(User.email).limit(size + 1).subquery().c.id))
    ids = matches[0] if len(matches) == 1 else sa.union(*matches)
    rows = db.session.execute(stmt.where(User.id.in_(ids)).order_by(User.email).limit(size + 1)).all()
    page = [_row(r) for r in rows[:size]]
    return CustomerPage(page, query, next_after=page[-1].email if len(rows) > size else None)


def _row(r: Any) -> CustomerRow:
    return CustomerRow(r.id, r.email, r.name, r.created_at, r.is_active_account, r.plan_name, r.status,
                       r.grace_until, r.balance, r.currency)


# --- one customer ------------------------------------------------------------------------------------------

def customer(user_id: int) -> User | None:
    """The customer with this id; None for staff accounts and unknown ids."""
    return db.session.scalar(sa.select(User).where(User.id == user_id, User.role == Role.CUSTOMER))


def current_subscription(user_id: int) -> Subscription | None:
    """The live subscription, else the latest one (a customer always has one after sign-up)."""
    live = db.session.scalar(sa.select(Subscription).where(Subscription.user_id == user_id,
                                                           Subscription.status.in_(LIVE_STATUSES)))
    if live is not None:
        return live
    return db.session.scalar(sa.select(Subscription).where(Subscription.user_id == user_id)
                             .order_by(Subscription.created_at.desc(), Subscription.id.desc()).limit(1))


@dataclass(frozen=True)
class Paged:
    """One keyset page of a section: its rows and `before` for the next older page (None on the last)."""

    rows: list[Any]
    next_before: int | None
    #: Whether this is a later page (a link back to the newest is shown).
    paged: bool = False


@dataclass(frozen=True)
class EventRow:
    event: SubscriptionEvent
    #: Who caused it (None: the system).
    actor_email: str | None


def events_page(user_id: int, before: int | None = None, size: int = SECTION_SIZE) -> Paged:
    """Status and plan changes of every subscription the customer had, newest first, with who did them."""
    subs = sa.select(Subscription.id).where(Subscription.user_id == user_id).scalar_subquery()
    query = (sa.select(SubscriptionEvent, User.email).outerjoin(User, User.id == SubscriptionEvent.actor_id)
             .where(SubscriptionEvent.subscription_id.in_(subs)))
    if before is not None:
        query = query.where(SubscriptionEvent.id < before)
    rows = db.session.execute(query.order_by(SubscriptionEvent.id.desc()).limit(size + 1)).all()
    page = [EventRow(event, email) for event, email in rows[:size]]
    return Paged(page, page[-1].event.id if len(rows) > size else None, paged=before is not None)


def ledger(user_id: int, before: int | None = None, size: int = SECTION_SIZE) -> tuple[Wallet | None, Paged]:
    """The wallet and one page of its ledger, newest first."""
    account = find_wallet(user_id)
    if account is None:
        return None, Paged([], None)
    page = ledger_page(account.id, LedgerFilter(), before=before, size=size)
    return account, Paged(page.entries, page.older_than, paged=before is not None)


def invoices_page(user_id: int, before: int | None = None, size: int = SECTION_SIZE) -> Paged:
    page = invoice_page(user_id, before=before, size=size)
    return Paged(page.invoices, page.next_before, paged=before is not None)


@dataclass(frozen=True)
class PaymentRow:
    """A payment with what has been given back and what may still be."""

    payment: Payment
    refunds: list[Refund]
    #: Card refunds asked for that Stripe has not confirmed yet (not in amount_refunded yet).
    pending: int
    #: What a staff refund may still give back: amount − refunded − pending.
    refundable: int
    #: Where a refund may go: "card" (a card payment), "wallet" (not for top-ups: that money is in the wallet).
    destinations: tuple[str, ...]
    invoice_number: str | None = None


REFUNDABLE_STATUSES = (PaymentStatus.SUCCEEDED, PaymentStatus.REFUNDED)


def refund_destinations(payment: Payment) -> tuple[str, ...]:
    """Where a staff refund of this payment may go."""
    if payment.status not in REFUNDABLE_STATUSES:
        return ()
    if payment.provider == "wallet":
        return ("wallet",)
    if payment.purpose.value == "topup":
        return ("card",)  # the top-up is in the wallet already; it goes back to the card it came from
    return ("card", "wallet")


def pending_refunds(payment_id: int) -> int:
    """Card refunds of the payment still waiting for Stripe, in minor units."""
    return int(db.session.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(Refund.amount), 0))
        .where(Refund.payment_id == payment_id, Refund.status == RefundStatus.PENDING)
    ))


def payments_page(user_id: int, before: int | None = None, size: int = SECTION_SIZE) -> Paged:
    """The customer's payments (card and wallet), newest first, each with its refunds (one query for all)."""
    payments, next_before = newest_first(sa.select(Payment).where(Payment.user_id == user_id), Payment.id,
                                         before=before, size=size)
    ids = [p.id for p in payments]
    by_payment: dict[int, list[Refund]] = {pid: [] for pid in ids}
    if ids:
        for refund in db.session.scalars(sa.select(Refund).where(Refund.payment_id.in_(ids)).order_by(Refund.id)):
            by_payment[refund.payment_id].append(refund)
    invoice_ids = {p.invoice_id for p in payments if p.invoice_id is not None}
    numbers = dict(db.session.execute(sa.select(Invoice.id, Invoice.number).where(Invoice.id.in_(invoice_ids))
                                      ).all()) if invoice_ids else {}
    rows = []
    for p in payments:
        refunds = by_payment[p.id]
        pending = sum(r.amount for r in refunds if r.status is RefundStatus.PENDING)
        destinations = refund_destinations(p)
        refundable = max(p.amount - p.amount_refunded - pending, 0) if destinations else 0
        rows.append(PaymentRow(p, refunds, pending, refundable, destinations, numbers.get(p.invoice_id)))
    return Paged(rows, next_before, paged=before is not None)


def emails_page(user_id: int, before: int | None = None, size: int = SECTION_SIZE) -> Paged:
    query = sa.select(EmailLog).where(EmailLog.user_id == user_id)
    return Paged(*newest_first(query, EmailLog.id, before=before, size=size), paged=before is not None)


def errors_page(user_id: int, before: int | None = None, size: int = SECTION_SIZE) -> Paged:
    """Failed operations of the customer (open and closed), newest first.

    Two index walks merged, since operation_errors has no index on user_id: the errors of the customer's
    subscriptions (ix_operation_errors_subscription), and the customer's errors tied to no subscription
    (refunds, disputes: the NULL end of the same index).
    """
    subs = sa.select(Subscription.id).where(Subscription.user_id == user_id).scalar_subquery()
    found: dict[int, OperationError] = {}
    for where in (OperationError.subscription_id.in_(subs),
                  sa.and_(OperationError.subscription_id.is_(None), OperationError.user_id == user_id)):
        query = sa.select(OperationError).where(where)
        if before is not None:
            query = query.where(OperationError.id < before)
        for error in db.session.scalars(query.order_by(OperationError.id.desc()).limit(size + 1)):
            found[error.id] = error
    rows = sorted(found.values(), key=lambda e: e.id, reverse=True)
    page = rows[:size]
    return Paged(page, page[-1].id if len(rows) > size else None, paged=before is not None)


@dataclass(frozen=True)
class ActionRow:
    entry: AuditLog
    actor_email: str | None


def actions_page(user_id: int, before: int | None = None, size: int = SECTION_SIZE) -> Paged:
    """Staff actions on this customer (audit rows whose target is the customer), newest first."""
    query = (sa.select(AuditLog, User.email).outerjoin(User, User.id == AuditLog.actor_id)
             .where(AuditLog.target_type == User.__tablename__, AuditLog.target_id == str(user_id)))
    if before is not None:
        query = query.where(AuditLog.id < before)
    rows = db.session.execute(query.order_by(AuditLog.id.desc()).limit(size + 1)).all()
    page = [ActionRow(entry, email) for entry, email in rows[:size]]
    return Paged(page, page[-1].entry.id if len(rows) > size else None, paged=before is not None)


# --- what the page's forms offer ------------------------------------------------------------------------

def plans_by_id() -> dict[int, Plan]:
    """Every plan by id (a small table), to name the plans in subscription events."""
    return {plan.id: plan for plan in db.session.scalars(sa.select(Plan))}


def changeable_plans(subscription: Subscription | None) -> list[Plan]:
    """Plans staff may move the customer to: not archived, not the default (Free: that is a cancel), same
    currency; hidden plans included (support may put a customer on one)."""
    query = sa.select(Plan).where(Plan.is_archived.is_(False), Plan.is_default.is_(False))
    if subscription is not None:
        query = query.where(Plan.currency == subscription.plan.currency)
    return list(db.session.scalars(query.order_by(Plan.sort_order, Plan.price_amount, Plan.id)))


# --- the audit log ------------------------------------------------------------------------------------------

#: Audit rows per page.
AUDIT_PAGE_SIZE = 50


@dataclass(frozen=True)
class AuditFilter:
    """Which audit rows to show. `actor_id` None with `system` True: rows without an actor (jobs, anonymous)."""

    actor_id: int | None = None
    system: bool = False
    #: The start of the dotted action ("support." for every support action).
    action: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    #: UTC calendar days, both included.
    start: date | None = None
    end: date | None = None

    def conditions(self) -> list[sa.ColumnElement[bool]]:
        where: list[sa.ColumnElement[bool]] = []
        if self.system:
            where.append(AuditLog.actor_id.is_(None))
        elif self.actor_id is not None:
            where.append(AuditLog.actor_id == self.actor_id)
        if self.action:
            where.append(AuditLog.action.startswith(self.action, autoescape=True))
        if self.target_type:
            where.append(AuditLog.target_type == self.target_type)
        if self.target_id:
            where.append(AuditLog.target_id == self.target_id)
        where += self.date_conditions()
        return where

    def date_conditions(self) -> list[sa.ColumnElement[bool]]:
        where = []
        if self.start is not None:
            where.append(AuditLog.at >= _midnight(self.start))
        if self.end is not None:
            where.append(AuditLog.at < _midnight(self.end + timedelta(days=1)))
        return where


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=timezone.utc)


@dataclass(frozen=True)
class AuditRow:
    entry: AuditLog
    actor_email: str | None
    #: The customer's id when the target is a customer (a link to their page).
    customer_id: int | None


def find_user_id(email: str) -> int | None:
    """The id of the user with this email (any role), or None."""
    return db.session.scalar(sa.select(User.id).where(User.email == email.strip().lower()))


def audit_page(flt: AuditFilter, *, before: int | None = None, size: int = AUDIT_PAGE_SIZE) -> Paged:
    """One page of audit rows matching `flt`, newest first (by id: the order they were written)."""
    where = flt.conditions()
    if (flt.start is not None or flt.end is not None) and db.session.get_bind().dialect.name == "sqlite":
        # SQLite would take the time index and sort the whole range for one page; bound the ids first (one
        # pass over that covering index), then walk the primary key. PostgreSQL plans this well on its own.
        low, high = db.session.execute(sa.select(sa.func.min(AuditLog.id), sa.func.max(AuditLog.id))
                                       .where(*flt.date_conditions())).one()
        if high is None:
            return Paged([], None, paged=before is not None)
        where.append(AuditLog.id.between(low, high))
    actor = aliased(User)
    query = (sa.select(AuditLog, actor.email).outerjoin(actor, actor.id == AuditLog.actor_id).where(*where))
    if before is not None:
        query = query.where(AuditLog.id < before)
    rows = db.session.execute(query.order_by(AuditLog.id.desc()).limit(size + 1)).all()
    customer_ids = {int(entry.target_id) for entry, _ in rows[:size]
                    if entry.target_type == User.__tablename__ and (entry.target_id or "").isdigit()}
    customers = set(db.session.scalars(sa.select(User.id).where(User.id.in_(customer_ids),
                                                                User.role == Role.CUSTOMER))) if customer_ids else set()
    page = [AuditRow(entry, email, int(entry.target_id) if entry.target_type == User.__tablename__
                     and (entry.target_id or "").isdigit() and int(entry.target_id) in customers else None)
            for entry, email in rows[:size]]
    return Paged(page, page[-1].entry.id if len(rows) > size else None, paged=before is not None)
