"""Renewals: a due subscription's period closes and the next one opens, paid through the one purchase
path (DESIGN §3.3–3.5, §4 Lifecycle).

    renew ─ due (active or trialing, period over)? ─ its renewal invoice exists already (a crash, an
    │       unknown answer)? → ask Stripe, or pay it again, under the same key
    ├ cancelled at period end → canceled, the closing period's use invoiced, the Free plan restored
    ├ nothing to bill (the Free plan) → the next period, no invoice
    └ invoice (billing.invoicing.renewal_lines: the next period's fee at the plan's price now, the
      closing period's use) ─ purchases.buy (wallet first, then the default card off session, key
      renewal:{subscription}:{period_start}) ─ paid: Renewal.apply (next period from the anchor,
      receipt) │ refused: Renewal.unpaid (past due in the next period, grace, email, OperationError)
      │ no answer: wait; the next run or the reconciler asks Stripe
    expire ─ past due and the grace period over → invoice uncollectible (the wallet part returned),
             expired, the Free plan restored, "expired" and "features restricted" emails

A renewal is keyed by the period it opens, so running it again (a second sweep, a retried job, two
workers) finds the first invoice and never bills the period twice. A batch job makes its common
renewals (the wallet pays, or nothing is due) together first, in shared statements (`batch_renewals`,
`purchases.bulk`): the same rows, keys and emails as `renew`, which makes the rest one by one. Locks: an existing invoice is
locked before the subscription, as the purchase path's settle does.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

import sqlalchemy as sa
from flask import current_app

from portal.billing.clock import as_utc
from portal.billing.estimate import PlanTerms
from portal.billing.invoicing import BilledLine, Counted, billed_codes, breakdown_data, renewal_lines
from portal.billing.lifecycle import LIVE_STATUSES, SubscriptionStatus, Transition
from portal.billing.periods import Period, add_intervals, period_at
from portal.clock import now
from portal.extensions import db
from portal.models import (
    Invoice,
    InvoiceStatus,
    LineKind,
    OperationError,
    Payment,
    PaymentMethod,
    PaymentStatus,
    Plan,
    RetryStrategy,
    Subscription,
    UsageCounter,
    User,
)
from portal.payments.errors import PaymentError
from portal.services import invoices, notifications, payments, purchases, retries, subscriptions
from portal.services.invoices import LineDraft
from portal.services.payments import cards

_S = SubscriptionStatus
#: What `renew` did when the subscription moved to its next period (the job renews again while due).
ADVANCED = ("renewed", "converted", "free")
#: A card payment younger than this may still be on its way to Stripe in another process: left alone.
IN_FLIGHT_FOR = timedelta(minutes=5)
#: What `Renewal.advance_many` sets per subscription (the rest of `_next_period` is the same for all).
_PER_SUBSCRIPTION = ("plan_id", "billing_anchor", "current_period_start", "current_period_end")
_KINDS = {"plan": LineKind.PLAN, "usage": LineKind.USAGE, "overage": LineKind.OVERAGE}


def renewal_key(subscription_id: int, period_start: datetime) -> str:
    """The renewal's natural key: the subscription and the start of the period it opens."""
    return f"renewal:{subscription_id}:{as_utc(period_start).isoformat()}"


# --- what a renewal bills -------------------------------------------------------------------------------

def next_period(sub: Subscription, plan: Plan) -> tuple[datetime, Period]:
    """(anchor, period) of the period after the current one on `plan`, counted from the anchor so month
    ends never drift (Jan 31 → Feb 28 → Mar 31). A trial ending, or a new interval, anchors afresh."""
    return next_period_of(trial=sub.status is _S.TRIALING, anchor=sub.billing_anchor, period_end=sub.current_period_end,
                          closing=(sub.plan.interval_unit, sub.plan.interval_count),
                          next_=(plan.interval_unit, plan.interval_count))


def next_period_of(*, trial: bool, anchor: datetime, period_end: datetime, closing: tuple[Any, int],
                   next_: tuple[Any, int]) -> tuple[datetime, Period]:
    """`next_period` from plain values: the closing and the next plan's (interval unit, count)."""
    start = period_end
    if not trial and next_ == closing and anchor <= start:
        _, period = period_at(anchor, next_[0], next_[1], start)
        if period.start == start:
            return anchor, period
    return start, Period(start, add_intervals(start, next_[0], next_[1], 1))


