"""Support and admin pages, guarded once for the whole blueprint; plan editing for admins only."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

from flask import Blueprint, abort, redirect, request, url_for
from flask_login import current_user

bp = Blueprint("staff", __name__)

F = TypeVar("F", bound=Callable)


@bp.before_request
def require_staff():
    """Only support and admin users get past this point; customers get 403."""
    if not current_user.is_authenticated:
        return redirect(url_for("auth.login", next=request.full_path))
    if not current_user.is_staff:
        abort(403, "This area is for support staff.")
    return None


def admin_required(view: F) -> F:
    """For views only admins may use (plan editing): support staff get 403. Marks the view, so the route
    rules test knows which views are admin-only."""
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if not current_user.is_admin:
            abort(403, "Only admins may do this.")
        return view(*args, **kwargs)

    wrapped.admin_only = True  # type: ignore[attr-defined]
    return wrapped  # type: ignore[return-value]


from portal.blueprints.staff import (  # noqa: E402,F401
    audit_log,
    customers,
    emails,
    failures,
    plans,
    queues,
    revenue,
    routes,
)
