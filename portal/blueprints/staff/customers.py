"""Customers: search, one customer's whole account, and the support actions on it.

Actions answer htmx with the section they changed (the result message on top) and, out of band, the
sections it touched too; without htmx they redirect to the customer's page with a flash. Bad input is
a 422 with the form's errors, and nothing is written (the service raises before writing; the view rolls
back what a refused action may have begun).
"""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import HiddenField, IntegerField, RadioField, SelectField, StringField, TextAreaField
from wtforms.validators import UUID, DataRequired, InputRequired, Length, NumberRange, Optional, ValidationError

from portal.billing.lifecycle import SubscriptionStatus
from portal.billing.money import InvalidAmount, format_money, parse_money
from portal.blueprints.staff import bp
from portal.extensions import db, htmx
from portal.models import Payment, Plan, User
from portal.services import customers_views as views
from portal.services import support
from portal.services.subscriptions import renewals
from portal.services.subscriptions import views as subscription_views
from portal.services.usage import meters
from portal.services.wallet.ledger import find_wallet

try:  # WTForms 3.3 deprecates (value, label) tuples for choices
    from wtforms.fields.choices import SelectChoice
except ImportError:  # pragma: no cover - older WTForms
    def SelectChoice(value, label):  # noqa: N802
        return (value, label)

#: Every section of a customer's page, in page order; each is a partial staff/_customer_<name>.html.
SECTIONS = ("subscription", "events", "meters", "wallet", "invoices", "payments", "emails", "errors", "actions")
#: The paged section each section's `before` cursor belongs to (the wallet pages its ledger).
_CURSOR = {"wallet": "ledger"}


def _strip(value):
    return value.strip() if isinstance(value, str) else value


def _reason(label: str = "Reason"):
    low, high = support.REASON_LENGTH
    return TextAreaField(label, filters=[_strip], validators=[
        DataRequired("Give a reason (a few words: it goes in the audit log)."),
        Length(min=low, max=high, message=f"Between {low} and {high} characters.")])


def _token():
    return HiddenField(validators=[DataRequired("The form is out of date. Reload the page."),
                                   UUID("The form is out of date. Reload the page.")])


