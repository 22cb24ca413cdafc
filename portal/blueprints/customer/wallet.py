"""Wallet: the balance, top-ups by card, and the ledger (filtered, keyset-paged, CSV)."""
from __future__ import annotations

import uuid

from flask import Response, abort, current_app, flash, redirect, render_template, request, stream_with_context, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import DateField, HiddenField, IntegerField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, NumberRange, Optional, UUID, ValidationError
from wtforms.widgets import HiddenInput

from portal.billing.money import InvalidAmount, format_money, parse_money
from portal.blueprints.customer import bp
from portal.blueprints.customer.payment_methods import stripe_js_url
from portal.clock import now
from portal.extensions import htmx
from portal.models import EntryKind, PaymentStatus
from portal.services import payments, purchases
from portal.services.audit import audit
from portal.services.wallet import ledger
from portal.services.wallet import topups

KIND_LABELS = {
    EntryKind.TOPUP: "Top-up",
    EntryKind.PAYMENT: "Payment",
    EntryKind.REFUND: "Refund",
    EntryKind.CREDIT: "Credit",
    EntryKind.ADJUSTMENT: "Adjustment",
}


def _strip(value):
    return value.strip() if isinstance(value, str) else value


class TopUpForm(FlaskForm):
    amount = StringField("Amount", filters=[_strip], validators=[DataRequired("Enter an amount to add.")])
    #: One per rendered form: the same submission twice is one top-up.
    token = HiddenField(validators=[DataRequired(), UUID("The form is out of date. Reload the page.")])

    def __init__(self, currency: str, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.currency = currency
        self.minor: int | None = None

    def validate_amount(self, field) -> None:
        cfg = current_app.config
        try:
            minor = parse_money(field.data or "", self.currency)
        except InvalidAmount as exc:
            message = str(exc)
            raise ValidationError(message[:1].upper() + message[1:] + ".") from exc
        lowest, highest = cfg["WALLET_MIN_TOPUP"], cfg["WALLET_MAX_TOPUP"]
        if minor <= 0:
            raise ValidationError("Enter an amount greater than zero.")
        if minor < lowest:
            raise ValidationError(f"The smallest top-up is {self._show(lowest)}.")
        if minor > highest:
            raise ValidationError(f"The largest top-up is {self._show(highest)}.")
        self.minor = minor

    def _show(self, minor: int) -> str:
        return format_money(minor, self.currency, current_app.config["DEFAULT_LOCALE"])


class LedgerFilterForm(FlaskForm):
    """The ledger's query string: type, date range (UTC days) and the keyset cursor."""

    class Meta:
        csrf = False  # a GET form: it reads, never writes

    kind = SelectField("Type", default="", choices=[SelectChoice("", "All types")]
                       + [SelectChoice(k.value, v) for k, v in KIND_LABELS.items()])
    start = DateField("From", name="from", validators=[Optional()])
    end = DateField("To", name="to", validators=[Optional()])
    before = IntegerField(widget=HiddenInput(), validators=[Optional(), NumberRange(min=1)])
    after = IntegerField(widget=HiddenInput(), validators=[Optional(), NumberRange(min=1)])

    def validate_end(self, field) -> None:
        if field.data and self.start.data and field.data < self.start.data:
            raise ValidationError("The end date is before the start date.")

    def validate_after(self, field) -> None:
        if field.data and self.before.data:
            raise ValidationError("Page either before or after an entry, not both.")

    def to_filter(self) -> ledger.LedgerFilter:
        return ledger.LedgerFilter(EntryKind(self.kind.data) if self.kind.data else None,
                                   self.start.data, self.end.data)


# --- the page and its ledger partial ---------------------------------------------------------------

def _currency(account) -> str:
    return account.currency if account is not None else current_user.currency


def _ledger_context() -> tuple[dict, bool]:
    """Parse the filters and read one page of the ledger; (template context, whether the filters were valid)."""
    form = LedgerFilterForm(formdata=request.args)
    valid = form.validate()
    account = ledger.find_wallet(current_user.id)
    flt = form.to_filter() if valid else ledger.LedgerFilter()
    page = ledger.LedgerPage()
    if valid and account is not None:
        page = ledger.ledger_page(account.id, flt, before=form.before.data, after=form.after.data)
    args = flt.as_args()

    def link(endpoint: str, **cursor) -> str:
        return url_for(endpoint, **args, **cursor)

    links = {
        "older": page.older_than and link("customer.wallet", before=page.older_than),
        "older_partial": page.older_than and link("customer.wallet_ledger", before=page.older_than),
        "newer": page.newer_than and link("customer.wallet", after=page.newer_than),
        "newer_partial": page.newer_than and link("customer.wallet_ledger", after=page.newer_than),
        "newest": link("customer.wallet"),
        "newest_partial": link("customer.wallet_ledger"),
        "csv": link("customer.wallet_ledger_csv"),
        "reset": url_for("customer.wallet"),
    }
    paged = bool(form.before.data or form.after.data)
    context = dict(filter_form=form, filter_valid=valid, ledger_filter=flt, page=page, links=links, paged=paged,
                   account=account, currency=_currency(account), kind_labels=KIND_LABELS)
    return context, valid


def _render_wallet(topup_form: TopUpForm | None = None, *, status: int = 200, topup_error: str | None = None):
    context, valid = _ledger_context()
    currency = context["currency"]
    if topup_form is None:
        topup_form = TopUpForm(currency, token=str(uuid.uuid4()))
    cfg = current_app.config
    return render_template(
        "customer/wallet.html", topup_form=topup_form, topup_error=topup_error,
        card=payments.default_method(current_user.id),
        min_topup=cfg["WALLET_MIN_TOPUP"], max_topup=cfg["WALLET_MAX_TOPUP"], **context,
    ), status if valid else 422


@bp.get("/wallet", endpoint="wallet")
@login_required
def wallet_page():
    """Balance, top-up form and the ledger."""
    return _render_wallet()


@bp.get("/wallet/ledger")
@login_required
def wallet_ledger():
    """The ledger table alone (htmx swaps it in when the filters or the page change)."""
    context, valid = _ledger_context()
    response = current_app.make_response((render_template("customer/_ledger.html", **context), 200 if valid else 422))
    if htmx:
        # The address bar shows the full page's URL, so a reload or a shared link works without htmx.
        cursor = {key: request.args[key] for key in ("before", "after") if valid and request.args.get(key)}
        response.headers["HX-Push-Url"] = url_for("customer.wallet", **context["ledger_filter"].as_args(), **cursor)
    return response


@bp.get("/wallet/ledger.csv")
@login_required
def wallet_ledger_csv():
    """The filtered ledger as CSV, streamed in batches."""
    form = LedgerFilterForm(formdata=request.args)
    if not form.validate():
        problems = "; ".join(f"{form[name].label.text}: {' '.join(errors)}" for name, errors in form.errors.items())
        return Response(f"Fix the filter: {problems}\n", status=422, mimetype="text/plain")
    account = ledger.find_wallet(current_user.id)
    flt = form.to_filter()
    if account is None:
        chunks = iter([",".join(ledger.CSV_COLUMNS) + "\r\n"])
    else:
        chunks = stream_with_context(ledger.csv_chunks(account.id, flt))
    filename = f"wallet-ledger-{now():%Y%m%d}.csv"
    return Response(chunks, mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"})


@bp.get("/wallet/entries/<int:entry_id>")
@login_required
def wallet_entry(entry_id: int):
    """One ledger entry in detail."""
    entry = ledger.owned_entry(current_user.id, entry_id)
    if entry is None:
        abort(404)
    payment = None
    if entry.reference and entry.reference.startswith("payment:") and entry.reference[8:].isdigit():
        payment = ledger.owned_topup(current_user.id, int(entry.reference[8:]))
    return render_template("customer/wallet_entry.html", entry=entry, payment=payment, kind_labels=KIND_LABELS)


# --- top-ups by card -------------------------------------------------------------------------------

@bp.post("/wallet/topups")
@login_required
def wallet_topup():
    """Charge the default card and credit the wallet once the payment succeeds."""
    user = current_user._get_current_object()
    account = ledger.find_wallet(user.id)
    form = TopUpForm(_currency(account))
    if not form.validate_on_submit():
        return _render_wallet(form, status=422)
    card = payments.default_method(user.id)
    if card is None:
        return _render_wallet(form, status=422, topup_error="no_card")
    already = topups.card_payment(user.id, form.token.data)
    if already is not None:  # the same form sent twice: show what the first one did
        return redirect(url_for("customer.wallet_topup_status", payment_id=already.id), 303)
    outcome = topups.buy(user, form.minor, form.currency, form.token.data,
                         card_label=f"{card.brand.title()} •••• {card.last4}")
    payment = outcome.payment
    audit("wallet.topup", payment, actor_id=user.id, data={"amount": form.minor, "outcome": outcome.status})
    if outcome.status == "paid":
        flash(f"{format_money(form.minor, form.currency, current_app.config['DEFAULT_LOCALE'])} "
              "added to your wallet.", "success")
        return redirect(url_for("customer.wallet"), 303)
    if payment is not None and outcome.status in ("requires_action", "processing", "unknown", "refunded"):
        return redirect(url_for("customer.wallet_topup_status", payment_id=payment.id), 303)
    retry = TopUpForm(form.currency, formdata=None, amount=form.amount.data, token=str(uuid.uuid4()))
    message = outcome.error.message if outcome.error else "The payment did not go through."
    return _render_wallet(retry, status=402, topup_error=message)


def _owned_topup_or_404(payment_id: int):
    payment = ledger.owned_topup(current_user.id, payment_id)
    if payment is None:
        abort(404)
    return payment


@bp.get("/wallet/topups/<int:payment_id>")
@login_required
def wallet_topup_status(payment_id: int):
    """Where a top-up stands; the bank's confirmation step when it asks for one."""
    payment = _owned_topup_or_404(payment_id)
    client_secret = lookup_error = None
    if payment.status is PaymentStatus.REQUIRES_ACTION and payment.stripe_payment_intent_id:
        client_secret = purchases.client_secret(payment)
        if client_secret is None:
            lookup_error = "We could not reach the payment service. Reload this page in a moment."
    return render_template(
        "customer/topup.html", payment=payment, entry=ledger.topup_entry(payment), client_secret=client_secret,
        lookup_error=lookup_error, confirm_form=ConfirmForm(), stripe_js_url=stripe_js_url(),
        stripe_key=current_app.config["STRIPE_PUBLISHABLE_KEY"], refunded=ledger.topup_given_back(payment),
    )


class ConfirmForm(FlaskForm):
    """Sent after Stripe.js finished the bank's authentication: CSRF token only."""


@bp.post("/wallet/topups/<int:payment_id>/confirm")
@login_required
def wallet_topup_confirm(payment_id: int):
    """Ask Stripe how the payment ended (after the bank's check, or "check again") and settle or fail it."""
    payment = _owned_topup_or_404(payment_id)
    status_url = url_for("customer.wallet_topup_status", payment_id=payment.id)
    if not ConfirmForm().validate_on_submit():
        return redirect(status_url, 303)
    if payment.status in (PaymentStatus.PENDING, PaymentStatus.REQUIRES_ACTION):
        outcome = purchases.confirm(payment)
        if outcome.status == "unknown" and outcome.error is not None:
            flash(outcome.error.message, "error")
    if payment.status is PaymentStatus.SUCCEEDED and ledger.topup_entry(payment) is not None:
        flash(f"{format_money(payment.amount, payment.currency, current_app.config['DEFAULT_LOCALE'])} "
              "added to your wallet.", "success")
        return redirect(url_for("customer.wallet"), 303)
    if payment.status is PaymentStatus.FAILED:
        flash(payment.failure_message or "The payment did not go through.", "error")
    elif payment.status is PaymentStatus.REQUIRES_ACTION:
        flash("Your bank has not confirmed the payment yet. Confirm it to finish the top-up.", "warning")
    return redirect(status_url, 303)
