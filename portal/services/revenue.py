"""Revenue figures for the staff page: MRR, subscriptions by plan, and a table by month of paid revenue,
recovered revenue, new and churned subscriptions and the failed card payment rate.

Reads only. Grouped SQL that runs on SQLite and PostgreSQL alike; months are calendar months in the
billing time zone (BILLING_TZ), and amounts stay per currency (never added across currencies).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fractions import Fraction
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.orm import aliased

from portal.billing.lifecycle import SubscriptionStatus
from portal.billing.money import from_minor, minor_exponent, round_half_up
from portal.billing.periods import IntervalUnit
from portal.clock import now
from portal.extensions import db
from portal.models import Invoice, InvoiceStatus, Payment, PaymentStatus, Plan, Subscription, SubscriptionEvent

#: The longest range the page answers for.
MAX_MONTHS = 60
#: The range shown when none is asked for: the last 12 months, this one included.
DEFAULT_MONTHS = 12

#: Subscriptions that count toward MRR: live and paying. Trials pay nothing yet.
MRR_STATUSES = (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE)
#: One interval unit's price as a share of a month's (a year is 12 months, a year has 52 weeks, 365 days).
PER_MONTH = {IntervalUnit.MONTH: Fraction(1), IntervalUnit.YEAR: Fraction(1, 12),
             IntervalUnit.WEEK: Fraction(52, 12), IntervalUnit.DAY: Fraction(365, 12)}
#: Invoices that are not revenue: a top-up is money paid in advance into the wallet (it becomes revenue
#: when the wallet pays an invoice).
NOT_REVENUE = ("topup",)
#: Card payments that have an outcome; pending ones (and those waiting for 3-D Secure) are left out.
ANSWERED = (PaymentStatus.SUCCEEDED, PaymentStatus.REFUNDED, PaymentStatus.FAILED)

_MONTH_RE = re.compile(r"(\d{4})-(\d{2})")
_S = SubscriptionStatus


class RangeError(ValueError):
    """The months asked for cannot be shown; the message says why."""


# --- months --------------------------------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class Month:
    year: int
    month: int

    @classmethod
    def parse(cls, text: str, what: str) -> Month:
        match = _MONTH_RE.fullmatch(text.strip())
        if match is None or not 1 <= int(match[2]) <= 12 or not 1970 <= int(match[1]) <= 9998:
            raise RangeError(f"“{text}” is not a month for {what!r}: write it as YYYY-MM, e.g. 2026-01.")
        return cls(int(match[1]), int(match[2]))

    @classmethod
    def of(cls, instant: datetime, tz: ZoneInfo) -> Month:
        local = instant.astimezone(tz)
        return cls(local.year, local.month)

    def plus(self, months: int) -> Month:
        index = self.year * 12 + self.month - 1 + months
        return Month(index // 12, index % 12 + 1)

    def minus(self, other: Month) -> int:
        """Months from `other` to this one."""
        return (self.year - other.year) * 12 + self.month - other.month

    def start(self, tz: ZoneInfo) -> datetime:
        """The month's first instant in `tz`, as UTC."""
        return datetime(self.year, self.month, 1, tzinfo=tz).astimezone(timezone.utc)

    @property
    def key(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def label(self) -> str:
        return datetime(self.year, self.month, 1).strftime("%b %Y")

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True)
class MonthRange:
    """Whole calendar months in the billing time zone, `first` to `last` inclusive."""

    first: Month
    last: Month
    tz: ZoneInfo

    @property
    def months(self) -> list[Month]:
        return [self.first.plus(i) for i in range(self.last.minus(self.first) + 1)]

    @property
    def start(self) -> datetime:
        return self.first.start(self.tz)

    @property
    def end(self) -> datetime:
        """The instant after the range (the start of the month after `last`)."""
        return self.last.plus(1).start(self.tz)

    def bounds(self) -> list[tuple[str, datetime, datetime]]:
        """Each month's key with its UTC start and end."""
        return [(m.key, m.start(self.tz), m.plus(1).start(self.tz)) for m in self.months]


