"""Customer home: plan, status and wallet at a glance."""
from __future__ import annotations

from flask import redirect, render_template, url_for
from flask_login import current_user, login_required

from portal.blueprints.customer import bp
from portal.services import subscriptions, wallet


@bp.get("/")
def index():
    """Send visitors to log in and customers to their home."""
    if current_user.is_authenticated:
        return redirect(url_for("staff.index") if current_user.is_staff else url_for("customer.home"))
    return redirect(url_for("auth.login"))


@bp.get("/home")
@login_required
def home():
    """The customer's overview."""
    subscription = subscriptions.live_subscription(current_user.id)
    account = wallet.get_wallet(current_user.id, current_user.currency)
    return render_template("customer/home.html", subscription=subscription, wallet=account)
