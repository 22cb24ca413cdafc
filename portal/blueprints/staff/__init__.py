"""Support and admin pages, guarded once for the whole blueprint."""
from flask import Blueprint, abort, redirect, request, url_for
from flask_login import current_user

bp = Blueprint("staff", __name__)


@bp.before_request
def require_staff():
    """Only support and admin users get past this point; customers get 403."""
    if not current_user.is_authenticated:
        return redirect(url_for("auth.login", next=request.full_path))
    if not current_user.is_staff:
        abort(403, "This area is for support staff.")
    return None


from portal.blueprints.staff import emails, routes  # noqa: E402,F401
