"""A batch job's renewals at once: the common ones in one transaction of a few statements for all.

    renew_many ─ lock the batch's due subscriptions (skipping any another process holds) ─ their
    │            renewal keys unused? ─ their wallets, the closing periods' counters (one query each) ─
    │            the lines (billing.invoicing.renewal_lines, as `renewals.draft`) ─
    ├ nothing to bill → the next period (one guarded update, one insert of events)
    ├ the wallet covers it → purchases.bulk.pay_from_wallets (invoice paid, ledger, payment, receipt),
    │                        Renewal.apply_many (the next period)
    └ anything else (a card to charge, a cancellation to bill, an invoice issued before, a
      subscription another process holds) → left to `renewals.renew`, one by one

Locks are taken in the order every purchase takes them: the subscription, then the invoice numbers,
then the wallet (by its guarded debit). The wallets are read, not locked, before the numbers: a top-up
holds the numbers while it waits for its wallet, so a batch holding wallets while it waited for the
numbers would deadlock with it. A balance that fell between the read and the debit fails the batch.

The same renewals `renewals.renew` makes, with the same keys, rows and emails: per renewal it costs a
few rows in shared statements instead of sixteen statements and a transaction of its own, which is what
lets two workers renew hundreds a second. The batch is all or nothing: should any part of it fail, the
caller rolls back and renews the batch one by one (`renew`), where one customer's failure is theirs alone.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from portal.billing.estimate import PlanTerms
from portal.billing.invoicing import Counted, renewal_lines
from portal.billing.lifecycle import SubscriptionStatus
from portal.billing.periods import Period
from portal.clock import now
from portal.extensions import db
from portal.models import Invoice, Subscription, UsageCounter, User, Wallet
from portal.services import subscriptions
from portal.services.purchases import bulk
from portal.services.subscriptions import renewals
from portal.services.subscriptions.renewals import Renewal, renewal_key

_S = SubscriptionStatus
_SUBS, _USERS, _WALLETS = Subscription.__table__, User.__table__, Wallet.__table__
_COUNTERS = UsageCounter.__table__

_DUE = (
    sa.select(_SUBS.c.id, _SUBS.c.user_id, _SUBS.c.status, _SUBS.c.plan_id, _SUBS.c.scheduled_plan_id,
              _SUBS.c.billing_anchor, _SUBS.c.current_period_start, _SUBS.c.current_period_end,
              _USERS.c.email, _USERS.c.name, _USERS.c.timezone, _USERS.c.usage_emails)
    .join(_USERS, _USERS.c.id == _SUBS.c.user_id)
    .where(_SUBS.c.id.in_(sa.bindparam("ids", expanding=True)),
           _SUBS.c.status.in_([_S.ACTIVE.value, _S.TRIALING.value]),
           _SUBS.c.cancel_at_period_end.is_(False),
           _SUBS.c.current_period_end <= sa.bindparam("at", type_=_SUBS.c.current_period_end.type))
    .order_by(_SUBS.c.id)
    # Another process renewing one of them (a lapsed lease handed it out twice, a customer paying now):
    # it is left to `renew`, which waits for it.
    .with_for_update(of=_SUBS, skip_locked=True)
)
_WALLETS_OF = (sa.select(_WALLETS.c.user_id, _WALLETS.c.id, _WALLETS.c.balance, _WALLETS.c.currency)
               .where(_WALLETS.c.user_id.in_(sa.bindparam("user_ids", expanding=True))))
_USED_KEYS = sa.select(Invoice.__table__.c.idempotency_key).where(
    Invoice.__table__.c.idempotency_key.in_(sa.bindparam("keys", expanding=True)))
_COUNTED = sa.select(_COUNTERS.c.user_id, _COUNTERS.c.feature_id, _COUNTERS.c.window_start, _COUNTERS.c.used,
                     _COUNTERS.c.bonus).where(
    _COUNTERS.c.user_id.in_(sa.bindparam("user_ids", expanding=True)),
    _COUNTERS.c.feature_id.in_(sa.bindparam("feature_ids", expanding=True)),
    _COUNTERS.c.window_start.in_(sa.bindparam("starts", expanding=True, type_=_COUNTERS.c.window_start.type)))


@dataclass(frozen=True)
class _Plan:
    """What a batch reads of a plan once: its interval, currency, pricing terms, features' ids and the
    features whose use it bills at a period's end (code by id)."""

    id: int
    interval_unit: str
    interval_count: int
    currency: str
    terms: PlanTerms
    feature_ids: dict[str, int]
    billed: dict[int, str]