#: What a batch of renewals has read of each plan: ("terms" or "features", plan id) -> its pricing terms or
#: its features' ids by code (None outside `batch`).
_batch_plans: ContextVar[dict[tuple[str, int], Any] | None] = ContextVar("renewal_batch_plans", default=None)


@contextmanager
def batch() -> Iterator[None]:
    """Renew a batch: each plan's terms are read once for the batch instead of once per subscription (a
    plan, its features and their tiers are four queries). A batch job lasts seconds, and a plan edited
    meanwhile prices the renewals of the next one; outside a batch every renewal reads its plan afresh."""
    token = _batch_plans.set({})
    try:
        yield
    finally:
        _batch_plans.reset(token)


def _of_plan(what: str, plan: Plan, read: Callable[[Plan], Any]) -> Any:
    cache = _batch_plans.get()
    if cache is None:
        return read(plan)
    identity = sa.inspect(plan).identity  # its id without reloading it (it expires with every commit)
    key = (what, identity[0] if identity else plan.id)
    if key not in cache:
        cache[key] = read(plan)
    return cache[key]


def plan_by_id(plan_id: int) -> Plan:
    """The plan; in a batch, the same object for the whole batch (a renewal's receipt names its plan:
    the session would otherwise drop an unreferenced plan and read it again every time)."""
    cache = _batch_plans.get()
    if cache is None:
        return db.session.get(Plan, plan_id)
    plan = cache.get(("plan", plan_id))
    if plan is None:
        plan = cache[("plan", plan_id)] = db.session.get(Plan, plan_id)
    return plan


def _terms(plan: Plan) -> PlanTerms:
    from portal.services.catalog.views import plan_terms

    return _of_plan("terms", plan, plan_terms)


def _feature_ids(plan: Plan) -> dict[str, int]:
    return _of_plan("features", plan, lambda p: {pf.feature.code: pf.feature_id for pf in p.features})


def billed_feature_codes(plan: Plan) -> dict[int, str]:
    """The plan's features whose use is billed at a period's end: code by feature id (their counters)."""
    def read(p: Plan) -> dict[int, str]:
        feature_ids = _feature_ids(p)
        return {feature_ids[code]: code for code in billed_codes(_terms(p)) if code in feature_ids}

    return _of_plan("billed", plan, read)


_COUNTER_TABLE = UsageCounter.__table__
_COUNTERS = sa.select(_COUNTER_TABLE.c.feature_id, _COUNTER_TABLE.c.used, _COUNTER_TABLE.c.bonus).where(
    _COUNTER_TABLE.c.user_id == sa.bindparam("user_id"),
    _COUNTER_TABLE.c.feature_id.in_(sa.bindparam("feature_ids", expanding=True)),
    _COUNTER_TABLE.c.window_start == sa.bindparam("window_start", type_=_COUNTER_TABLE.c.window_start.type))


def period_counts(sub: Subscription) -> dict[str, Counted]:
    """The current period's counters of the features billed at its end, by feature code."""
    codes_by_id = billed_feature_codes(sub.plan)
    if not codes_by_id:
        return {}
    counters = db.session.execute(_COUNTERS, {"user_id": sub.user_id, "feature_ids": list(codes_by_id),
                                              "window_start": sub.current_period_start})
    return {codes_by_id[row.feature_id]: Counted(row.used, row.bonus) for row in counters}


def draft(sub: Subscription, plan: Plan | None, period: Period | None) -> tuple[BilledLine, ...]:
    """The lines the renewal of `sub` would bill now: `plan`'s fee for `period` (None when the
    subscription ends) and the current period's use so far (none for a trial)."""
    closing = None if sub.status is _S.TRIALING else _terms(sub.plan)
    return renewal_lines(
        next_terms=_terms(plan) if plan is not None else None, next_period=period,
        closing_terms=closing, closing_period=Period(sub.current_period_start, sub.current_period_end),
        counted=period_counts(sub) if closing is not None else {},
    )


def _drafts(sub: Subscription, lines: tuple[BilledLine, ...]) -> list[LineDraft]:
    return line_drafts(lines, _feature_ids(sub.plan))


