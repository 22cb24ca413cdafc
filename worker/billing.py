"""Subscription jobs: the renewal sweep and the jobs it fans out, the end of grace periods, reminders.

The sweep (every 5 minutes, so a period ending at 14:00 renews by 14:05) hands each due
subscription to a job once, by a lease on the row (RENEWAL_LEASE_MINUTES), in batches of
RENEWAL_BATCH_SIZE on the billing queue. A batch job makes the batch's common renewals (the wallet
pays, or nothing is due) together in one transaction, and the others one by one, each in its own
transaction: one customer's failure never undoes another's renewal. A job that dies lets
its subscriptions go when the lease passes, and the next sweep hands them out again; the renewal's
key makes that harmless (portal.services.subscriptions.renewals).
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

from worker import job

log = logging.getLogger(__name__)

#: A subscription that missed periods (the worker was down, the clock was moved) renews period by period
#: up to this many in one job; the next sweep goes on from there.
MAX_PERIODS_PER_RUN = 36


def _one_by_one(ids: list[int], step: Callable[[int], str], *, repeat: tuple[str, ...] = ()) -> tuple[Counter, list[int]]:
    """Run `step` for each id in its own transaction (committed, or rolled back and counted as an error);
    returns the counts by outcome and the ids it answered one of `repeat` (in order)."""
    from portal.extensions import db

    counts: Counter[str] = Counter()
    again: list[int] = []
    for subscription_id in ids:
        try:
            result = step(subscription_id)
            db.session.commit()
        except Exception:
            db.session.rollback()
            log.exception("subscription %s: %s failed", subscription_id, step.__name__)
            result = "error"
        counts[result] += 1
        if result in repeat:
            again.append(subscription_id)
    return counts, again


def _together(ids: list[int]):
    """The batch's common renewals in one transaction (subscriptions.batch_renewals); should it fail, it is
    rolled back whole and every one of them is renewed one by one."""
    from portal.extensions import db
    from portal.services.subscriptions import batch_renewals

    try:
        result = batch_renewals.renew_many(ids)
        db.session.commit()
        return result
    except Exception:
        db.session.rollback()
        log.exception("renewing %d subscriptions together failed: renewing them one by one", len(ids))
        return batch_renewals.Result(Counter(), [], list(ids))


@job("billing")
def renew_subscriptions(ids: list[int]) -> dict[str, int]:
    """Renew each of these due subscriptions (and any period it missed); counts by outcome.

    The common renewals (paid from the wallet, or nothing to pay) are made together in one transaction,
    the rest one by one, each in its own: one customer's failure never undoes another's renewal. A
    subscription that moved into its next period and is due again (missed periods) goes round again.
    The emails and jobs the transactions leave in the outbox are dispatched together at the end (the
    scheduler's sweep sends them if this process dies first)."""
    from portal.extensions import db
    from portal.services import outbox
    from portal.services.subscriptions import renewals

    counts: Counter[str] = Counter()
    pending = list(ids)
    with renewals.batch(), outbox.dispatch_after_all():
        for _ in range(MAX_PERIODS_PER_RUN):
            together = _together(pending)
            counts.update(together.counts)
            single, again = _one_by_one(together.left, renewals.renew, repeat=renewals.ADVANCED)
            counts.update(single)
            advanced = sorted(together.advanced + again)
            if not advanced:
                break
            pending = renewals.due_ids(advanced)
            db.session.commit()
            if not pending:
                break
    counts.pop("not_due", None)
    return dict(counts)


@job("billing")
def expire_subscriptions(ids: list[int]) -> dict[str, int]:
    """End each of these past-due subscriptions whose grace period is over."""
    from portal.services import outbox
    from portal.services.subscriptions import renewals

    with outbox.dispatch_after_all():
        counts, _ = _one_by_one(ids, renewals.expire)
    counts.pop("not_due", None)
    return dict(counts)


@job("billing")
def renew_due() -> dict[str, int]:
    """The sweep: hand due renewals and ended grace periods to jobs (one per batch), after the commit."""
    from flask import current_app

    from portal.services.subscriptions import sweep

    cfg = current_app.config
    lease = timedelta(minutes=cfg["RENEWAL_LEASE_MINUTES"])
    size = max(1, cfg["RENEWAL_BATCH_SIZE"])
    renewals = sweep.claim_due_renewals(lease)
    expiries = sweep.claim_ended_grace(lease)
    for start in range(0, len(renewals), size):
        renew_subscriptions.enqueue_after_commit(renewals[start:start + size])
    for start in range(0, len(expiries), size):
        expire_subscriptions.enqueue_after_commit(expiries[start:start + size])
    return {"renewals": len(renewals), "expiries": len(expiries)}


@job("emails")
def send_renewal_reminders() -> dict[str, int]:
    """Remind customers RENEWAL_REMINDER_DAYS before a paid renewal, once per period."""
    from portal.services.subscriptions import renewals

    return {"reminders": renewals.send_reminders()}