class _MoneyForm(FlaskForm):
    """A form with an amount typed in major units ("12.50") of the customer's currency."""

    amount = StringField("Amount", filters=[_strip], validators=[DataRequired("Enter an amount.")])

    def __init__(self, currency: str, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.currency = currency
        self.minor: int | None = None

    def validate_amount(self, field) -> None:
        try:
            minor = parse_money(field.data or "", self.currency)
        except InvalidAmount as exc:
            message = str(exc)
            raise ValidationError(message[:1].upper() + message[1:] + ".") from exc
        if minor <= 0:
            raise ValidationError("Enter an amount greater than zero.")
        self.minor = minor


class CreditForm(_MoneyForm):
    reason = _reason("Reason (the customer sees it in their wallet)")
    token = _token()


class RefundForm(_MoneyForm):
    to = RadioField("Refund to", choices=[SelectChoice("card", "The card"), SelectChoice("wallet", "The wallet")],
                    validators=[InputRequired("Choose where the money goes.")])
    reason = _reason()
    token = _token()


class PlanForm(FlaskForm):
    plan = SelectField("New plan", validators=[DataRequired("Choose a plan.")])
    when = RadioField("Takes effect", default="now", choices=[
        SelectChoice("now", "Now, without a charge (the new price from the next renewal)"),
        SelectChoice("period_end", "At the end of the period")], validators=[Optional()])
    reason = _reason()


class GraceForm(FlaskForm):
    days = IntegerField("Extend by (days)", default=3, validators=[
        InputRequired("Enter a number of days."),
        NumberRange(*support.GRACE_DAYS, message="Between %(min)s and %(max)s days.")])
    #: The end of grace the form showed: a second submit of the same form changes nothing.
    expected = HiddenField(validators=[Optional()])
    reason = _reason()


class CancelForm(FlaskForm):
    when = RadioField("When", default="period_end", choices=[
        SelectChoice("period_end", "At the end of the period (undoable until then)"),
        SelectChoice("now", "Now: the free plan at once; nothing more is billed or refunded")],
        validators=[InputRequired("Choose when.")])
    reason = _reason()


# --- helpers ------------------------------------------------------------------------------------------------

def _fresh(form: _MoneyForm) -> _MoneyForm:
    """A form about to be rendered gets its token: the idempotency key of the money action it asks for."""
    form.token.data = uuid.uuid4().hex
    return form


def _customer(user_id: int) -> User:
    user = views.customer(user_id)
    if user is None:
        abort(404)
    return user


def _actor() -> User:
    return current_user._get_current_object()


def _money(minor: int, currency: str) -> str:
    return format_money(minor, currency, current_app.config["DEFAULT_LOCALE"])


class _Page:
    """What a customer's page (or some of its sections) shows: loaded section by section, on demand."""

    def __init__(self, user: User, cursors: dict[str, int | None] | None = None,
                 forms: dict[str, Any] | None = None) -> None:
        self.user = user
        self.cursors = cursors or {}
        self.forms = forms or {}
        self.open_refund: int | None = None

    def context(self, names: tuple[str, ...] | list[str]) -> dict[str, Any]:
        user = self.user
        ctx: dict[str, Any] = {"customer": user, "cursors": self.cursors}
        sub = views.current_subscription(user.id)
        ctx["subscription"] = sub
        for name in names:
            getattr(self, f"_{name}")(ctx, sub)
        return ctx

    def _subscription(self, ctx: dict[str, Any], sub) -> None:
        ctx["next_try"] = renewals.next_try(sub) if sub is not None and sub.is_live else None
        ctx["open_invoices"] = (subscription_views.open_renewal_invoices(self.user.id, sub.id)
                                if sub is not None and sub.status is SubscriptionStatus.PAST_DUE else [])
        ctx["pending_upgrade"] = subscription_views.pending_upgrade(sub) if sub is not None and sub.is_live else None
        plans = views.changeable_plans(sub)
        plan_form = self.forms.get("plan") or PlanForm(formdata=None)
        plan_form.plan.choices = [SelectChoice("", "Choose a plan…")] + [
            SelectChoice(p.code, f"{p.name} · {_money(p.price_amount, p.currency)}"
                         + ("" if p.is_public else " (hidden)")) for p in plans]
        grace_form = self.forms.get("grace") or GraceForm(formdata=None)
        if sub is not None and sub.grace_until is not None and not grace_form.expected.data:
            grace_form.expected.data = sub.grace_until.isoformat()
        ctx.update(plan_form=plan_form, grace_form=grace_form,
                   cancel_form=self.forms.get("cancel") or CancelForm(formdata=None), grace_days=support.GRACE_DAYS)

    def _events(self, ctx: dict[str, Any], sub) -> None:
        ctx["events"] = views.events_page(self.user.id, self.cursors.get("events"))
        ctx["plans"] = views.plans_by_id()

    def _meters(self, ctx: dict[str, Any], sub) -> None:
        ctx["board"] = meters.build(self.user.id)

    def _wallet(self, ctx: dict[str, Any], sub) -> None:
        account, page = views.ledger(self.user.id, self.cursors.get("ledger"))
        currency = account.currency if account is not None else self.user.currency
        ctx.update(wallet=account, ledger=page, currency=currency,
                   credit_form=self.forms.get("credit") or _fresh(CreditForm(currency, formdata=None)),
                   max_credit=_money(support.max_credit(), currency))

    def _invoices(self, ctx: dict[str, Any], sub) -> None:
        ctx["invoices"] = views.invoices_page(self.user.id, self.cursors.get("invoices"))

    def _payments(self, ctx: dict[str, Any], sub) -> None:
        page = views.payments_page(self.user.id, self.cursors.get("payments"))
        refund_forms = {}
        for row in page.rows:
            if row.refundable:
                bound = self.forms.get(("refund", row.payment.id))
                if bound is not None:
                    refund_forms[row.payment.id] = bound
                else:
                    form = _fresh(RefundForm(row.payment.currency, formdata=None))
                    form.amount.data = _plain_amount(row.refundable, row.payment.currency)
                    form.to.data = row.destinations[0]
                    refund_forms[row.payment.id] = form
        ctx.update(payments=page, refund_forms=refund_forms, open_refund=self.open_refund)

    def _emails(self, ctx: dict[str, Any], sub) -> None:
        ctx["emails"] = views.emails_page(self.user.id, self.cursors.get("emails"))

    def _errors(self, ctx: dict[str, Any], sub) -> None:
        ctx["errors"] = views.errors_page(self.user.id, self.cursors.get("errors"))

    def _actions(self, ctx: dict[str, Any], sub) -> None:
        ctx["actions"] = views.actions_page(self.user.id, self.cursors.get("actions"))


def _plain_amount(minor: int, currency: str) -> str:
    """Minor units as the amount field expects them ("12.50")."""
    from portal.billing.money import from_minor

    return str(from_minor(minor, currency))


def _render_sections(page: _Page, primary: str, also: tuple[str, ...], result: dict[str, str] | None,
                     status: int = 200):
    """The htmx answer: the primary section with the result, then the others out of band."""
    ctx = page.context((primary, *also))
    parts = [render_template(f"staff/_customer_{primary}.html", **ctx, oob=False, result=result)]
    parts += [render_template(f"staff/_customer_{name}.html", **ctx, oob=True, result=None) for name in also]
    return "\n".join(parts), status


def _full_page(page: _Page, *, status: int = 200, results: dict[str, dict[str, str]] | None = None):
    ctx = page.context(SECTIONS)
    return render_template("staff/customer.html", sections=SECTIONS, results=results or {}, **ctx), status


def _answer(user: User, primary: str, also: tuple[str, ...], done: support.Done):
    """A done (or already done) action: the sections for htmx, else a flash and back to the page."""
    result = {"kind": "success" if done.new else "warning", "text": done.message}
    if htmx:
        return _render_sections(_Page(user), primary, also, result)
    flash(done.message, result["kind"])
    return redirect(url_for("staff.customer", user_id=user.id, _anchor=f"customer-{primary}"), code=303)


def _refused(page: _Page, primary: str, message: str | None, status: int = 422):
    """Form errors (or a refusal) in place: the section for htmx, else the whole page; nothing written."""
    db.session.rollback()
    result = {"kind": "error", "text": message} if message else None
    if htmx:
        return _render_sections(page, primary, (), result, status)
    return _full_page(page, status=status, results={primary: result} if result else None)


def _attach(form: FlaskForm, error: support.SupportError) -> str | None:
    """Put a service refusal on its form field; returns the message when no field takes it."""
    field = getattr(form, error.field, None) if error.field else None
    if field is not None:
        field.errors = [*field.errors, error.message]
        return None
    return error.message


# --- pages --------------------------------------------------------------------------------------------------

@bp.get("/customers")
def customers():
    """Search customers by the start of their email or name; keyset pages, no counting."""
    text = request.args.get("q", "")
    before = request.args.get("before", type=int)
    after = request.args.get("after") or None
    page = views.search(text, before=before, after=after)
    older = None
    if page.next_before is not None:
        older = url_for("staff.customers", before=page.next_before)
    elif page.next_after is not None:
        older = url_for("staff.customers", q=page.query, after=page.next_after)
    first = url_for("staff.customers", q=page.query or None) if (before or after) else None
    ctx = {"page": page, "q": text.strip(), "more": older, "first": first}
    if htmx and htmx.target == "customer-results":
        return render_template("staff/_customer_results.html", **ctx)
    return render_template("staff/customers.html", **ctx)


@bp.get("/customers/<int:user_id>")
def customer(user_id: int):
    """One customer's whole account: subscription and events, meters, wallet, invoices, payments, emails,
    errors and what staff did; the actions beside what they act on."""
    user = _customer(user_id)
    cursors = {name: request.args.get(f"{name}_before", type=int) for name in views.PAGED_SECTIONS}
    return _full_page(_Page(user, cursors))


@bp.get("/customers/<int:user_id>/sections/<name>")
def customer_section(user_id: int, name: str):
    """One section of the customer's page (htmx paging and refreshes); `before` pages it."""
    user = _customer(user_id)
    if name not in SECTIONS:
        abort(404)
    before = request.args.get("before", type=int)
    cursor = _CURSOR.get(name, name)
    if not htmx:
        args = {f"{cursor}_before": before} if before else {}
        return redirect(url_for("staff.customer", user_id=user.id, _anchor=f"customer-{name}", **args))
    ctx = _Page(user, {cursor: before}).context((name,))
    return render_template(f"staff/_customer_{name}.html", **ctx, oob=False, result=None)


# --- actions ------------------------------------------------------------------------------------------------

@bp.post("/customers/<int:user_id>/credit")
def customer_credit(user_id: int):
    """Grant credit to the wallet (once per form: its token is the ledger entry's key)."""
    user = _customer(user_id)
    account = find_wallet(user.id)
    form = CreditForm(account.currency if account is not None else user.currency)
    page = _Page(user, forms={"credit": form})
    if not form.validate_on_submit():
        return _refused(page, "wallet", None)
    try:
        done = support.grant_credit(user, form.minor, reason=form.reason.data, token=form.token.data, actor=_actor())
    except support.SupportError as error:
        return _refused(page, "wallet", _attach(form, error))
    return _answer(user, "wallet", ("actions",), done)


@bp.post("/customers/<int:user_id>/payments/<int:payment_id>/refund")
def customer_refund(user_id: int, payment_id: int):
    """Refund a payment to the card (through Stripe, after the commit) or to the wallet; once per form."""
    user = _customer(user_id)
    payment = db.session.get(Payment, payment_id)
    if payment is None or payment.user_id != user.id:
        abort(404)
    form = RefundForm(payment.currency)
    page = _Page(user, forms={("refund", payment.id): form})
    page.open_refund = payment.id
    if not form.validate_on_submit():
        return _refused(page, "payments", None)
    try:
        done = support.refund(user, payment, form.minor, to=form.to.data, reason=form.reason.data,
                              token=form.token.data, actor=_actor())
    except support.SupportError as error:
        return _refused(page, "payments", _attach(form, error))
    return _answer(user, "payments", ("wallet", "emails", "actions"), done)


@bp.post("/customers/<int:user_id>/plan")
def customer_plan(user_id: int):
    """Change the customer's plan now (no charge) or at the end of the period."""
    user = _customer(user_id)
    form = PlanForm()
    page = _Page(user, forms={"plan": form})
    form.plan.choices = [SelectChoice(p.code, p.name) for p in views.changeable_plans(
        views.current_subscription(user.id))]
    if not form.validate_on_submit():
        return _refused(page, "subscription", None)
    plan = db.session.scalar(sa.select(Plan).where(Plan.code == form.plan.data))
    try:
        done = support.change_plan(user, plan, when=form.when.data or "now", reason=form.reason.data,
                                   actor=_actor())
    except support.SupportError as error:
        return _refused(page, "subscription", _attach(form, error))
    return _answer(user, "subscription", ("events", "meters", "actions"), done)


@bp.post("/customers/<int:user_id>/grace")
def customer_grace(user_id: int):
    """Move a past-due subscription's end of grace later by 1 to 14 days."""
    user = _customer(user_id)
    form = GraceForm()
    page = _Page(user, forms={"grace": form})
    if not form.validate_on_submit():
        return _refused(page, "subscription", None)
    expected = None
    if form.expected.data:
        try:
            expected = datetime.fromisoformat(form.expected.data)
        except ValueError:
            form.expected.data = ""
            return _refused(page, "subscription", "The form is out of date. Reload the page.")
    try:
        done = support.extend_grace(user, form.days.data, reason=form.reason.data, actor=_actor(), expected=expected)
    except support.SupportError as error:
        return _refused(page, "subscription", _attach(form, error))
    return _answer(user, "subscription", ("events", "errors", "actions"), done)


@bp.post("/customers/<int:user_id>/cancel")
def customer_cancel(user_id: int):
    """Cancel at the end of the period, or now (back to the free plan at once)."""
    user = _customer(user_id)
    form = CancelForm()
    page = _Page(user, forms={"cancel": form})
    if not form.validate_on_submit():
        return _refused(page, "subscription", None)
    try:
        done = support.cancel(user, when=form.when.data, reason=form.reason.data, actor=_actor())
    except support.SupportError as error:
        return _refused(page, "subscription", _attach(form, error))
    return _answer(user, "subscription", ("events", "meters", "wallet", "invoices", "emails", "errors", "actions"),
                   done)
