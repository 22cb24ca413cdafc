"""Changing plans: upgrade now with proration, a free trial from the Free plan, downgrade or cancel
at period end (undoable). Upgrades are paid through the one purchase path (services.purchases)
and applied by the PlanChange effect, only while the subscription is still as it was priced.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any, ClassVar

import sqlalchemy as sa

from portal.billing.lifecycle import SubscriptionError, SubscriptionStatus, Transition
from portal.billing.periods import IntervalUnit, Period, add_intervals
from portal.billing.proration import Proration, prorate_change, unused_credit
from portal.clock import now
from portal.extensions import db
from portal.models import (
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    LineKind,
    Payment,
    Plan,
    Subscription,
    SubscriptionEvent,
    User,
)
from portal.services import invoices, purchases, subscriptions, usage, wallet
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
    #: A free trial of the new plan starts now instead of a charge (new_period_end: the trial's end).
    trial: bool = False


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
    trialing = sub.status is SubscriptionStatus.TRIALING
    if at >= sub.current_period_end and not (old.is_free or trialing):
        # Proration would clamp to the period end and make the switch free.
        raise PlanChangeError(f"your {old.name} period ended on {sub.current_period_end:%d %b %Y} and its renewal "
                              "has not run yet; try again once it has (usually within a few minutes)")
    if new_plan.trial_days and old.is_default and not trialing and not had_trial(user.id):
        end = at + timedelta(days=new_plan.trial_days)
        return ChangePreview(sub, old, new_plan, True, at, None, at, end, (), 0, 0, 0, 0, trial=True)
    same_interval = (old.interval_unit, old.interval_count) == (new_plan.interval_unit, new_plan.interval_count)
    reset = old.is_free or not same_interval or trialing
    charged = prorate_change(0, new_plan.price_amount, sub.current_period_start, sub.current_period_end, at,
                             reset_period=reset)
    credit = 0 if trialing else credit_for_unused_time(sub, at)
    proration = Proration(credit, charged.charge, charged.charge - credit, charged.fraction, charged.period_start,
                          charged.period_end)
    start = at if reset else sub.current_period_start
    end = add_intervals(at, new_plan.interval_unit, new_plan.interval_count, 1) if reset else sub.current_period_end
    lines: list[LineDraft] = []
    if credit:
        lines.append(LineDraft(LineKind.PRORATION, f"Unused time on {old.name} until {sub.current_period_end:%d %b %Y}",
                               -credit, period_start=at, period_end=sub.current_period_end))
    what = f"{new_plan.name} from {at:%d %b %Y} to {end:%d %b %Y}"
    lines.append(LineDraft(LineKind.PLAN if reset else LineKind.PRORATION, what, proration.charge,
                           period_start=at, period_end=end))
    to_wallet = max(-proration.net, 0)
    if to_wallet:  # the invoice totals zero; the rest of the credit goes to the wallet, said in a line
        lines.append(LineDraft(LineKind.CREDIT, "Unused credit added to your wallet", to_wallet))
    due = max(proration.net, 0)
    balance = wallet.get_wallet(user.id, user.currency).balance
    wallet_part = min(balance, due)
    return ChangePreview(sub, old, new_plan, True, at, proration, start, end, tuple(lines), due,
                         to_wallet, wallet_part, due - wallet_part)


def credit_for_unused_time(sub: Subscription, at: datetime) -> int:
    """What is left at `at` of what was invoiced for the current plan's period (0 if nothing was paid)."""
    if sub.plan.is_free:
        return 0
    line = db.session.execute(
        sa.select(InvoiceLine.amount, InvoiceLine.period_start, InvoiceLine.period_end)
        .join(Invoice, Invoice.id == InvoiceLine.invoice_id)
        .where(Invoice.subscription_id == sub.id, Invoice.status == InvoiceStatus.PAID,
               InvoiceLine.kind.in_([LineKind.PLAN, LineKind.PRORATION]), InvoiceLine.amount > 0,
               InvoiceLine.period_end == sub.current_period_end)
        .order_by(Invoice.id.desc(), InvoiceLine.position.desc()).limit(1)
    ).first()
    if line is None or line.period_start is None or line.period_end <= line.period_start:
        return 0
    return unused_credit(line.amount, line.period_start, line.period_end, at)


def had_trial(user_id: int) -> bool:
    """Whether the customer has had a free trial already (one per customer)."""
    return db.session.scalar(
        sa.select(SubscriptionEvent.id).join(Subscription, Subscription.id == SubscriptionEvent.subscription_id)
        .where(Subscription.user_id == user_id,
               SubscriptionEvent.transition.in_([Transition.START_TRIAL.value, Transition.TRY_PLAN.value]))
        .limit(1)
    ) is not None


def upgrade_key(sub: Subscription, token: str) -> str:
    return f"upgrade:{sub.id}:{token}"


def earlier_upgrade(user: User, token: str) -> Invoice | None:
    """The upgrade already made with this form token (a double submit, the back button), if any."""
    sub = subscriptions.live_subscription(user.id)
    return None if sub is None else invoices.by_key(upgrade_key(sub, token))


