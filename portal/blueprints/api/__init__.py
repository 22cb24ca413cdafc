"""The JSON usage API under /api/v1: API-key auth, JSON errors, CSRF-exempt."""
from flask import Blueprint

from portal.extensions import csrf

bp = Blueprint("api", __name__, url_prefix="/api/v1")
csrf.exempt(bp)

from portal.blueprints.api import routes  # noqa: E402,F401