def billing_tz() -> ZoneInfo:
    return ZoneInfo(current_app.config.get("BILLING_TZ") or "UTC")


def month_range(from_text: str | None, to_text: str | None, *, at: datetime | None = None) -> MonthRange:
    """The months of `from`..`to` (YYYY-MM); a missing `to` is this month by the billing clock, a missing
    `from` the 12 months up to `to`. Raises RangeError for a range that cannot be shown."""
    tz = billing_tz()
    last = Month.parse(to_text, "to") if to_text else Month.of(at or now(), tz)
    first = Month.parse(from_text, "from") if from_text else last.plus(1 - DEFAULT_MONTHS)
    if first > last:
        raise RangeError(f"The range starts ({first.label}) after it ends ({last.label}): swap the months.")
    if last.minus(first) + 1 > MAX_MONTHS:
        raise RangeError(f"{first.label} to {last.label} is {last.minus(first) + 1} months; "
                         f"choose at most {MAX_MONTHS}.")
    return MonthRange(first, last, tz)


def month_of(column: sa.ColumnElement, months: MonthRange) -> sa.ColumnElement:
    """The month ("YYYY-MM") of a UTC timestamp column in the billing time zone, in SQL.

    PostgreSQL converts with its own time-zone database. SQLite has none, so the month is picked by
    comparing with each month's UTC bounds, computed here with zoneinfo (right across DST changes);
    rows before the range fall in its first month there, so callers filter by the range too.
    """
    if db.engine.dialect.name == "postgresql":
        return sa.func.to_char(sa.func.timezone(sa.cast(months.tz.key, sa.Text), column), "YYYY-MM")
    return sa.case(*((column < end, key) for key, _, end in months.bounds()), else_=sa.null())


# --- MRR and subscriptions by plan ---------------------------------------------------------------------

def monthly_price(plan: Plan) -> Fraction:
    """The plan's price over one month, exact: yearly / 12, weekly × 52 / 12, daily × 365 / 12, per count."""
    return Fraction(plan.price_amount) * PER_MONTH[IntervalUnit(plan.interval_unit)] / plan.interval_count


@dataclass(frozen=True)
class PlanLine:
    """One plan's live subscriptions and what the paying ones bring a month."""

    plan: Plan
    active: int
    past_due: int
    trialing: int
    #: Minor units of the plan's currency: (active + past due) × the monthly price, rounded half-up once.
    mrr: int

    @property
    def paying(self) -> int:
        return self.active + self.past_due

    @property
    def live(self) -> int:
        return self.active + self.past_due + self.trialing

    @property
    def per_month(self) -> int:
        """One subscription's monthly price, rounded to the minor unit (for display)."""
        return round_half_up(monthly_price(self.plan))


@dataclass(frozen=True)
class MRR:
    at: datetime
    #: Currency → minor units, each the exact sum rounded once.
    by_currency: dict[str, int]
    #: Currency → paying subscriptions (active and past due).
    paying: dict[str, int]
    plans: list[PlanLine]


