"""Jinja filters and globals shared by every template."""
from __future__ import annotations

from datetime import datetime

from flask import Flask
from flask_login import current_user

from portal import display


#: The navigation, in order; an entry shows once its page exists.
CUSTOMER_NAV = [
    ("customer.home", "Home"),
    ("customer.plans", "Plans"),
    ("customer.subscription", "Subscription"),
    ("customer.usage", "Usage"),
    ("customer.wallet", "Wallet"),
    ("customer.invoices", "Invoices"),
    ("customer.payment_methods", "Payment methods"),
    ("customer.api_keys", "API keys"),
]
STAFF_NAV = [
    ("staff.index", "Overview"),
    ("staff.failures", "Failures"),
    ("staff.customers", "Customers"),
    ("staff.plans", "Plans"),  # admins only (the editor's views are admin_required)
    ("staff.revenue", "Revenue"),
    ("staff.queues", "Queues"),
    ("staff.emails", "Emails"),
    ("staff.audit", "Audit log"),
]


def money(minor: int | None, currency: str = "USD") -> str:
    """Format minor units for display ("$1,234.56"; "—" for none)."""
    return "—" if minor is None else display.money(minor, currency)


def when(value: datetime | None, fmt: str = "%d %b %Y, %H:%M UTC") -> str:
    return "—" if value is None else value.strftime(fmt)


def day(value: datetime | None) -> str:
    return when(value, "%d %b %Y")


def register(app: Flask) -> None:
    app.jinja_env.filters.update(money=money, when=when, day=day, moment=display.moment)

    @app.context_processor
    def navigation():
        items: list[tuple[str, str]] = []
        if current_user.is_authenticated:
            wanted = STAFF_NAV if current_user.is_staff else CUSTOMER_NAV
            items = [(endpoint, label) for endpoint, label in wanted if endpoint in app.view_functions
                     and (current_user.is_admin or not getattr(app.view_functions[endpoint], "admin_only", False))]
        return {"nav_items": items}

    @app.context_processor
    def moved_clock():
        """Billing time, when it is moved away from the real time (a demo or a test walking the days)."""
        from portal.clock import is_moved, now

        return {"clock_moved_to": now() if is_moved() else None}