def upgrade(user: User, new_plan: Plan, *, token: str) -> purchases.Outcome:
    """Upgrade now: invoice the prorated difference and pay it; the new plan applies once it is paid.

    `token` comes from the preview form, so a double submit resumes the same upgrade. Raises
    PurchaseInProgress while another upgrade of the subscription waits for the bank. Commits
    (the purchase path commits the pending payment before Stripe is called).
    """
    earlier = earlier_upgrade(user, token)
    if earlier is not None:
        return purchases.resume(earlier)
    live = subscriptions.live_subscription(user.id)
    if live is not None:
        # Locked before the invoice number is taken, as a renewal takes them: the other way round, an
        # upgrade and the renewal of the same subscription at the same moment would deadlock.
        subscriptions.lock(live.id)
    change = preview(user, new_plan)
    if not change.is_upgrade:
        raise PlanChangeError(f"{new_plan.name} costs less: it starts at the end of your period")
    if change.trial:
        raise PlanChangeError(f"{new_plan.name} starts with a free trial: start the trial instead")
    sub = change.subscription
    effect = PlanChange(
        subscription_id=sub.id, from_plan_id=change.old_plan.id, plan_id=new_plan.id,
        period_start=change.new_period_start, period_end=change.new_period_end,
        reset=change.new_period_start == change.effective_at, credit_to_wallet=change.credit_to_wallet,
        actor_id=user.id, priced_status=sub.status.value, priced_period_start=sub.current_period_start,
    )
    return purchases.buy(user, effect, list(change.lines), key=upgrade_key(sub, token), currency=new_plan.currency,
                         subscription_id=sub.id, period_start=change.new_period_start,
                         period_end=change.new_period_end)


@purchases.register
@dataclass(frozen=True)
class PlanChange(purchases.Effect):
    """A paid upgrade: switch the subscription to the plan and period it was priced for."""

    kind: ClassVar[str] = "plan_change"
    reason: ClassVar[str] = "upgrade"

    subscription_id: int
    from_plan_id: int
    plan_id: int
    period_start: datetime
    period_end: datetime
    reset: bool = False
    credit_to_wallet: int = 0
    actor_id: int | None = None
    #: The subscription as it was priced: status and period start (absent on older invoices).
    priced_status: str | None = None
    priced_period_start: datetime | None = None

    def describe(self) -> str:
        return "your plan upgrade"

    def receipt(self, invoice: Invoice, payment: Payment | None) -> tuple[str, dict[str, Any]]:
        plan = db.session.get(Plan, self.plan_id)
        return "subscription_activated", {"plan": plan.name, "amount": invoice.total, "currency": invoice.currency,
                                          "invoice": invoice.number, "period_end": self.period_end}

    def check(self, invoice: Invoice) -> None:
        sub = subscriptions.lock(self.subscription_id)
        if sub is None or sub.plan_id != self.from_plan_id:
            raise purchases.Stale("the subscription is no longer on the plan this upgrade was priced from")
        if self.priced_status is not None and sub.status.value != self.priced_status:
            raise purchases.Stale(f"the subscription is {sub.status.value.replace('_', ' ')} now")
        if self.priced_period_start is not None and sub.current_period_start != self.priced_period_start:
            raise purchases.Stale("the subscription moved to another period since this upgrade was priced")

    def apply(self, invoice: Invoice, payment: Payment | None) -> None:
        sub = db.session.get(Subscription, self.subscription_id)
        old_period_start = sub.current_period_start
        old_limits = {pf.feature_id: pf.limit for pf in sub.plan.features}
        changes: dict[str, Any] = {
            "plan_id": self.plan_id, "current_period_start": self.period_start,
            "current_period_end": self.period_end, "scheduled_plan_id": None, "cancel_at_period_end": False,
            "cancel_reason": None,
        }
        if self.reset:
            changes["billing_anchor"] = self.period_start
        subscriptions.transition(sub, Transition.CHANGE_PLAN, reason=f"upgrade paid by {invoice.number}",
                                 actor_id=self.actor_id,
                                 data={"from_plan_id": self.from_plan_id, "plan_id": self.plan_id,
                                       "invoice": invoice.number}, **changes)
        db.session.expire(sub, ["plan"])
        if self.reset and old_period_start != self.period_start:  # prepaid units of the cut period are not lost
            usage.carry_prepaid_units(sub.user_id, old_period_start, Period(self.period_start, self.period_end),
                                      old_limits)
        if self.credit_to_wallet:
            wallet.credit(invoice.user_id, int(self.credit_to_wallet), reason=f"Unused time credit ({invoice.number})",
                          idempotency_key=f"proration-credit:{invoice.number}", reference=f"invoice:{invoice.number}")


def start_trial(user: User, new_plan: Plan) -> Subscription:
    """Start the free trial `preview` offered: the new plan now, nothing charged until the trial ends."""
    change = preview(user, new_plan)
    if not change.trial:
        raise PlanChangeError(f"{new_plan.name} has no free trial for you")
    sub = change.subscription
    subscriptions.transition(
        sub, Transition.TRY_PLAN, reason=f"{new_plan.trial_days}-day free trial of {new_plan.name}", actor_id=user.id,
        data={"from_plan_id": change.old_plan.id, "plan_id": new_plan.id, "plan": new_plan.code},
        plan_id=new_plan.id, current_period_start=change.new_period_start, current_period_end=change.new_period_end,
        billing_anchor=change.new_period_start, trial_end=change.new_period_end, scheduled_plan_id=None,
        cancel_at_period_end=False, cancel_reason=None,
    )
    db.session.expire(sub, ["plan"])
    return sub


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
