"""Usage: live meters for every feature of the plan, 30-day history, and prepaid packages."""
from __future__ import annotations

import uuid

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import HiddenField, IntegerField, StringField
from wtforms.validators import UUID, InputRequired, Length, NumberRange, Optional

from portal.blueprints.customer import bp
from portal.extensions import db
from portal.services import wallet
from portal.services.usage import meters
from portal.services.usage import packages
from portal.services.usage.meters import MAX_DAYS, MIN_DAYS
from portal.services.usage.packages import MAX_PACKAGES, MIN_PACKAGES

_DAYS_MESSAGE = f"days must be a whole number from {MIN_DAYS} to {MAX_DAYS}"


class HistoryRangeForm(FlaskForm):
    """?days=N on the usage page (query string, so no CSRF)."""

    class Meta:
        csrf = False

    days = IntegerField("Days", default=30, validators=[Optional(), NumberRange(MIN_DAYS, MAX_DAYS, _DAYS_MESSAGE)])


class HistoryQueryForm(HistoryRangeForm):
    """?feature=<code>&days=N for the history partial."""

    feature = StringField("Feature", validators=[InputRequired("feature is required: ?feature=<code>"),
                                                 Length(max=64)])


class PackageForm(FlaskForm):
    feature = HiddenField(validators=[InputRequired(), Length(max=64)])
    packages = IntegerField(
        "Packages",
        default=1,
        render_kw={"min": MIN_PACKAGES, "max": MAX_PACKAGES, "inputmode": "numeric"},
        validators=[
            InputRequired("Enter how many packages to buy."),
            NumberRange(MIN_PACKAGES, MAX_PACKAGES, f"Buy from {MIN_PACKAGES} to {MAX_PACKAGES} packages at a time."),
        ],
    )
    #: One per rendered form: submitting the same form twice buys once.
    token = HiddenField(validators=[InputRequired(), UUID("The form is out of date; reload the page.")])


def _query(form: FlaskForm) -> FlaskForm:
    """Validate a query-string form; a bad value is a 400 that says what was wrong."""
    if not form.validate():
        problems = [f"{name}: {' '.join(errors)}" for name, errors in form.errors.items()]
        abort(400, description="Bad request: " + "; ".join(problems))
    return form


def _package_forms(board: meters.Board, submitted: PackageForm | None = None) -> dict[str, PackageForm]:
    """One purchase form per buyable feature; the submitted one keeps its values and errors."""
    forms = {}
    for meter in board.offers:
        if submitted is not None and submitted.feature.data == meter.code:
            form = submitted
            if form.token.errors:  # a stale or mangled token: the next submit gets a good one
                form.token.data = str(uuid.uuid4())
        else:
            form = PackageForm(formdata=None, feature=meter.code, packages=1, token=str(uuid.uuid4()))
        # Several forms on one page: each input needs its own id for its label.
        form.packages.id = form.packages.label.field_id = f"{meter.code}-packages"
        forms[meter.code] = form
    return forms


def _url_if_exists(endpoint: str) -> str | None:
    """A link to another customer page, or None when that page is not part of this app."""
    return url_for(endpoint) if endpoint in current_app.view_functions else None


def _page(days: int = 30, submitted: PackageForm | None = None, purchase_error: str | None = None,
          status: int = 200):
    board = meters.build(current_user.id)
    forms = _package_forms(board, submitted)
    if submitted is not None and submitted.feature.data in forms:
        purchase_error = None  # shown next to its own form's field
    elif submitted is not None:  # a form for something this plan does not sell: say why at the top
        purchase_error = purchase_error or next((e for errs in submitted.errors.values() for e in errs), None)
    return render_template(
        "customer/usage.html",
        board=board,
        wallet=wallet.get_wallet(current_user.id, current_user.currency) if forms else None,
        histories=meters.histories(current_user.id, board, days),
        days=days,
        forms=forms,
        purchase_error=purchase_error,
        plans_url=_url_if_exists("customer.plans"),
    ), status


@bp.get("/usage")
@login_required
def usage():
    """Every meter of the current plan, the usage history and token top-ups."""
    form = _query(HistoryRangeForm(formdata=request.args))
    return _page(days=form.days.data or 30)


@bp.get("/usage/meters")
@login_required
def usage_meters():
    """The meters block alone (htmx polls it while the page is open); reads counters only."""
    return render_template("customer/_meters.html", board=meters.build(current_user.id),
                           plans_url=_url_if_exists("customer.plans"))


@bp.get("/usage/history")
@login_required
def usage_history():
    """Daily totals of one feature for the last N days (1–90)."""
    form = _query(HistoryQueryForm(formdata=request.args))
    try:
        history = meters.history(current_user.id, form.feature.data.strip(), form.days.data or 30)
    except meters.MeterError as error:
        abort(400, description=f"Bad request: {error}")
    return render_template("customer/_history.html", history=history)


@bp.post("/usage/packages")
@login_required
def buy_package():
    """Buy prepaid packages: wallet first, then the saved card; units are added once paid."""
    form = PackageForm()
    if not form.validate_on_submit():
        return _page(submitted=form, status=422)
    user = current_user._get_current_object()
    try:
        outcome = packages.buy(user, form.feature.data, form.packages.data, form.token.data)
    except packages.PackageError as error:
        db.session.rollback()
        form.packages.errors.append(str(error))
        return _page(submitted=form, purchase_error=str(error), status=422)
    quantity = form.packages.data
    if outcome.status == "paid":
        flash(f"Paid: {quantity} package{'s' if quantity != 1 else ''} added to this period's allowance.", "success")
    elif outcome.status in ("requires_action", "unknown") and outcome.payment is not None:
        return redirect(url_for("customer.payment", payment_id=outcome.payment.id), code=303)
    elif outcome.status == "processing":
        flash("Your payment is processing; the units are added as soon as it succeeds.", "info")
    elif outcome.status == "refunded":
        flash("Your plan changed before the payment went through, so nothing was added and the payment is being "
              "refunded to your card.", "warning")
    else:
        reason = outcome.error.message if outcome.error is not None else "The payment did not go through."
        flash(f"Payment failed: {reason} Nothing was added, and anything taken from your wallet was returned.",
              "error")
    return redirect(url_for("customer.usage") + f"#meter-{form.feature.data}", code=303)
