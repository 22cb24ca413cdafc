"""The customer's pages: one module per page, all on this blueprint."""
from flask import Blueprint

bp = Blueprint("customer", __name__)

# Importing the page modules registers their views on `bp`.
from portal.blueprints.customer import (  # noqa: E402,F401
    account,
    api_keys,
    invoices,
    payment_methods,
    payments,
    plans,
    routes,
    subscription,
    usage,
    wallet,
)
