"""The customer's pages."""
from flask import Blueprint

bp = Blueprint("customer", __name__)

from portal.blueprints.customer import routes  # noqa: E402,F401