def line_drafts(lines: tuple[BilledLine, ...], feature_ids: dict[str, int]) -> list[LineDraft]:
    """The generator's lines as invoice lines (`feature_ids`: the closing plan's, by code)."""
    return [LineDraft(_KINDS[line.kind], line.description[:255], line.amount, quantity=line.quantity,
                      feature_id=feature_ids.get(line.feature) if line.feature else None,
                      breakdown=breakdown_data(line.breakdown),
                      period_start=line.period.start if line.period else None,
                      period_end=line.period.end if line.period else None)
            for line in lines]


# --- the purchase --------------------------------------------------------------------------------------

@purchases.register
@dataclass(frozen=True)
class Renewal(purchases.Effect):
    """The next period of a subscription (a trial's first paid period too), applied once it is paid."""

    kind: ClassVar[str] = "renewal"
    reason: ClassVar[str] = "renewal"
    #: A refused card keeps the invoice open: the subscription goes past due and the retries try again.
    void_on_failure: ClassVar[bool] = False

    subscription_id: int
    #: The plan of the closing period, and the plan of the next one (a scheduled downgrade applies here).
    from_plan_id: int
    plan_id: int
    period_start: datetime
    period_end: datetime
    billing_anchor: datetime
    #: A trial converting into its first paid period.
    trial: bool = False

    def _plan(self) -> Plan:
        return plan_by_id(self.plan_id)

    def describe(self) -> str:
        return f"your {self._plan().name} renewal"

    def card_description(self, invoice: Invoice) -> str:
        return f"Renewal → {invoice.number}"

    def receipt(self, invoice: Invoice, payment: Payment | None) -> tuple[str, dict[str, Any]]:
        context = {"plan": self._plan().name, "amount": invoice.total, "currency": invoice.currency,
                   "invoice": invoice.number, "period_end": self.period_end}
        return ("subscription_activated" if self.trial else "renewal_succeeded"), context

    def waiting(self, sub: Subscription) -> bool:
        """The subscription is still at the end of the period this renewal closes."""
        return (sub.status in (_S.ACTIVE, _S.TRIALING) and sub.current_period_end == self.period_start
                and sub.plan_id == self.from_plan_id)

    def past_due(self, sub: Subscription) -> bool:
        """The subscription is past due in the period this renewal opens (its payment was refused)."""
        return sub.status is _S.PAST_DUE and sub.current_period_start == self.period_start \
            and sub.plan_id == self.plan_id

    def check(self, invoice: Invoice) -> None:
        sub = subscriptions.lock(self.subscription_id)
        if sub is None or sub.status not in LIVE_STATUSES:
            raise purchases.Stale("the subscription has ended")
        if not (self.waiting(sub) or self.past_due(sub)):
            raise purchases.Stale("the subscription moved on since this renewal was invoiced")

    def apply(self, invoice: Invoice, payment: Payment | None) -> None:
        sub = db.session.get(Subscription, self.subscription_id)
        if sub.status is _S.PAST_DUE:
            subscriptions.transition(sub, Transition.RECOVER, reason=f"{invoice.number} paid",
                                     data={"invoice": invoice.number}, grace_until=None)
            retries.resolve(renewal_key(self.subscription_id, self.period_start))
        else:
            self.advance(sub, invoice.number)

    def advance(self, sub: Subscription, invoice_number: str | None) -> None:
        """Move the subscription into the period this renewal opens (paid, or nothing was due)."""
        event = Transition.ACTIVATE if sub.status is _S.TRIALING else Transition.RENEW
        subscriptions.transition(sub, event, reason=self._advance_reason(invoice_number),
                                 data=self._event_data(invoice_number), **self._next_period(), grace_until=None)
        db.session.expire(sub, ["plan"])

    #: Paid in bulk (purchases.bulk) by a batch job's renewals (subscriptions.batch_renewals).
    applies_many: ClassVar[bool] = True

    @classmethod
    def apply_many(cls, paid: list[tuple[purchases.Effect, Any]]) -> None:
        """`apply` for renewals paid at once, each of a subscription still waiting for it (locked since it
        was priced, as `renewals.renew` has it): `advance`, one statement for all."""
        cls.advance_many([effect for effect, _ in paid], [invoice.number for _, invoice in paid])

    @staticmethod
    def advance_many(effects: list[Renewal], invoice_numbers: list[str | None] | None) -> None:
        """`advance` for many renewals of waiting subscriptions: one statement for the renewals, one for
        the trials' ends (another transition)."""
        numbers = invoice_numbers or [None] * len(effects)
        for trial in (False, True):
            moves = []
            for effect, number in zip(effects, numbers):
                if effect.trial is trial:
                    changes = effect._next_period()
                    moves.append(subscriptions.Move(
                        effect.subscription_id, {key: changes[key] for key in _PER_SUBSCRIPTION},
                        effect._advance_reason(number), effect._event_data(number)))
            if moves:
                subscriptions.transition_many(_S.TRIALING if trial else _S.ACTIVE,
                                              Transition.ACTIVATE if trial else Transition.RENEW, moves,
                                              scheduled_plan_id=None, renewal_lease_until=None, grace_until=None)

    def _advance_reason(self, invoice_number: str | None) -> str:
        paid = f"paid by {invoice_number}" if invoice_number else "nothing to pay"
        return f"{'first period' if self.trial else 'renewed'}, {paid}"

    def unpaid(self, invoice: Invoice, error: PaymentError) -> None:
        sub = subscriptions.lock(self.subscription_id)
        if sub is None or not (self.waiting(sub) or self.past_due(sub)):
            return  # ended or moved on meanwhile: nothing to hold it to
        first = sub.status is not _S.PAST_DUE
        changes: dict[str, Any] = {}
        if first:  # past due in the next period: features keep working until grace ends
            grace = now() + timedelta(days=current_app.config["GRACE_PERIOD_DAYS"])
            changes = {**self._next_period(), "grace_until": grace}
        subscriptions.transition(sub, Transition.PAYMENT_FAILED, reason=error.message,
                                 data={**self._event_data(invoice.number), "code": error.code}, **changes)
        db.session.expire(sub, ["plan"])
        failure = retries.record_failure(
            "trial_conversion" if self.trial else "renewal_payment", error.code,
            f"{'Trial conversion' if self.trial else 'Renewal'} {invoice.number} of subscription {sub.id} "
            f"was refused: {error.message}",
            dedupe_key=renewal_key(self.subscription_id, self.period_start), strategy=error.strategy,
            context={"invoice": invoice.number, "invoice_id": invoice.id, "amount": invoice.amount_due,
                     "currency": invoice.currency, "decline_code": error.decline_code,
                     # the tries must land before grace ends (the subscription expires then)
                     "retry_before": sub.grace_until.isoformat() if sub.grace_until else None},
            user_id=sub.user_id, subscription_id=sub.id,
        )
        if first:  # the renewal's own try; a customer's "pay now" is not one of the automatic tries
            retries.tried(failure)
            notifications.notify(sub.user_id, "renewal_failed", {
                "plan": self._plan().name, "amount": invoice.amount_due, "currency": invoice.currency,
                "invoice": invoice.number, "grace_until": sub.grace_until, "reason": error.message,
            }, key=f"renewal_failed:{invoice.number}")

    def _next_period(self) -> dict[str, Any]:
        return {"plan_id": self.plan_id, "scheduled_plan_id": None, "billing_anchor": self.billing_anchor,
                "current_period_start": self.period_start, "current_period_end": self.period_end,
                "renewal_lease_until": None}

    def _event_data(self, invoice_number: str | None) -> dict[str, Any]:
        data: dict[str, Any] = {"period_start": self.period_start.isoformat(), "period_end": self.period_end.isoformat()}
        if invoice_number:
            data["invoice"] = invoice_number
        if self.plan_id != self.from_plan_id:
            data.update(from_plan_id=self.from_plan_id, plan_id=self.plan_id)
        return data


