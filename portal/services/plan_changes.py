"""Changing plans: upgrade now with proration, downgrade or cancel at period end (undoable)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from typing import Any

from portal.billing.lifecycle import SubscriptionError, SubscriptionStatus, Transition
from portal.billing.periods import IntervalUnit, add_intervals
from portal.billing.proration import Proration, prorate_change
from portal.clock import now
from portal.extensions import db
from portal.models import Invoice, LineKind, Plan, Subscription, SubscriptionEvent, User
from portal.services import invoices, payments, subscriptions, wallet
from portal.services.invoices import LineDraft

#: Average days per interval unit, only to order plans by price (never to bill).
_DAYS = {IntervalUnit.DAY: Fraction(1), IntervalUnit.WEEK: Fraction(7),
         IntervalUnit.MONTH: Fraction(146097, 4800), IntervalUnit.YEAR: Fraction(146097, 400)}


class PlanChangeError(SubscriptionError):
    """A plan change that cannot be made; the message is fit to show."""


def daily_rate(plan: Plan) -> Fraction:
    return Fraction(plan.price_amount) / (_DAYS[plan.interval_unit] * plan.interval_count)


@dataclass(frozen=True)
class ChangePreview:
    subscription: Subscription
    old_plan: Plan
    new_plan: Plan
    is_upgrade: bool
    effective_at: datetime
    proration: Proration | None
    new_period_start: datetime
    new_period_end: datetime
    lines: tuple[LineDraft, ...]
    amount_due: int  #: charged now (wallet first, then card)
    credit_to_wallet: int  #: when unused time is worth more than the new charge
    wallet_part: int
    card_part: int


def _live(user: User) -> Subscription:
    sub = subscriptions.live_subscription(user.id)
    if sub is None:
        raise PlanChangeError("you have no subscription to change")
    return sub


def preview(user: User, new_plan: Plan) -> ChangePreview:
    """What changing to `new_plan` now would cost and when it would take effect. Writes nothing."""
    sub = _live(user)
    old = sub.plan
    if new_plan.id == old.id:
        raise PlanChangeError(f"you are already on the {old.name} plan")
    if new_plan.is_archived or not new_plan.is_public:
        raise PlanChangeError("that plan is not available")
    if new_plan.currency != old.currency:
        raise PlanChangeError("plans in another currency cannot be switched to here")
    if sub.status is SubscriptionStatus.PAST_DUE:
        raise PlanChangeError("settle the failed payment first, then change plans")
    at = now()
    if daily_rate(new_plan) <= daily_rate(old):
        return ChangePreview(sub, old, new_plan, False, sub.current_period_end, None, sub.current_period_end,
                             add_intervals(sub.current_period_end, new_plan.interval_unit, new_plan.interval_count, 1),
                             (), 0, 0, 0, 0)
    same_interval = (old.interval_unit, old.interval_count) == (new_plan.interval_unit, new_plan.interval_count)
    reset = old.is_free or not same_interval or sub.status is SubscriptionStatus.TRIALING
    proration = prorate_change(old.price_amount, new_plan.price_amount, sub.current_period_start,
                               sub.current_period_end, at, reset_period=reset)
    start = at if reset else sub.current_period_start
    end = add_intervals(at, new_plan.interval_unit, new_plan.interval_count, 1) if reset else sub.current_period_end
    lines: list[LineDraft] = []
    if proration.credit:
        lines.append(LineDraft(LineKind.PRORATION, f"Unused time on {old.name} until {sub.current_period_end:%d %b %Y}",
                               -proration.credit, period_start=at, period_end=sub.current_period_end))
    what = f"{new_plan.name} from {at:%d %b %Y} to {end:%d %b %Y}"
    lines.append(LineDraft(LineKind.PLAN if reset else LineKind.PRORATION, what, proration.charge,
                           period_start=at, period_end=end))
    due = max(proration.net, 0)
    balance = wallet.get_wallet(user.id, user.currency).balance
    wallet_part = min(balance, due)
    return ChangePreview(sub, old, new_plan, True, at, proration, start, end, tuple(lines), due,
                         max(-proration.net, 0), wallet_part, due - wallet_part)


def upgrade(user: User, new_plan: Plan, *, token: str) -> payments.Outcome:
    """Upgrade now: invoice the prorated difference and pay it; the new plan applies once it is paid.

    `token` comes from the preview form, so a double submit is the same upgrade.
    """
    change = preview(user, new_plan)
    if not change.is_upgrade:
        raise PlanChangeError(f"{new_plan.name} costs less: it starts at the end of your period")
    sub = change.subscription
    key = f"upgrade:{sub.id}:{token}"
    invoice = invoices.create_invoice(
        user.id, new_plan.currency, list(change.lines), reason="upgrade", subscription_id=sub.id,
        period_start=change.new_period_start, period_end=change.new_period_end, idempotency_key=key,
    )
    effects = {
        "type": "plan_change", "subscription_id": sub.id, "from_plan_id": change.old_plan.id,
        "plan_id": new_plan.id, "period_start": change.new_period_start.isoformat(),
        "period_end": change.new_period_end.isoformat(), "reset": change.new_period_start == change.effective_at,
        "credit_to_wallet": change.credit_to_wallet, "actor_id": user.id,
    }
    if invoice.status.value != "open":  # the same form submitted twice
        return payments.Outcome("paid" if invoice.status.value == "paid" else "failed")
    return payments.pay_invoice(user, invoice, effects=effects)


def apply_paid_change(invoice: Invoice, effects: dict[str, Any]) -> None:
    """Switch the subscription to the paid-for plan (called once, when its invoice is paid)."""
    sub = db.session.get(Subscription, effects["subscription_id"])
    changes: dict[str, Any] = {
        "plan_id": effects["plan_id"],
        "current_period_start": datetime.fromisoformat(effects["period_start"]),
        "current_period_end": datetime.fromisoformat(effects["period_end"]),
        "scheduled_plan_id": None,
        "cancel_at_period_end": False,
        "cancel_reason": None,
    }
    if effects.get("reset"):
        changes["billing_anchor"] = changes["current_period_start"]
    subscriptions.transition(sub, Transition.CHANGE_PLAN, reason=f"upgrade paid by {invoice.number}",
                             actor_id=effects.get("actor_id"),
                             data={"from_plan_id": effects["from_plan_id"], "plan_id": effects["plan_id"],
                                   "invoice": invoice.number}, **changes)
    db.session.expire(sub, ["plan"])
    if effects.get("credit_to_wallet"):
        wallet.credit(invoice.user_id, int(effects["credit_to_wallet"]), reason=f"Unused time credit ({invoice.number})",
                      idempotency_key=f"proration-credit:{invoice.number}", reference=f"invoice:{invoice.number}")


def _note(sub: Subscription, what: str, reason: str, actor_id: int | None, data: dict[str, Any]) -> None:
    """Record a scheduling change that leaves the status as it is."""
    db.session.add(SubscriptionEvent(subscription_id=sub.id, transition=what, from_status=sub.status,
                                     to_status=sub.status, reason=reason, actor_id=actor_id, data=data, at=now()))
    db.session.flush()


def schedule_downgrade(user: User, new_plan: Plan) -> Subscription:
    """Switch to a cheaper plan when the current period ends."""
    change = preview(user, new_plan)
    if change.is_upgrade:
        raise PlanChangeError(f"{new_plan.name} costs more: upgrade now instead")
    sub = change.subscription
    sub.scheduled_plan_id = new_plan.id
    sub.cancel_at_period_end = False
    _note(sub, "schedule_downgrade", f"to {new_plan.name} at period end", user.id, {"plan_id": new_plan.id})
    return sub


def cancel_at_period_end(user: User, reason: str) -> Subscription:
    """Stop renewing: back to the Free plan when the period ends."""
    sub = _live(user)
    if sub.plan.is_default:
        raise PlanChangeError("the Free plan has nothing to cancel")
    sub.cancel_at_period_end = True
    sub.cancel_reason = reason
    sub.scheduled_plan_id = None
    _note(sub, "schedule_cancel", reason, user.id, {})
    return sub


def undo_scheduled_change(user: User) -> Subscription:
    """Keep the current plan after all (a scheduled downgrade or cancellation is dropped)."""
    sub = _live(user)
    if not (sub.cancel_at_period_end or sub.scheduled_plan_id):
        raise PlanChangeError("there is no scheduled change to undo")
    sub.cancel_at_period_end = False
    sub.cancel_reason = None
    sub.scheduled_plan_id = None
    _note(sub, "undo_scheduled_change", "kept the current plan", user.id, {})
    return sub
