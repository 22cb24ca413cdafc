"""Payment methods: list, add (Stripe.js collects the card), make default, remove."""
from __future__ import annotations

from flask import abort, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import HiddenField
from wtforms.validators import DataRequired, Length, Regexp

from portal.blueprints.customer import bp
from portal.clock import now
from portal.extensions import db
from portal.payments.errors import PaymentError
from portal.services.audit import audit
from portal.services.payments import cards as payment_methods


class SaveCardForm(FlaskForm):
    """What the page posts after Stripe.js confirmed the SetupIntent: the new card's Stripe id."""

    payment_method_id = HiddenField("Card", validators=[
        DataRequired("The card details did not reach us. Try again."),
        Length(max=64), Regexp(r"^pm_[A-Za-z0-9_]+$", message="That is not a Stripe card id."),
    ])
    #: The SetupIntent Stripe.js confirmed: the server checks it succeeded for this very card.
    setup_intent_id = HiddenField("Setup", validators=[
        DataRequired("The card details did not reach us. Try again."),
        Length(max=64), Regexp(r"^seti_[A-Za-z0-9_]+$", message="That is not a Stripe setup id."),
    ])


class CardActionForm(FlaskForm):
    """Make default / remove: nothing but the CSRF token."""


def stripe_js_url() -> str:
    """Stripe.js: localstripe's stand-in when STRIPE_API_BASE points at it, else the real one."""
    base = current_app.config.get("STRIPE_API_BASE")
    return f"{base.rstrip('/')}/js.stripe.com/v3/" if base else current_app.config["STRIPE_JS_URL"]


def _stripe_context() -> dict:
    return {"stripe_js_url": stripe_js_url(), "stripe_key": current_app.config["STRIPE_PUBLISHABLE_KEY"]}


def _owned_or_404(method_id: int):
    method = payment_methods.owned(current_user.id, method_id)
    if method is None:
        abort(404)
    return method


def _label(method) -> str:
    return f"{method.brand.title()} •••• {method.last4}"


def _render(form: SaveCardForm, status: int = 200, save_error: str | None = None):
    today = now()
    return render_template(
        "customer/payment_methods.html", methods=payment_methods.list_methods(current_user.id), form=form,
        action_form=CardActionForm(), save_error=save_error, today=(today.year, today.month), **_stripe_context(),
    ), status


@bp.get("/payment-methods", endpoint="payment_methods")
@login_required
def payment_methods_page():
    """The saved cards and the add-a-card form."""
    return _render(SaveCardForm())


@bp.post("/payment-methods/setup")
@login_required
def payment_method_setup():
    """A fresh SetupIntent client secret for Stripe.js (JSON)."""
    try:
        _, client_secret = payment_methods.start_setup(current_user._get_current_object())
    except PaymentError as error:
        db.session.rollback()
        return jsonify(error={"code": error.code, "message": error.message}), 502
    return jsonify(client_secret=client_secret)


@bp.post("/payment-methods")
@login_required
def payment_method_save():
    """Keep the card Stripe.js just set up."""
    form = SaveCardForm()
    if not form.validate_on_submit():
        return _render(form, 422)
    user = current_user._get_current_object()
    try:
        method = payment_methods.save(user, form.payment_method_id.data, setup_intent_id=form.setup_intent_id.data)
    except LookupError:
        db.session.rollback()
        return _render(form, 422, save_error="That card is saved on another account.")
    except PaymentError as error:
        db.session.rollback()
        return _render(form, 402, save_error=error.message)
    audit("payment_method.added", method, actor_id=user.id, data={"last4": method.last4})
    flash(f"{_label(method)} saved." + (" It is your default card." if method.is_default else ""), "success")
    return _pay_past_due(method) or redirect(url_for("customer.payment_methods"), 303)


def _pay_past_due(method):
    """While a renewal is unpaid, the card just added or chosen pays it at once (the answer's page), else None."""
    from portal.blueprints.customer.payments import show_outcome
    from portal.services.subscriptions import renewals

    try:
        outcome = renewals.retry_with_new_card(method)
    except PaymentError as error:
        db.session.rollback()
        flash(f"Your unpaid renewal could not be paid with it: {error.message}", "error")
        return None
    if outcome is None:
        return None
    return show_outcome(outcome, on_failure=lambda message: _unpaid_yet(method, message))


def _unpaid_yet(method, message: str):
    flash(f"{_label(method)} did not pay your unpaid renewal: {message}", "error")
    return redirect(url_for("customer.subscription"), 303)


@bp.post("/payment-methods/<int:method_id>/default")
@login_required
def payment_method_default(method_id: int):
    """Make this card the one charged for renewals and top-ups."""
    method = _owned_or_404(method_id)
    if CardActionForm().validate_on_submit():
        payment_methods.set_default(method)
        audit("payment_method.default", method, actor_id=current_user.id)
        flash(f"{_label(method)} is now your default card.", "success")
        return _pay_past_due(method) or redirect(url_for("customer.payment_methods"), 303)
    return redirect(url_for("customer.payment_methods"), 303)


@bp.route("/payment-methods/<int:method_id>/remove", methods=["GET", "POST"])
@login_required
def payment_method_remove(method_id: int):
    """Ask, then remove the card here and at Stripe."""
    method = _owned_or_404(method_id)
    form = CardActionForm()
    if request.method == "POST" and form.validate_on_submit():
        label = _label(method)
        try:
            payment_methods.remove(method)
        except PaymentError as error:
            db.session.rollback()
            flash(f"{label} could not be removed: {error.message}", "error")
            return redirect(url_for("customer.payment_methods"), 303)
        audit("payment_method.removed", None, actor_id=current_user.id, data={"payment_method_id": method_id})
        flash(f"{label} removed.", "success")
        return redirect(url_for("customer.payment_methods"), 303)
    others = [m for m in payment_methods.list_methods(current_user.id) if m.id != method.id]
    return render_template("customer/payment_method_remove.html", method=method, others=others, form=form)