@purchases.register
@dataclass(frozen=True)
class FinalUse(purchases.Effect):
    """The use of a subscription's last period, billed when it ends (a cancellation took effect)."""

    kind: ClassVar[str] = "final_use"
    reason: ClassVar[str] = "renewal"
    void_on_failure: ClassVar[bool] = False

    subscription_id: int
    period_end: datetime

    def describe(self) -> str:
        return "the use of your last period"

    def apply(self, invoice: Invoice, payment: Payment | None) -> None:
        retries.resolve(renewal_key(self.subscription_id, self.period_end))

    def unpaid(self, invoice: Invoice, error: PaymentError) -> None:
        key = renewal_key(self.subscription_id, self.period_end)
        first = retries.open_error(key) is None
        failure = retries.record_failure(
            "final_invoice_payment", error.code, f"{invoice.number} (the last period's use) was refused: {error.message}",
            dedupe_key=key, strategy=error.strategy,
            context={"invoice": invoice.number, "invoice_id": invoice.id, "amount": invoice.amount_due,
                     "currency": invoice.currency},
            user_id=invoice.user_id, subscription_id=self.subscription_id,
        )
        if first:
            retries.tried(failure)


# --- renewing ------------------------------------------------------------------------------------------

def due(sub: Subscription | None, at: datetime) -> bool:
    return sub is not None and sub.status in (_S.ACTIVE, _S.TRIALING) and sub.current_period_end <= at


