"""One commit per request, made here, after the view returns (as Indico's request handler does).

Services and views only flush. When a view returns, whatever its status (a 402 after a declined
card still records the failed payment), the request's transaction commits; when it raises
(an abort, a bug), it rolls back, so nothing half-written survives. The only other commit is the
documented two-phase step of the purchase path (services.purchases.flow), which makes a pending
payment durable before Stripe is called.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flask import Flask

from portal.extensions import db


def commit_after(view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            response = view(*args, **kwargs)
        except BaseException:
            db.session.rollback()
            raise
        db.session.commit()
        return response

    return run


def register(app: Flask) -> None:
    """Wrap every view of the app (call once, after the blueprints are registered)."""
    for endpoint, view in list(app.view_functions.items()):
        if endpoint != "static":
            app.view_functions[endpoint] = commit_after(view)
