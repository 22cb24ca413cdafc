"""Invoices: the list (newest first, keyset-paginated), one invoice, and a printable copy."""
from __future__ import annotations

from flask import abort, render_template, request
from flask_login import current_user, login_required

from portal.blueprints.customer import bp
from portal.services.invoices import views as invoice_views


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
    return render_template("customer/invoice.html", view=_owned(number))


@bp.get("/invoices/<number>/print")
@login_required
def invoice_print(number: str):
    """The invoice on a clean page for printing or saving as PDF."""
    return render_template("customer/invoice_print.html", view=_owned(number))
