"""What support staff do to a customer's account: grant credit, refund a payment (to the card or to the
wallet), change the plan, extend the grace period, cancel.

Each action writes exactly one audit row (target: the customer; the objects it touched in `data`)
and flushes; the request commits. An action refused (bad input, the account not in a state that
allows it) raises SupportError, and the view rolls back whatever it had begun (a wallet opened on the
way), so nothing of it is written; the view shows the message.

Money actions are idempotent by the token of the form that asked for them (a uuid4 rendered in a
hidden field): the ledger entry's or the refund's idempotency key is built from it and backed by a
unique constraint, so a double click or a resubmitted form does it once and the second answer says
it was already done (`Done.new` False; no second audit row, since nothing was done). Refunds lock
the payment row first, so two refunds of one payment (card and wallet together) never give back more
than it was: amount − amount_refunded − card refunds still waiting for Stripe.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import current_app

from portal.billing.lifecycle import IllegalTransition, SubscriptionError, SubscriptionStatus, Transition
from portal.billing.money import format_money
from portal.clock import now
from portal.extensions import db
from portal.models import (
    EntryKind,
    Invoice,
    InvoiceStatus,
    OperationError,
    Payment,
    PaymentPurpose,
    Plan,
    Refund,
    Subscription,
    SubscriptionEvent,
    User,
    WalletEntry,
)
from portal.services import notifications, outbox, payments, purchases, retries, subscriptions, wallet
from portal.services.audit import audit
from portal.services.customers_views import pending_refunds, refund_destinations
from portal.services.subscriptions import renewals

#: The largest credit one action may grant, in minor units, unless STAFF_MAX_CREDIT says otherwise.
DEFAULT_MAX_CREDIT = 100_000
#: How far one action may move a grace period.
GRACE_DAYS = (1, 14)
#: Reasons are required and kept short enough to read in the audit log.
REASON_LENGTH = (3, 500)


class SupportError(Exception):
    """An action refused; the message is fit to show staff, `field` names the form field at fault."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message, self.field = message, field


@dataclass(frozen=True)
class Done:
    """What an action did, in words for the page."""

    message: str
    #: False when the same form had been submitted before: nothing was done this time.
    new: bool = True


def _money(minor: int, currency: str) -> str:
    return format_money(minor, currency, current_app.config["DEFAULT_LOCALE"])


def check_reason(reason: str | None) -> str:
    """The reason, trimmed; SupportError when it is missing or too long."""
    text = (reason or "").strip()
    low, high = REASON_LENGTH
    if len(text) < low:
        raise SupportError("Give a reason (a few words: it goes in the audit log).", "reason")
    if len(text) > high:
        raise SupportError(f"Keep the reason under {high} characters.", "reason")
    return text


def max_credit() -> int:
    return int(current_app.config.get("STAFF_MAX_CREDIT", DEFAULT_MAX_CREDIT))


# --- credit ---------------------------------------------------------------------------------------------

def credit_key(customer: User, token: str) -> str:
    return f"support-credit:{customer.id}:{token}"


def grant_credit(customer: User, amount: int, *, reason: str, token: str, actor: User) -> Done:
    """Add `amount` minor units to the customer's wallet as a CREDIT entry (shown with `reason`)."""
    reason = check_reason(reason)
    key = credit_key(customer, token)
    account = wallet.get_wallet(customer.id, customer.currency)
    earlier = _entry(key)
    if earlier is not None:
        if earlier.amount != amount or earlier.wallet_id != account.id:
            raise SupportError("This form was already used for another credit. Reload the page to start again.")
        return Done(f"Already done: {_money(earlier.amount, earlier.currency)} was credited on "
                    f"{earlier.created_at:%d %b %Y at %H:%M UTC}; nothing was added this time.", new=False)
    if amount <= 0:
        raise SupportError("Enter an amount greater than zero.", "amount")
    if amount > max_credit():
        raise SupportError(f"One credit may be at most {_money(max_credit(), account.currency)}.", "amount")
    try:
        entry = wallet.credit(customer.id, amount, kind=EntryKind.CREDIT, reason=reason[:255],
                              idempotency_key=key, actor_id=actor.id)
    except wallet.IdempotencyConflict as exc:
        raise SupportError("This form was already used for another credit. Reload the page.") from exc
    audit("support.credit", customer, actor_id=actor.id, data={
        "amount": amount, "currency": entry.currency, "reason": reason, "entry_id": entry.id, "key": key})
    return Done(f"{_money(amount, entry.currency)} credited to the wallet; the balance is now "
                f"{_money(entry.balance_after, entry.currency)}.")