def mrr(at: datetime | None = None) -> MRR:
    """MRR now: every active or past-due subscription's plan price over a month, per currency."""
    counts: dict[int, dict[SubscriptionStatus, int]] = {}
    rows = db.session.execute(
        sa.select(Subscription.plan_id, Subscription.status, sa.func.count())
        .where(Subscription.status.in_([_S.ACTIVE, _S.PAST_DUE, _S.TRIALING]))
        .group_by(Subscription.plan_id, Subscription.status)
    ).all()
    for plan_id, status, count in rows:
        counts.setdefault(plan_id, {})[SubscriptionStatus(status)] = count
    plans = db.session.scalars(sa.select(Plan).where(Plan.id.in_(list(counts)))).all() if counts else []
    lines: list[PlanLine] = []
    exact: dict[str, Fraction] = {}
    paying: dict[str, int] = {}
    for plan in plans:
        c = counts[plan.id]
        active, past_due, trialing = c.get(_S.ACTIVE, 0), c.get(_S.PAST_DUE, 0), c.get(_S.TRIALING, 0)
        amount = monthly_price(plan) * (active + past_due)
        if plan.price_amount > 0:
            exact[plan.currency] = exact.get(plan.currency, Fraction(0)) + amount
            paying[plan.currency] = paying.get(plan.currency, 0) + active + past_due
        lines.append(PlanLine(plan, active, past_due, trialing, round_half_up(amount)))
    lines.sort(key=lambda line: (line.plan.currency, -line.mrr, line.plan.sort_order, line.plan.id))
    return MRR(at or now(), {cur: round_half_up(v) for cur, v in sorted(exact.items())}, paying, lines)


# --- the monthly table ---------------------------------------------------------------------------------

@dataclass
class MonthRow:
    month: Month
    #: Currency → minor units paid on invoices in the month (top-ups excluded).
    revenue: dict[str, int] = field(default_factory=dict)
    #: Currency → minor units of it on renewal invoices paid after their payment had failed.
    recovered: dict[str, int] = field(default_factory=dict)
    invoices: int = 0
    new: int = 0
    churned: int = 0
    card_payments: int = 0
    failed_payments: int = 0

    @property
    def net(self) -> int:
        return self.new - self.churned

    @property
    def failure_rate(self) -> Fraction | None:
        """Failed card payments / card payments with an answer; None when there were none."""
        return Fraction(self.failed_payments, self.card_payments) if self.card_payments else None


@dataclass(frozen=True)
class Report:
    range: MonthRange
    currencies: list[str]
    rows: list[MonthRow]
    total: MonthRow
    mrr: MRR


def report(months: MonthRange) -> Report:
    """Every figure of the revenue page for `months`."""
    rows = {m.key: MonthRow(m) for m in months.months}
    currencies: set[str] = set()
    for key, currency, paid, recovered, count in _revenue(months):
        row = rows[key]
        row.revenue[currency] = int(paid)
        row.recovered[currency] = int(recovered)
        row.invoices += count
        currencies.add(currency)
    for key, kind, count in _movements(months):
        setattr(rows[key], kind, count)
    for key, attempts, failed in _card_payments(months):
        rows[key].card_payments, rows[key].failed_payments = attempts, int(failed)
    current = mrr()
    currencies.update(current.by_currency)
    currencies.add(current_app.config["DEFAULT_CURRENCY"])  # a column even before the first sale
    ordered = sorted(currencies)
    listed = list(rows.values())
    for row in listed:
        for currency in ordered:
            row.revenue.setdefault(currency, 0)
            row.recovered.setdefault(currency, 0)
    total = MonthRow(months.first)
    for row in listed:
        for currency in ordered:
            total.revenue[currency] = total.revenue.get(currency, 0) + row.revenue[currency]
            total.recovered[currency] = total.recovered.get(currency, 0) + row.recovered[currency]
        total.invoices += row.invoices
        total.new += row.new
        total.churned += row.churned
        total.card_payments += row.card_payments
        total.failed_payments += row.failed_payments
    return Report(months, ordered, listed, total, current)