def _plan(plan_id: int) -> _Plan:
    """The plan as the batch read it first (`renewals.batch`: a job's batches share it)."""
    cache = renewals._batch_plans.get()
    found = cache.get(("batch", plan_id)) if cache is not None else None
    if found is None:
        plan = renewals.plan_by_id(plan_id)
        found = _Plan(plan.id, plan.interval_unit, plan.interval_count, plan.currency, renewals._terms(plan),
                      renewals._feature_ids(plan), renewals.billed_feature_codes(plan))
        if cache is not None:
            cache[("batch", plan_id)] = found
    return found


@dataclass
class Result:
    """What `renew_many` did: counts by outcome ("renewed", "converted", "free"), the subscriptions it
    moved into their next period (due again if they missed more), and those it left to `renew`."""

    counts: Counter
    advanced: list[int]
    left: list[int]


def renew_many(subscription_ids: list[int]) -> Result:
    """Renew those of these subscriptions the batch can (see the module); flushes, the caller commits (or
    rolls back and renews them one by one)."""
    at = now()
    rows = db.session.execute(_DUE, {"ids": list(subscription_ids), "at": at}).all()
    if not rows:
        return Result(Counter(), [], list(subscription_ids))
    keys = {row.id: renewal_key(row.id, row.current_period_end) for row in rows}
    used = set(db.session.execute(_USED_KEYS, {"keys": list(keys.values())}).scalars())
    rows = [row for row in rows if keys[row.id] not in used]  # begun before: `renew` carries on with it
    wallets = {w.user_id: w for w in db.session.execute(_WALLETS_OF, {"user_ids": [r.user_id for r in rows]})} \
        if rows else {}
    counted = _counted(rows)

    free: list[Renewal] = []
    orders: list[bulk.WalletOrder] = []
    for row in rows:
        closing = _plan(row.plan_id)
        plan = _plan(row.scheduled_plan_id or row.plan_id)
        trial = row.status is _S.TRIALING
        anchor, period = renewals.next_period_of(trial=trial, anchor=row.billing_anchor, period_end=row.current_period_end,
                                                 closing=(closing.interval_unit, closing.interval_count),
                                                 next_=(plan.interval_unit, plan.interval_count))
        closing_terms = None if trial else closing.terms
        counts = {} if trial else {
            code: counted[(row.user_id, fid, row.current_period_start)]
            for fid, code in closing.billed.items() if (row.user_id, fid, row.current_period_start) in counted}
        lines = renewal_lines(next_terms=plan.terms, next_period=period, closing_terms=closing_terms,
                              closing_period=Period(row.current_period_start, row.current_period_end), counted=counts)
        effect = Renewal(subscription_id=row.id, from_plan_id=row.plan_id, plan_id=plan.id, period_start=period.start,
                         period_end=period.end, billing_anchor=anchor, trial=trial)
        total = sum(line.amount for line in lines)
        if total <= 0:
            free.append(effect)
            continue
        account = wallets.get(row.user_id)
        if account is None or account.currency != plan.currency or account.balance < total:
            continue  # the card pays (part of) it: one by one
        orders.append(bulk.WalletOrder(
            effect, renewals.line_drafts(lines, closing.feature_ids), key=keys[row.id], currency=plan.currency,
            wallet_id=account.id, recipient=_Recipient(row), subscription_id=row.id,
            period_start=period.start, period_end=period.end))

    counts = Counter()
    if free:
        Renewal.advance_many(free, None)
        counts["free"] += len(free)  # as `renew` says of it, a trial's end included
    if orders:
        bulk.pay_from_wallets(orders)
        counts.update("converted" if order.effect.trial else "renewed" for order in orders)
    done = {effect.subscription_id for effect in free} | {order.effect.subscription_id for order in orders}
    return Result(counts, sorted(done), [sid for sid in subscription_ids if sid not in done])


class _Recipient:
    """The customer of a due row, as notifications.notify_many takes them."""

    __slots__ = ("id", "email", "name", "timezone", "usage_emails")

    def __init__(self, row) -> None:
        self.id, self.email, self.name, self.timezone, self.usage_emails = (
            row.user_id, row.email, row.name, row.timezone, row.usage_emails)


def _counted(rows) -> dict[tuple[int, int, datetime], Counted]:
    """The closing periods' counters of the batch's billed features, by (customer, feature, period start)."""
    feature_ids: set[int] = set()
    for row in rows:
        if row.status is not _S.TRIALING:
            feature_ids.update(_plan(row.plan_id).billed)
    if not feature_ids:
        return {}
    found = db.session.execute(_COUNTED, {
        "user_ids": sorted({row.user_id for row in rows}), "feature_ids": sorted(feature_ids),
        "starts": sorted({row.current_period_start for row in rows})})
    return {(c.user_id, c.feature_id, c.window_start): Counted(c.used, c.bonus) for c in found}


__all__ = ["Result", "renew_many"]