def _entry(key: str) -> WalletEntry | None:
    return db.session.scalar(sa.select(WalletEntry).where(WalletEntry.idempotency_key == key))


# --- refunds --------------------------------------------------------------------------------------------

DESTINATIONS = ("card", "wallet")


def card_refund_why(token: str) -> str:
    """The `why` of a staff card refund: its Refund key is refund:payment:<id>:support:<token>."""
    return f"support:{token}"


def wallet_refund_key(payment: Payment, token: str) -> str:
    return f"support-refund:payment:{payment.id}:{token}"


def lock_payment(payment_id: int) -> Payment:
    """The payment, re-read and locked until the transaction ends (FOR UPDATE; SQLite's writer lock)."""
    return db.session.execute(
        sa.select(Payment).where(Payment.id == payment_id).with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one()


def refundable(payment: Payment) -> int:
    """What may still be given back: the amount less what was refunded and card refunds still pending."""
    return max(payment.amount - payment.amount_refunded - pending_refunds(payment.id), 0)


def _what(payment: Payment) -> str:
    number = db.session.scalar(sa.select(Invoice.number).where(Invoice.id == payment.invoice_id)) \
        if payment.invoice_id else None
    return number or payment.description or f"payment {payment.id}"


def refund(customer: User, payment: Payment, amount: int, *, to: str, reason: str, token: str,
           actor: User) -> Done:
    """Give back `amount` of one of the customer's payments: to the card (a pending Refund, sent to Stripe
    by a job after the commit) or to the wallet (a REFUND ledger entry, counted on the payment at once)."""
    if payment.user_id != customer.id:
        raise LookupError("not this customer's payment")
    if to not in DESTINATIONS:
        raise SupportError("Choose where the money goes: the card or the wallet.", "to")
    reason = check_reason(reason)
    payment = lock_payment(payment.id)  # refunds of one payment take turns from here on
    earlier = _earlier_refund(payment, to, token)
    if earlier is not None:
        earlier_amount, at = earlier
        if earlier_amount != amount:
            raise SupportError("This form was already used for another refund of this payment. Reload the page.")
        return Done(f"Already done: this refund of {_money(amount, payment.currency)} to the {to} was made on "
                    f"{at:%d %b %Y at %H:%M UTC}; nothing was refunded this time.", new=False)
    allowed = refund_destinations(payment)
    if not allowed:
        raise SupportError(f"A {payment.status.value.replace('_', ' ')} payment cannot be refunded.")
    if to not in allowed:
        why = ("a wallet payment goes back to the wallet" if payment.provider == "wallet"
               else "a top-up is in the wallet already: it goes back to the card")
        raise SupportError(f"Not to the {to}: {why}.", "to")
    if amount <= 0:
        raise SupportError("Enter an amount greater than zero.", "amount")
    left = refundable(payment)
    if amount > left:
        raise SupportError(
            f"At most {_money(left, payment.currency)} of this payment can still be refunded "
            f"({_money(payment.amount, payment.currency)} paid, {_money(payment.amount - left, payment.currency)} "
            "refunded or being refunded).", "amount")
    if to == "card":
        return _refund_to_card(customer, payment, amount, reason, token, actor)
    return _refund_to_wallet(customer, payment, amount, reason, token, actor)


def _earlier_refund(payment: Payment, to: str, token: str) -> tuple[int, datetime] | None:
    if to == "card":
        found = db.session.scalar(sa.select(Refund).where(
            Refund.idempotency_key == payments.refund_key(payment, card_refund_why(token))))
        return None if found is None else (found.amount, found.created_at)
    entry = _entry(wallet_refund_key(payment, token))
    return None if entry is None else (entry.amount, entry.created_at)


def _refund_to_card(customer: User, payment: Payment, amount: int, reason: str, token: str, actor: User) -> Done:
    if not payment.stripe_payment_intent_id:
        raise SupportError("This card payment has no Stripe charge to refund (it never reached Stripe).")
    what = _what(payment)
    taken_back = None
    if payment.purpose is PaymentPurpose.TOPUP:
        # The top-up's money is in the wallet: it leaves the wallet now, with the same key as the refund,
        # so the customer cannot spend it meanwhile and Stripe's charge.refunded event (which takes back
        # what no negative REFUND entry on "payment:<id>" took yet) finds nothing more to take.
        try:
            taken_back = wallet.debit(
                customer.id, amount, kind=EntryKind.REFUND, reason=f"Top-up refunded to the card ({what})",
                idempotency_key=f"{payments.refund_key(payment, card_refund_why(token))}:wallet",
                actor_id=actor.id, reference=f"payment:{payment.id}")
        except wallet.InsufficientFunds as exc:
            raise SupportError(
                f"The wallet holds only {_money(exc.balance, payment.currency)} of this top-up now; refund at most "
                "that to the card.", "amount") from exc
    record, _ = payments.request_refund(payment, amount, why=card_refund_why(token), reason=reason,
                                        actor_id=actor.id)
    outbox.enqueue_after_commit("worker.payments.refund_payment", record.id, queue_name="billing")
    data: dict[str, Any] = {"payment_id": payment.id, "refund_id": record.id, "to": "card", "amount": amount,
                            "currency": payment.currency, "reason": reason, "key": record.idempotency_key}
    if taken_back is not None:
        data["entry_id"] = taken_back.id
    audit("support.refund", customer, actor_id=actor.id, data=data)
    return Done(f"Refund of {_money(amount, payment.currency)} to the card asked of Stripe ({what}); it shows as "
                "pending until Stripe confirms it.")


def _refund_to_wallet(customer: User, payment: Payment, amount: int, reason: str, token: str, actor: User) -> Done:
    account = wallet.get_wallet(customer.id, customer.currency)
    if account.currency != payment.currency:
        raise SupportError(f"The wallet is in {account.currency}, the payment in {payment.currency}: refund it to "
                           "the card instead.", "to")
    what = _what(payment)
    key = wallet_refund_key(payment, token)
    try:
        entry = wallet.credit(customer.id, amount, kind=EntryKind.REFUND, reason=f"Refund of {what}"[:255],
                              idempotency_key=key, actor_id=actor.id, reference=f"payment:{payment.id}")
    except wallet.IdempotencyConflict as exc:
        raise SupportError("This form was already used for another refund. Reload the page.") from exc
    before = payment.amount_refunded
    payments.add_refunded(payment, amount)  # guarded; the lock above makes it certain
    if payment.amount_refunded != before + amount:
        raise SupportError("The payment changed meanwhile; reload the page and try again.")
    notifications.notify(customer, "refund_issued", {"amount": amount, "currency": payment.currency,
                                                     "to": "your wallet", "what": what}, key=f"refund_issued:{key}")
    audit("support.refund", customer, actor_id=actor.id, data={
        "payment_id": payment.id, "entry_id": entry.id, "to": "wallet", "amount": amount,
        "currency": payment.currency, "reason": reason, "key": key})
    return Done(f"{_money(amount, payment.currency)} of {what} refunded to the wallet; the balance is now "
                f"{_money(entry.balance_after, entry.currency)}.")


# --- the subscription -----------------------------------------------------------------------------------

WHEN_PLAN = ("now", "period_end")
WHEN_CANCEL = ("now", "period_end")


def _live(customer: User, *, lock: bool = True) -> Subscription:
    """The customer's live subscription, locked (a renewal job working on it finishes first) unless asked
    not to: cancelling now locks its unpaid invoices first, in the purchase path's order."""
    sub = subscriptions.live_subscription(customer.id)
    if sub is None:
        raise SupportError("The customer has no live subscription.")
    if not lock:
        return sub
    locked = subscriptions.lock(sub.id)
    if locked is None or not locked.is_live:
        raise SupportError("The subscription changed meanwhile; reload the page.")
    db.session.expire(locked, ["plan", "scheduled_plan"])
    return locked


def _note(sub: Subscription, what: str, reason: str, actor: User, data: dict[str, Any]) -> SubscriptionEvent:
    """A subscription event that keeps the status (as services.subscriptions.changes writes them)."""
    event = SubscriptionEvent(subscription_id=sub.id, transition=what, from_status=sub.status, to_status=sub.status,
                              reason=reason, actor_id=actor.id, data=data, at=now())
    db.session.add(event)
    db.session.flush()
    return event


def change_plan(customer: User, plan: Plan, *, when: str, reason: str, actor: User) -> Done:
    """Move the customer to `plan`: now (no charge, no proration: the current period is kept and the new
    plan's price applies from the next renewal) or at the end of the period (as a scheduled downgrade
    does; whatever was scheduled before is replaced)."""
    if when not in WHEN_PLAN:
        raise SupportError("Choose when the change takes effect.", "when")
    reason = check_reason(reason)
    sub = _live(customer)
    if plan.is_archived:
        raise SupportError(f"{plan.name} is archived.", "plan")
    if plan.is_default:
        raise SupportError(f"To move the customer to {plan.name}, cancel the subscription.", "plan")
    if plan.currency != sub.plan.currency:
        raise SupportError(f"{plan.name} is in {plan.currency}, the subscription in {sub.plan.currency}.", "plan")
    if sub.status is SubscriptionStatus.PAST_DUE:
        raise SupportError("The subscription is past due: extend the grace period, or cancel it, or let the "
                           "customer pay first.")
    old = sub.plan
    data = {"from_plan_id": old.id, "plan_id": plan.id, "by": "support"}
    if when == "now":
        if plan.id == sub.plan_id:
            raise SupportError(f"The customer is on {plan.name} already.", "plan")
        try:
            event = subscriptions.transition(
                sub, Transition.CHANGE_PLAN, reason=f"changed by support: {reason}", actor_id=actor.id, data=data,
                plan_id=plan.id, scheduled_plan_id=None, cancel_at_period_end=False, cancel_reason=None)
        except (IllegalTransition, subscriptions.ConcurrentChange) as exc:
            raise SupportError(f"Not possible now: {exc}.") from exc
        db.session.expire(sub, ["plan", "scheduled_plan"])
        message = (f"Moved from {old.name} to {plan.name} now, without a charge; {plan.name}'s price applies from "
                   f"the renewal on {sub.current_period_end:%d %b %Y}.")
    else:
        if plan.id == sub.scheduled_plan_id and not sub.cancel_at_period_end:
            raise SupportError(f"{plan.name} is already scheduled for the end of the period.", "plan")
        if plan.id == sub.plan_id:
            if not (sub.scheduled_plan_id or sub.cancel_at_period_end):
                raise SupportError(f"The customer is on {plan.name} already.", "plan")
            sub.scheduled_plan_id, sub.cancel_at_period_end, sub.cancel_reason = None, False, None
            event = _note(sub, "undo_scheduled_change", f"kept {plan.name} (support): {reason}", actor, data)
            message = f"The scheduled change is dropped: the customer stays on {plan.name}."
        else:
            sub.scheduled_plan_id, sub.cancel_at_period_end, sub.cancel_reason = plan.id, False, None
            event = _note(sub, "schedule_plan_change", f"to {plan.name} at period end (support): {reason}", actor,
                          data)
            message = f"{plan.name} starts with the renewal on {sub.current_period_end:%d %b %Y}, at its price then."
        db.session.flush()
        db.session.expire(sub, ["scheduled_plan"])
    audit("support.change_plan", customer, actor_id=actor.id, data={
        "subscription_id": sub.id, "event_id": event.id, "when": when, "from_plan": old.code, "plan": plan.code,
        "reason": reason})
    return Done(message)


def extend_grace(customer: User, days: int, *, reason: str, actor: User,
                 expected: datetime | None = None) -> Done:
    """Move a past-due subscription's end of grace `days` later (from now, if it has passed already).

    `expected`: the end of grace the form showed; when it moved since (a double submit), nothing is done.
    """
    reason = check_reason(reason)
    low, high = GRACE_DAYS
    if not low <= days <= high:
        raise SupportError(f"Extend by {low} to {high} days.", "days")
    sub = _live(customer)
    if sub.status is not SubscriptionStatus.PAST_DUE or sub.grace_until is None:
        raise SupportError("Only a past-due subscription has a grace period to extend.")
    old = sub.grace_until
    if expected is not None and expected != old:
        return Done(f"Already changed: the grace period ends on {old:%d %b %Y at %H:%M UTC} now (it was "
                    f"{expected:%d %b %Y, %H:%M} on the form); nothing was changed this time.", new=False)
    new = max(old, now()) + timedelta(days=days)
    moved = db.session.execute(
        sa.update(Subscription)
        .where(Subscription.id == sub.id, Subscription.status == SubscriptionStatus.PAST_DUE,
               Subscription.grace_until == old)
        .values(grace_until=new, updated_at=now())
        .execution_options(synchronize_session=False)
    ).rowcount
    if moved != 1:
        raise SupportError("The subscription changed meanwhile; reload the page.")
    sub.grace_until = new
    _later_deadline(sub, new)
    event = _note(sub, "extend_grace", f"grace extended by {days} day{'s' if days != 1 else ''} (support): {reason}",
                  actor, {"grace_from": old.isoformat(), "grace_until": new.isoformat(), "days": days})
    audit("support.extend_grace", customer, actor_id=actor.id, data={
        "subscription_id": sub.id, "event_id": event.id, "days": days, "from": old.isoformat(),
        "to": new.isoformat(), "reason": reason})
    return Done(f"The grace period now ends on {new:%d %b %Y at %H:%M UTC} (was {old:%d %b %Y, %H:%M}).")


def _later_deadline(sub: Subscription, grace_until: datetime) -> None:
    """The renewal's retries were planned to land before grace ended: let them use the new end."""
    for error in db.session.scalars(sa.select(OperationError).where(
            OperationError.subscription_id == sub.id, OperationError.status.in_(retries.OPEN))):
        if (error.context or {}).get("retry_before"):
            error.context = {**error.context, "retry_before": grace_until.isoformat()}
    db.session.flush()


def cancel(customer: User, *, when: str, reason: str, actor: User) -> Done:
    """Cancel: at period end (undoable; back to Free then) or now (canceled through the transition table,
    unpaid renewal invoices written off, the Free plan restored). Cancelling now bills nothing more: the
    current period's use is not invoiced, unused time is not refunded (refund a payment for that)."""
    if when not in WHEN_CANCEL:
        raise SupportError("Choose when the cancellation takes effect.", "when")
    reason = check_reason(reason)
    sub = _live(customer, lock=when == "period_end")
    plan = sub.plan
    if plan.is_default:
        raise SupportError(f"The customer is on {plan.name}: there is nothing to cancel.")
    if when == "period_end":
        if sub.status is SubscriptionStatus.PAST_DUE:
            raise SupportError("A past-due subscription has no period end to wait for: cancel it now, or extend "
                               "the grace period.", "when")
        if sub.cancel_at_period_end:
            raise SupportError(f"It is already set to end on {sub.current_period_end:%d %b %Y}.", "when")
        sub.cancel_at_period_end, sub.cancel_reason, sub.scheduled_plan_id = True, reason, None
        event = _note(sub, "schedule_cancel", f"cancelled by support: {reason}", actor, {})
        db.session.expire(sub, ["scheduled_plan"])
        message = (f"{plan.name} ends on {sub.current_period_end:%d %b %Y}; the customer is on the free plan "
                   "after that (undo by scheduling the current plan again).")
        data: dict[str, Any] = {"subscription_id": sub.id, "event_id": event.id}
    else:
        data = _cancel_now(customer, sub, plan, reason, actor)
        message = f"{plan.name} is cancelled as of now; the customer is on the free plan."
    audit("support.cancel", customer, actor_id=actor.id, data={**data, "when": when, "plan": plan.code,
                                                               "reason": reason})
    return Done(message)


def _cancel_now(customer: User, sub: Subscription, plan: Plan, reason: str, actor: User) -> dict[str, Any]:
    unpaid = list(db.session.scalars(sa.select(Invoice).where(
        Invoice.subscription_id == sub.id, Invoice.reason == "renewal", Invoice.status == InvoiceStatus.OPEN)))
    if any(payments.open_card_payment(invoice.id) is not None for invoice in unpaid):
        raise SupportError("A card payment for this subscription is with the bank right now; try again in a few "
                           "minutes.")
    written_off = []
    for invoice in unpaid:  # what the wallet paid toward them goes back; as expiry does
        if purchases.write_off(invoice, f"cancelled by support: {reason}"[:255]):
            written_off.append(invoice.number)
        period_start = (invoice.purchase or {}).get("period_start")
        if period_start:
            retries.give_up(renewals.renewal_key(sub.id, datetime.fromisoformat(period_start)))
    sub = subscriptions.lock(sub.id)
    if sub is None or not sub.is_live:
        raise SupportError("The subscription changed meanwhile; reload the page.")
    try:
        event = subscriptions.transition(sub, Transition.CANCEL, reason=f"cancelled by support: {reason}",
                                         actor_id=actor.id, data={"by": "support"}, ended_at=now(), grace_until=None,
                                         renewal_lease_until=None, cancel_at_period_end=False,
                                         scheduled_plan_id=None)
    except (SubscriptionError, subscriptions.ConcurrentChange) as exc:
        raise SupportError(f"Not possible now: {exc}.") from exc
    free = renewals.restore_free_plan(customer, plan, reason=f"{plan.name} cancelled by support")
    return {"subscription_id": sub.id, "event_id": event.id, "free_subscription_id": free.id,
            "written_off": written_off}
