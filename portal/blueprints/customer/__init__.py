"""The customer's pages: one module per page, all on this blueprint."""
from flask import Blueprint

bp = Blueprint("customer", __name__)

from portal.blueprints.customer import routes  # noqa: E402,F401