def _revenue(months: MonthRange) -> list[tuple[str, str, int, int, int]]:
    """(month, currency, amount paid, of it recovered, invoices) for paid invoices by month of payment."""
    recovered = sa.exists().where(
        SubscriptionEvent.subscription_id == Invoice.subscription_id,
        SubscriptionEvent.transition == "recover",
        SubscriptionEvent.data["invoice"].as_string() == Invoice.number,
    )
    paid = (
        sa.select(month_of(Invoice.paid_at, months).label("month"), Invoice.currency.label("currency"),
                  Invoice.amount_paid.label("amount"),
                  sa.case((sa.and_(Invoice.reason == "renewal", recovered), Invoice.amount_paid),
                          else_=0).label("recovered"))
        .where(Invoice.status == InvoiceStatus.PAID, Invoice.reason.not_in(NOT_REVENUE),
               Invoice.paid_at >= months.start, Invoice.paid_at < months.end)
        .subquery()
    )
    return db.session.execute(
        sa.select(paid.c.month, paid.c.currency, sa.func.sum(paid.c.amount), sa.func.sum(paid.c.recovered),
                  sa.func.count())
        .group_by(paid.c.month, paid.c.currency)
    ).all()


def _movements(months: MonthRange) -> list[tuple[str, str, int]]:
    """(month, "new" or "churned", count) from the subscription events of the range.

    New: a subscription starts paying for a paid plan — created active on it, a trial's first
    period paid (its activate names an invoice), an upgrade onto it from a free plan or from a
    trial, or a trial whose first payment failed recovered. Churned: a paying subscription ends —
    cancelled or expired on a paid plan (not a trial, nor a trial whose first payment never came),
    or renewed onto a free plan (a scheduled downgrade to Free).
    """
    event, sub = SubscriptionEvent, Subscription
    to_plan, from_plan, named_plan, last_plan = aliased(Plan), aliased(Plan), aliased(Plan), aliased(Plan)
    earlier = aliased(SubscriptionEvent)
    plan_id = event.data["plan_id"].as_integer()
    from_plan_id = event.data["from_plan_id"].as_integer()
    # How the past-due stretch an event ends began: the status before its first failed payment.
    stretch_began = (
        sa.select(earlier.from_status)
        .where(earlier.subscription_id == event.subscription_id, earlier.id < event.id,
               earlier.transition == "payment_failed", earlier.from_status != _S.PAST_DUE)
        .order_by(earlier.id.desc()).limit(1)
        .correlate(event).scalar_subquery()
    )
    after_trial = stretch_began == _S.TRIALING
    kind = sa.case(
        (sa.and_(event.transition == "activate", event.from_status.is_(None), named_plan.price_amount > 0), "new"),
        (sa.and_(event.transition == "activate", event.from_status == _S.TRIALING,
                 event.data["invoice"].as_string().is_not(None)), "new"),
        (sa.and_(event.transition == "change_plan", to_plan.price_amount > 0,
                 sa.or_(event.from_status == _S.TRIALING, from_plan.price_amount == 0)), "new"),
        (sa.and_(event.transition == "recover", after_trial), "new"),
        (sa.and_(event.transition.in_(["cancel", "expire"]), last_plan.price_amount > 0,
                 event.from_status != _S.TRIALING,
                 sa.or_(event.from_status != _S.PAST_DUE, stretch_began.is_(None), stretch_began != _S.TRIALING)),
         "churned"),
        (sa.and_(event.transition == "renew", from_plan.price_amount > 0, to_plan.price_amount == 0), "churned"),
        else_=sa.null(),
    )
    moves = (
        sa.select(month_of(event.at, months).label("month"), kind.label("kind"))
        .join(sub, sub.id == event.subscription_id)
        .join(last_plan, last_plan.id == sub.plan_id)
        .outerjoin(to_plan, to_plan.id == plan_id)
        .outerjoin(from_plan, from_plan.id == from_plan_id)
        .outerjoin(named_plan, named_plan.code == event.data["plan"].as_string())
        .where(event.at >= months.start, event.at < months.end,
               event.transition.in_(["activate", "change_plan", "recover", "cancel", "expire", "renew"]),
               # most renewals keep their plan: only those that changed it can be a churn
               sa.or_(event.transition != "renew", from_plan_id.is_not(None)))
        .subquery()
    )
    return db.session.execute(
        sa.select(moves.c.month, moves.c.kind, sa.func.count())
        .where(moves.c.kind.is_not(None))
        .group_by(moves.c.month, moves.c.kind)
    ).all()


