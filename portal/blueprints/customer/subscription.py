"""Subscription: the current plan, upgrade (prorated, paid now), downgrade and cancel at period end."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from flask import abort, current_app, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import HiddenField, SelectField, TextAreaField
from wtforms.validators import DataRequired, Length, Regexp

from portal.billing.lifecycle import SubscriptionError, SubscriptionStatus
from portal.blueprints.customer import bp
from portal.blueprints.customer.payments import PaymentForm, show_outcome
from portal.clock import now
from portal.extensions import db
from portal.models import Plan, User
from portal.payments.errors import PaymentError
from portal.services import payments, purchases
from portal.services.catalog import views as catalog_views
from portal.services.subscriptions import views as subscription_views
from portal.services.subscriptions import changes as plan_changes
from portal.services.subscriptions import live_subscription, renewals

#: How long a change preview may be confirmed: after that the amounts are shown again.
PREVIEW_TTL = timedelta(minutes=30)
_TOKENS = "plan_change_tokens"
_KEEP_TOKENS = 5

CANCEL_REASONS = [
    ("", "Choose a reason…"),
    ("too_expensive", "It costs too much"),
    ("missing_features", "It lacks a feature I need"),
    ("not_using", "I don't use it enough"),
    ("switching", "I'm moving to another product"),
    ("temporary", "I only needed it for a while"),
    ("other", "Something else"),
]


try:  # WTForms 3.3 deprecates (value, label) tuples for choices
    from wtforms.fields.choices import SelectChoice
except ImportError:  # pragma: no cover - older WTForms
    def SelectChoice(value, label):  # noqa: N802
        return (value, label)


def _strip(value):
    return value.strip() if isinstance(value, str) else value


class ChangeForm(FlaskForm):
    #: One-time token from the preview: the same confirmation submitted twice is one change.
    token = HiddenField(validators=[DataRequired(), Regexp(r"^[0-9a-f]{32}$")])


class CancelForm(FlaskForm):
    reason = SelectField("Why are you cancelling?", choices=[SelectChoice(v, label) for v, label in CANCEL_REASONS],
                         validators=[DataRequired("Choose the reason closest to yours.")])
    detail = TextAreaField("Anything you would like us to know? (optional)", filters=[_strip],
                           validators=[Length(max=500, message="Keep it under 500 characters.")])


class UndoForm(FlaskForm):
    pass


def _sentence(message: str) -> str:
    message = message.strip()
    if not message:
        return message
    message = message[0].upper() + message[1:]
    return message if message.endswith((".", "!", "?")) else message + "."


def _url(endpoint: str, fallback: str) -> str:
    """A link to a page another engineer owns, even before that page exists."""
    return url_for(endpoint) if endpoint in current_app.view_functions else fallback


# --- the preview's one-time token, remembered in the session ---------------------------------


def _issue_token(plan_code: str, change: plan_changes.ChangePreview) -> str:
    token = uuid.uuid4().hex
    at = now()
    tokens = {k: v for k, v in session.get(_TOKENS, {}).items() if not _expired(v, at)}
    # What the customer was shown: confirming charges that, or shows the new amounts first.
    tokens[token] = {"plan": plan_code, "at": at.isoformat(), "from": change.old_plan.id, "due": change.amount_due}
    newest = sorted(tokens.items(), key=lambda item: item[1]["at"])[-_KEEP_TOKENS:]
    session[_TOKENS] = dict(newest)
    return token


def _expired(entry: dict, at: datetime) -> bool:
    try:
        return at - datetime.fromisoformat(entry["at"]) > PREVIEW_TTL
    except (KeyError, TypeError, ValueError):
        return True


def _fresh_token(token: str, plan_code: str) -> dict | None:
    entry = session.get(_TOKENS, {}).get(token)
    return entry if entry and entry.get("plan") == plan_code and not _expired(entry, now()) else None


def _shown_differs(entry: dict, change: plan_changes.ChangePreview) -> bool:
    return (entry.get("from"), entry.get("due")) != (change.old_plan.id, change.amount_due)


# --- pages -----------------------------------------------------------------------------------


def _user() -> User:
    return current_user._get_current_object()


def _overview(cancel_form: CancelForm, status: int = 200):
    sub = live_subscription(current_user.id)
    context = {"subscription": sub, "next_invoice": None, "open_invoices": [], "pending": None, "next_try": None}
    if sub is not None:
        context["next_invoice"] = subscription_views.next_invoice(sub)
        context["pending"] = subscription_views.pending_upgrade(sub)
        if sub.status is SubscriptionStatus.PAST_DUE:
            context["open_invoices"] = subscription_views.open_renewal_invoices(current_user.id, sub.id)
            context["next_try"] = renewals.next_try(sub)
    return render_template(
        "customer/subscription.html", section="overview", cancel_form=cancel_form, undo_form=UndoForm(),
        payment_form=PaymentForm(),
        payment_methods_url=_url("customer.payment_methods", "/payment-methods"), **context,
    ), status


@bp.get("/subscription")
@login_required
def subscription():
    """The current plan, its status, the next invoice and any scheduled change."""
    return _overview(CancelForm(formdata=None))


def _change_page(plan: Plan, *, error: str | None = None, status: int = 200):
    """The preview of changing to `plan`, with a fresh one-time token to confirm it."""
    user = _user()
    change, token = None, None
    try:
        change = plan_changes.preview(user, plan)
    except SubscriptionError as exc:
        error = _sentence(str(exc))
    if change is not None:
        token = _issue_token(plan.code, change)
    return render_template(
        "customer/subscription.html", section="change", plan=plan, change=change, error=error,
        form=ChangeForm(formdata=None, token=token), card=payments.default_method(user.id),
        payment_methods_url=_url("customer.payment_methods", "/payment-methods"),
    ), status


@bp.route("/subscription/change/<plan_code>", methods=["GET", "POST"])
@login_required
def change_plan(plan_code: str):
    """GET: what the change costs and when it starts. POST: confirm it."""
    plan = catalog_views.public_plan(plan_code)
    if plan is None:
        abort(404)
    if request.method == "GET":
        return _change_page(plan)
    form = ChangeForm()
    if not form.validate():
        abort(400, "The confirmation is missing its one-time token. Open the plan change again and confirm it there.")
    shown = _fresh_token(form.token.data, plan.code)
    if shown is None:
        return _change_page(plan, status=400,
                            error="This preview has expired. Check the amounts below and confirm again.")
    user = _user()
    try:
        earlier = plan_changes.earlier_upgrade(user, form.token.data)
        if earlier is not None:  # the same confirmation again (a double click, the back button)
            outcome = purchases.resume(earlier)
        else:
            change = plan_changes.preview(user, plan)
            if _shown_differs(shown, change):
                return _change_page(plan, status=409, error="The amounts changed since you opened this page. "
                                                            "Check them below and confirm again.")
            if not change.is_upgrade:
                sub = plan_changes.schedule_downgrade(user, plan)
                flash(f"Done: you move to {plan.name} on {sub.current_period_end:%d %b %Y}. "
                      f"You keep {change.old_plan.name} until then.", "success")
                return redirect(url_for("customer.subscription"))
            if change.trial:
                sub = plan_changes.start_trial(user, plan)
                flash(f"Your {plan.trial_days}-day free trial of {plan.name} has started. Nothing is charged "
                      f"until {sub.current_period_end:%d %b %Y}.", "success")
                return redirect(url_for("customer.subscription"))
            outcome = plan_changes.upgrade(user, plan, token=form.token.data)
    except purchases.PurchaseInProgress as busy:
        db.session.rollback()
        return _in_progress_page(plan, busy)
    except SubscriptionError as exc:
        db.session.rollback()
        sub = live_subscription(user.id)
        if sub is not None and sub.plan_id == plan.id:  # the same confirmation sent twice
            flash(f"You are on the {plan.name} plan.", "success")
            return redirect(url_for("customer.subscription"))
        return _change_page(plan, status=409, error=_sentence(str(exc)))
    except PaymentError as exc:
        db.session.rollback()
        return _change_page(plan, status=402, error=exc.message)
    return show_outcome(outcome, on_failure=lambda message: _change_page(plan, status=402, error=message))


def _in_progress_page(plan: Plan, busy: purchases.PurchaseInProgress):
    """Another upgrade of this subscription is still open: continue it or cancel it, never pay twice."""
    pending_plan = db.session.get(Plan, busy.invoice.purchase.get("plan_id")) if busy.invoice.purchase else None
    return render_template(
        "customer/subscription.html", section="in_progress", plan=plan, invoice=busy.invoice, payment=busy.payment,
        pending_plan=pending_plan, form=PaymentForm(),
    ), 409


@bp.post("/subscription/cancel")
@login_required
def cancel():
    """Stop renewing: the plan runs to the end of the period, then the Free plan applies."""
    form = CancelForm()
    if form.validate_on_submit():
        label = dict(CANCEL_REASONS)[form.reason.data]
        reason = f"{label}: {form.detail.data}" if form.detail.data else label
        try:
            sub = plan_changes.cancel_at_period_end(_user(), reason)
        except SubscriptionError as exc:
            db.session.rollback()
            form.reason.errors.append(_sentence(str(exc)))
        else:
            flash(f"Your {sub.plan.name} plan ends on {sub.current_period_end:%d %b %Y}; until then nothing changes. "
                  "Changed your mind? Choose Undo below.", "success")
            return redirect(url_for("customer.subscription"))
    return _overview(form, 422)


@bp.post("/subscription/undo")
@login_required
def undo():
    """Keep the current plan: drop a scheduled downgrade or cancellation."""
    UndoForm().validate_on_submit()  # CSRF is checked for every POST before we get here
    try:
        sub = plan_changes.undo_scheduled_change(_user())
    except SubscriptionError as exc:
        db.session.rollback()
        flash(_sentence(str(exc)), "error")
    else:
        flash(f"Done: you stay on the {sub.plan.name} plan.", "success")
    return redirect(url_for("customer.subscription"))