_DUE_READ = sa.select(Subscription.__table__.c.status, Subscription.__table__.c.current_period_end).where(
    Subscription.__table__.c.id == sa.bindparam("id"))


def due_ids(subscription_ids: list[int]) -> list[int]:
    """Those of these subscriptions that are due (`due`), in the order given: one query for a batch."""
    table = Subscription.__table__
    found = set(db.session.execute(sa.select(table.c.id).where(
        table.c.id.in_(subscription_ids), table.c.status.in_([_S.ACTIVE.value, _S.TRIALING.value]),
        table.c.current_period_end <= now())).scalars())
    return [sid for sid in subscription_ids if sid in found]


def renew(subscription_id: int) -> str:
    """One renewal step of a subscription whose period is over; returns what happened: "renewed",
    "converted" (a trial's first paid period), "free" (nothing to bill), "failed" (past due now),
    "pending" (the bank's answer is awaited), "canceled" (a cancellation took effect) or "not_due".
    Flushes; the caller commits (the purchase path commits before it calls Stripe)."""
    at = now()
    seen = db.session.execute(_DUE_READ, {"id": subscription_id}).first()  # a plain read: nothing locked yet
    if seen is None or seen.status not in (_S.ACTIVE, _S.TRIALING) or seen.current_period_end > at:
        return "not_due"
    existing = invoices.id_by_key(renewal_key(subscription_id, seen.current_period_end))
    if existing is not None:  # started before (a crash, a lost answer): finish that one
        return _resume(db.session.get(Invoice, existing))
    locked = subscriptions.lock_with_owner(subscription_id)
    if locked is None or not due(locked[0], at):
        return "not_due"
    sub, user = locked
    if sub.cancel_at_period_end:
        return _end(sub, user)
    plan = sub.scheduled_plan or sub.plan  # a scheduled downgrade takes effect with the next period
    anchor, period = next_period(sub, plan)
    lines = draft(sub, plan, period)
    effect = Renewal(subscription_id=sub.id, from_plan_id=sub.plan_id, plan_id=plan.id, period_start=period.start,
                     period_end=period.end, billing_anchor=anchor, trial=sub.status is _S.TRIALING)
    if sum(line.amount for line in lines) <= 0:
        effect.advance(sub, None)
        return "free"
    # fresh: no invoice had this key a moment ago (unless the period moved meanwhile), and the subscription
    # it is priced from is locked
    outcome = purchases.buy(user, effect, _drafts(sub, lines), key=renewal_key(sub.id, period.start),
                            currency=plan.currency, subscription_id=sub.id, period_start=period.start,
                            period_end=period.end, off_session=True,
                            fresh=period.start == seen.current_period_end)
    return _result(outcome, effect)


def _result(outcome: purchases.Outcome, effect: purchases.Effect) -> str:
    if outcome.status == "paid":
        return "converted" if getattr(effect, "trial", False) else "renewed"
    if outcome.status == "failed":
        return "failed"
    return "pending"


def _resume(invoice: Invoice) -> str:
    """Carry on with a renewal invoice issued before: ask Stripe about its card payment, or pay it again."""
    if invoice.status is not InvoiceStatus.OPEN:
        return "not_due"
    effect = purchases.effects.load(invoice.purchase)
    in_flight = payments.open_card_payment(invoice.id)
    if in_flight is not None:
        if in_flight.status is PaymentStatus.PENDING and not payments.unanswered(in_flight) \
                and now() - in_flight.created_at < IN_FLIGHT_FOR:
            return "pending"  # another process may be sending it to Stripe this very moment
        if retries.open_error(purchases.payment_check_key(in_flight)) is not None:
            return "pending"  # Stripe did not answer: the retries ask it again, with backoff
        return _result(purchases.confirm(in_flight, off_session=True), effect)
    return _result(purchases.resume(invoice, off_session=True), effect)