def _card_payments(months: MonthRange) -> list[tuple[str, int, int]]:
    """(month, card payments with an answer, of them failed) by month of the attempt."""
    attempts = (
        sa.select(month_of(Payment.created_at, months).label("month"),
                  sa.case((Payment.status == PaymentStatus.FAILED, 1), else_=0).label("failed"))
        .where(Payment.provider == "stripe", Payment.status.in_(ANSWERED),
               Payment.created_at >= months.start, Payment.created_at < months.end)
        .subquery()
    )
    return db.session.execute(
        sa.select(attempts.c.month, sa.func.count(), sa.func.sum(attempts.c.failed)).group_by(attempts.c.month)
    ).all()


# --- CSV and charts ------------------------------------------------------------------------------------

def csv_rows(result: Report) -> list[list[str]]:
    """The monthly table with a header row; amounts in major units of their currency (12.34)."""
    header = ["month"]
    for currency in result.currencies:
        header += [f"revenue_{currency}", f"recovered_{currency}"]
    header += ["paid_invoices", "new", "churned", "net", "card_payments", "failed_payments", "failed_rate_percent"]
    out = [header]
    for row in result.rows:
        line = [row.month.key]
        for currency in result.currencies:
            line += [str(from_minor(row.revenue[currency], currency)),
                     str(from_minor(row.recovered[currency], currency))]
        rate = row.failure_rate
        line += [str(row.invoices), str(row.new), str(row.churned), str(row.net), str(row.card_payments),
                 str(row.failed_payments), "" if rate is None else percent(rate)]
        out.append(line)
    return out


def percent(rate: Fraction) -> str:
    """A rate as a percentage with one decimal, rounded half-up: 1/3 → "33.3"."""
    tenths = round_half_up(rate * 1000)
    return f"{tenths // 10}.{tenths % 10}"


def charts(result: Report) -> dict[str, dict]:
    """What staff-charts.js draws, by chart id: labels, datasets (minor units for money) and a format."""
    labels = [row.month.label for row in result.rows]
    out: dict[str, dict] = {}
    for currency in result.currencies:
        out[f"revenue-{currency}"] = {
            "type": "bar", "stacked": True, "format": "money", "currency": currency,
            "exponent": minor_exponent(currency), "labels": labels,
            "datasets": [
                {"label": "Recovered after a failed payment", "role": "good",
                 "values": [row.recovered[currency] for row in result.rows]},
                {"label": "Other paid revenue", "role": "primary",
                 "values": [row.revenue[currency] - row.recovered[currency] for row in result.rows]},
            ],
        }
    out["movement"] = {
        "type": "bar", "stacked": False, "format": "count", "labels": labels,
        "datasets": [{"label": "New", "role": "good", "values": [row.new for row in result.rows]},
                     {"label": "Churned", "role": "bad", "values": [row.churned for row in result.rows]}],
    }
    out["failures"] = {
        "type": "line", "stacked": False, "format": "percent", "labels": labels,
        "datasets": [{"label": "Failed card payments (%)", "role": "bad",
                      "values": [None if row.failure_rate is None else float(percent(row.failure_rate))
                                 for row in result.rows]}],
    }
    paid_lines = [line for line in result.mrr.plans if line.live]
    out["plans"] = {
        "type": "bar", "stacked": True, "horizontal": True, "format": "count",
        "labels": [f"{line.plan.name} ({line.plan.currency})" for line in paid_lines],
        "datasets": [{"label": "Active", "role": "primary", "values": [line.active for line in paid_lines]},
                     {"label": "Past due", "role": "warn", "values": [line.past_due for line in paid_lines]},
                     {"label": "Trialing", "role": "muted", "values": [line.trialing for line in paid_lines]}],
    }
    return out
