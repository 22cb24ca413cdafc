"""Invoices: the list (newest first, keyset-paginated), one invoice, and a printable copy."""
from __future__ import annotations

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from portal.blueprints.customer import bp
from portal.blueprints.customer.payments import PaymentForm, show_outcome
from portal.extensions import db
from portal.payments.errors import PaymentError
from portal.services.invoices import views as invoice_views
from portal.services.subscriptions import renewals


def _owned(number: str):
    invoice = invoice_views.owned_invoice(current_user.id, number)
    if invoice is None:
        abort(404)
    return invoice_views.invoice_view(invoice)


@bp.get("/invoices")
@login_required
def invoices():
    """Every invoice of the customer, newest first."""
    before = request.args.get("before", type=int)
    if before is not None and before < 1:
        before = None
    page = invoice_views.invoice_page(current_user.id, before)
    return render_template("customer/invoices.html", page=page, before=before)


@bp.get("/invoices/<number>")
@login_required
def invoice(number: str):
    """One invoice: its lines, status and the payments made toward it."""
    return render_template("customer/invoice.html", view=_owned(number), pay_form=PaymentForm())


@bp.post("/invoices/<number>/pay")
@login_required
def pay_invoice(number: str):
    """Pay now: an unpaid renewal, from the wallet first, then the default card (with the bank's check)."""
    if not PaymentForm().validate_on_submit():
        abort(400)
    invoice = renewals.open_renewal(current_user.id, number)
    if invoice is None:
        if invoice_views.owned_invoice(current_user.id, number) is None:
            abort(404)
        flash(f"{number} has nothing left to pay.", "info")
        return redirect(url_for("customer.invoice", number=number), 303)
    try:
        outcome = renewals.pay_now(invoice)
    except PaymentError as error:
        db.session.rollback()
        flash(error.message, "error")
        return redirect(url_for("customer.invoice", number=number), 303)
    return show_outcome(outcome)


@bp.get("/invoices/<number>/print")
@login_required
def invoice_print(number: str):
    """The invoice on a clean page for printing or saving as PDF."""
    return render_template("customer/invoice_print.html", view=_owned(number))