def _end(sub: Subscription, user: User) -> str:
    """A cancellation takes effect: canceled, the Free plan restored, the last period's use invoiced."""
    lines = draft(sub, None, None)
    drafts = _drafts(sub, lines)
    ended_at = sub.current_period_end
    old_plan = sub.plan
    subscriptions.transition(sub, Transition.CANCEL, reason=sub.cancel_reason or "cancelled at period end",
                             ended_at=ended_at, renewal_lease_until=None)
    restore_free_plan(user, old_plan, reason=f"{old_plan.name} ended (cancelled)")
    if sum(line.amount for line in lines) > 0:
        purchases.buy(user, FinalUse(subscription_id=sub.id, period_end=ended_at), drafts,
                      key=renewal_key(sub.id, ended_at), currency=old_plan.currency, subscription_id=sub.id,
                      period_start=sub.current_period_start, period_end=ended_at, off_session=True)
    return "canceled"


def restore_free_plan(user: User, old_plan: Plan, *, reason: str) -> Subscription:
    """Start the customer on the default (Free) plan and tell them their features are restricted."""
    from portal.services.catalog.views import feature_term

    free = subscriptions.default_plan()
    sub = subscriptions.start_subscription(user, free, reason=reason)
    limits = [f"{term.name}: {term.summary}" for term in (feature_term(pf, free) for pf in free.features)]
    notifications.notify(user, "features_restricted", {"plan": old_plan.name, "free_plan": free.name,
                                                       "limits": limits}, key=f"features_restricted:{sub.id}")
    return sub


# --- the grace period ends ----------------------------------------------------------------------------

def expire(subscription_id: int) -> str:
    """End a past-due subscription whose grace period is over: "expired", "pending" (a card payment for
    it is still with the bank) or "not_due" (paid meanwhile, or grace not over)."""
    at = now()
    sub = db.session.get(Subscription, subscription_id)
    if sub is None or sub.status is not _S.PAST_DUE or sub.grace_until is None or sub.grace_until > at:
        return "not_due"
    unpaid = db.session.scalars(sa.select(Invoice).where(
        Invoice.subscription_id == sub.id, Invoice.reason == "renewal", Invoice.status == InvoiceStatus.OPEN)).all()
    if any(payments.open_card_payment(invoice.id) is not None for invoice in unpaid):
        return "pending"
    for invoice in unpaid:  # invoices first, then the subscription: the purchase path's lock order
        purchases.write_off(invoice, "the grace period ended unpaid")
    sub = subscriptions.lock(subscription_id)
    if sub is None or sub.status is not _S.PAST_DUE:
        return "not_due"
    plan = sub.plan
    subscriptions.transition(sub, Transition.EXPIRE, reason="the grace period ended unpaid", ended_at=at,
                             grace_until=None, renewal_lease_until=None)
    for invoice in unpaid:
        purchase = invoice.purchase or {}
        if purchase.get("period_start"):
            retries.give_up(renewal_key(sub.id, datetime.fromisoformat(purchase["period_start"])))
    user = db.session.get(User, sub.user_id)
    notifications.notify(user, "subscription_expired", {"plan": plan.name, "ended_at": at,
                                                        "free_plan": subscriptions.default_plan().name},
                         key=f"subscription_expired:{sub.id}")
    restore_free_plan(user, plan, reason=f"{plan.name} expired unpaid")
    return "expired"


# --- reminders -----------------------------------------------------------------------------------------

