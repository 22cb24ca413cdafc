"""Card payments waiting on someone: the bank's 3-D Secure check, "check again" when Stripe did not
answer, and giving up an open purchase. One confirm service (purchases.confirm) for every page."""
from __future__ import annotations

from flask import abort, current_app, flash, redirect, render_template, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm

from portal.billing.money import format_money
from portal.blueprints.customer import bp
from portal.blueprints.customer.payment_methods import stripe_js_url
from portal.extensions import db
from portal.models import Invoice, Payment, PaymentPurpose
from portal.payments.errors import PaymentError
from portal.services import purchases
from portal.services import payments
from portal.services.invoices import views as invoice_views
from portal.services.purchases import Outcome, effects
from portal.services.subscriptions import live_subscription


class PaymentForm(FlaskForm):
    """Confirm / check again / cancel: nothing but the CSRF token."""


def _money(amount: int, currency: str) -> str:
    return format_money(amount, currency, current_app.config["DEFAULT_LOCALE"])


def _what(payment: Payment) -> str:
    invoice = db.session.get(Invoice, payment.invoice_id) if payment.invoice_id else None
    return effects.load(invoice.purchase).describe() if invoice is not None else "your purchase"


def _owned_card_payment(payment_id: int) -> Payment:
    payment = payments.owned(current_user.id, payment_id)
    if payment is None or payment.provider != "stripe":
        abort(404)
    return payment


def _home(payment: Payment):
    """Where the customer goes when the payment is done with."""
    if payment.purpose is PaymentPurpose.TOPUP:
        return redirect(url_for("customer.wallet_topup_status", payment_id=payment.id), 303)
    return redirect(url_for("customer.subscription"))


def payment_action(payment: Payment, client_secret: str | None, *, message: str | None = None, status: int = 200):
    """The page where Stripe.js asks the bank to confirm the payment (3-D Secure)."""
    return render_template(
        "customer/subscription.html", section="payment_action", payment=payment, client_secret=client_secret,
        stripe_js_url=stripe_js_url(), publishable_key=current_app.config["STRIPE_PUBLISHABLE_KEY"],
        confirm_form=PaymentForm(), message=message, what=_what(payment),
    ), status


def payment_checking(payment: Payment, *, status: int = 202):
    """No answer from Stripe yet: the payment stays pending with its key; the customer may check again."""
    return render_template("customer/subscription.html", section="payment_checking", payment=payment,
                           confirm_form=PaymentForm(), what=_what(payment)), status


def show_outcome(outcome: Outcome, *, on_failure=None):
    """The answer to a purchase attempt: a redirect with a message, the bank's check, or "checking".

    `on_failure(message)` renders the page the purchase started from with the error; without it
    the error is flashed on the way home.
    """
    payment = outcome.payment
    if outcome.status == "requires_action" and payment is not None:
        return payment_action(payment, outcome.client_secret or purchases.client_secret(payment))
    if outcome.status == "unknown" and payment is not None:
        return payment_checking(payment)
    if outcome.status == "failed":
        message = outcome.error.message if outcome.error else "The payment did not go through."
        if on_failure is not None:
            return on_failure(message)
        flash(message, "error")
    elif outcome.status == "paid":
        _flash_paid(payment, outcome.invoice)
    elif outcome.status == "refunded":
        amount = _money(payment.amount, payment.currency) if payment else "The payment"
        flash(f"{amount} reached us after this purchase could no longer be applied, so it is being refunded "
              "to your card. Nothing else changed.", "warning")
    elif outcome.status == "processing":
        flash("Your payment is processing. We update your account as soon as your bank confirms it.", "info")
    if payment is not None:
        return _home(payment)
    return redirect(url_for("customer.subscription"))


def _flash_paid(payment: Payment | None, invoice: Invoice | None) -> None:
    purchase = effects.load(invoice.purchase) if invoice is not None else None
    if purchase is not None and purchase.kind == "plan_change":
        sub = live_subscription(current_user.id)
        flash(f"Payment confirmed. You are now on the {sub.plan.name} plan." if sub else "Payment confirmed.",
              "success")
    elif purchase is not None and purchase.kind == "renewal":
        sub = live_subscription(current_user.id)
        flash(f"Payment received. Your {sub.plan.name} plan is active until {sub.current_period_end:%d %b %Y}."
              if sub else "Payment received.", "success")
    elif purchase is not None and purchase.kind == "topup" and payment is not None:
        flash(f"{_money(payment.amount, payment.currency)} added to your wallet.", "success")
    else:
        flash("Payment confirmed. Thank you!", "success")


@bp.get("/payments/<int:payment_id>")
@login_required
def payment(payment_id: int):
    """A payment in flight: the bank's check, or the page that checks with Stripe."""
    payment = _owned_card_payment(payment_id)
    outcome = purchases.outcome_of(db.session.get(Invoice, payment.invoice_id) if payment.invoice_id else None,
                                   payment)
    if outcome.status == "requires_action":
        return payment_action(payment, purchases.client_secret(payment))
    if outcome.status in ("unknown", "processing"):
        return payment_checking(payment, status=200)
    return _home(payment)


@bp.post("/payments/<int:payment_id>/confirm")
@login_required
def confirm_payment(payment_id: int):
    """After the bank's check, or "check again": ask Stripe how the payment ended, settle or fail it."""
    payment = _owned_card_payment(payment_id)
    if not payment.stripe_payment_intent_id and payment.status.value not in ("pending",):
        abort(404)
    done_before = payment.status.value in ("succeeded", "refunded", "failed")
    outcome = purchases.confirm(payment)
    if done_before and outcome.status == "paid":
        flash("Payment received.", "info")
        return _home(payment)
    if outcome.status == "requires_action":
        # Not confirmed yet (the bank's window was closed, or JavaScript is off): ask again.
        return payment_action(payment, outcome.client_secret,
                              message="Your bank has not confirmed this payment yet. Please complete the check.")
    if outcome.status == "unknown":
        return payment_checking(payment)
    return show_outcome(outcome)


@bp.post("/purchases/<number>/cancel")
@login_required
def cancel_purchase(number: str):
    """Give up an open purchase (an upgrade left at the bank's check): cancelled at Stripe, released here."""
    invoice = invoice_views.owned_invoice(current_user.id, number)
    if invoice is None:
        abort(404)
    if not PaymentForm().validate_on_submit():
        abort(400)
    try:
        outcome = purchases.cancel_purchase(invoice, "cancelled by the customer")
    except PaymentError as error:
        db.session.rollback()
        flash(f"We could not cancel it just now: {error.message}", "error")
        return redirect(url_for("customer.subscription"), 303)
    if outcome.status == "paid":  # the bank confirmed it before the cancellation arrived
        _flash_paid(outcome.payment, invoice)
    else:
        flash(f"Cancelled: {invoice.number} will not be charged.", "success")
    return redirect(url_for("customer.subscription"), 303)