def send_reminders(limit: int = 1000) -> int:
    """Email customers whose paid renewal is RENEWAL_REMINDER_DAYS away, with its estimated amount; once
    per period. Periods no longer than the reminder window get none (it would come as the period starts)."""
    from portal.services.subscriptions.views import next_invoice

    at = now()
    ahead = timedelta(days=current_app.config["RENEWAL_REMINDER_DAYS"])
    candidates = db.session.scalars(
        sa.select(Subscription).join(Plan, Plan.id == Subscription.plan_id).where(
            Subscription.status.in_([_S.ACTIVE, _S.TRIALING]), Subscription.cancel_at_period_end.is_(False),
            Subscription.current_period_end > at, Subscription.current_period_end <= at + ahead,
            sa.or_(Subscription.reminded_for.is_(None), Subscription.reminded_for != Subscription.current_period_end),
            Plan.price_amount > 0,
        ).order_by(Subscription.current_period_end).limit(limit)
    ).all()
    sent = 0
    for sub in candidates:
        sub.reminded_for = sub.current_period_end
        if sub.current_period_end - ahead <= sub.current_period_start:
            continue
        estimate = next_invoice(sub)
        if estimate.total <= 0:
            continue
        if notifications.notify(sub.user_id, "renewal_reminder", {
            "plan": estimate.plan.name, "amount": estimate.total, "currency": estimate.currency,
            "renews_at": sub.current_period_end,
        }, key=f"renewal_reminder:{sub.id}:{sub.current_period_end.isoformat()}") is not None:
            sent += 1
    db.session.flush()
    return sent


# --- the retries ---------------------------------------------------------------------------------------

@retries.handler("renewal_payment", "trial_conversion", "final_invoice_payment")
def retry_payment(error: OperationError) -> retries.Result:
    """Pay the same open invoice again through the one purchase path (wallet first, then the default card
    off session); a payment already with the bank is never doubled: resume reports on it instead."""
    invoice = db.session.get(Invoice, (error.context or {}).get("invoice_id"))
    if invoice is None:
        return retries.Result.moot("the invoice no longer exists")
    if invoice.status is not InvoiceStatus.OPEN:
        return retries.Result.moot(f"{invoice.number} is {invoice.status.value}")
    return outcome_result(purchases.resume(invoice, off_session=True))


def outcome_result(outcome: purchases.Outcome) -> retries.Result:
    """A purchase's outcome as a retry's."""
    if outcome.status == "paid":
        return retries.Result.succeeded(f"{outcome.invoice.number} paid")
    if outcome.status == "refunded":
        return retries.Result.moot("paid, but no longer applicable: refunded to the card")
    if outcome.status == "failed":
        error = outcome.error
        return retries.Result.failed(error.code if error else None, error.message if error else "",
                                     error.strategy if error else None)
    if outcome.status == "requires_action":
        return retries.Result.failed("authentication_required", "The bank asks the customer to confirm the payment.",
                                     RetryStrategy.MANUAL)
    return retries.Result.waiting("the bank's answer is awaited")


def next_try(sub: Subscription) -> OperationError | None:
    """The unresolved failure of a past-due subscription's renewal (when its card is tried next)."""
    if sub.status is not _S.PAST_DUE:
        return None
    return retries.open_error(renewal_key(sub.id, sub.current_period_start))


# --- the customer pays ---------------------------------------------------------------------------------

def open_renewal(user_id: int, number: str) -> Invoice | None:
    """The customer's open renewal invoice by number (what "Pay now" pays)."""
    return db.session.scalar(sa.select(Invoice).where(
        Invoice.number == number, Invoice.user_id == user_id, Invoice.reason == "renewal",
        Invoice.status == InvoiceStatus.OPEN))


def pay_now(invoice: Invoice) -> purchases.Outcome:
    """The customer pays an unpaid renewal from the portal (wallet first, then the default card, with
    the bank's check if it asks); a past-due subscription is active again once it is paid."""
    return purchases.resume(invoice)


def retry_with_new_card(method: PaymentMethod) -> purchases.Outcome | None:
    """A card was added or made the default while a renewal is unpaid: it becomes the default and pays
    it at once (wallet first). None when there is nothing to retry (not past due, or a payment is
    already with the bank)."""
    sub = subscriptions.live_subscription(method.user_id)
    if sub is None or sub.status is not _S.PAST_DUE:
        return None
    invoice = invoices.open_for_subscription(sub.id, "renewal")
    if invoice is None or payments.open_card_payment(invoice.id) is not None:
        return None
    if not method.is_default:
        cards.set_default(method)
    return purchases.resume(invoice)


__all__ = [
    "ADVANCED", "FinalUse", "Renewal", "batch", "billed_feature_codes", "draft", "due", "due_ids", "expire", "line_drafts", "next_period",
    "next_period_of", "next_try",
    "open_renewal", "outcome_result", "pay_now", "period_counts", "renew", "renewal_key", "restore_free_plan",
    "retry_payment", "retry_with_new_card", "send_reminders",
]
