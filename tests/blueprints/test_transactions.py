"""One commit per request, after the view (portal.blueprints.transactions); nothing else commits."""
from __future__ import annotations

import re
from pathlib import Path

import sqlalchemy as sa
from werkzeug.exceptions import NotFound

from portal.blueprints.transactions import commit_after
from portal.extensions import db
from portal.models import AuditLog
from portal.services.audit import audit

PORTAL = Path(__file__).resolve().parents[2] / "portal"
#: The owner, and the documented exceptions: the two-phase steps before a payment and an email, the CLI.
MAY_COMMIT = {"blueprints/transactions.py", "services/purchases/flow.py", "services/notifications/delivery.py",
              "services/retries/processor.py", "cli.py"}


def _audit_rows() -> int:
    db.session.rollback()
    return db.session.scalar(sa.select(sa.func.count(AuditLog.id)))


def test_a_view_that_returns_commits_whatever_its_status(app):
    def declined():
        audit("payment.declined", None)  # e.g. the failed payment a 402 page reports
        return "declined", 402

    with app.test_request_context():
        assert commit_after(declined)() == ("declined", 402)
    assert _audit_rows() == 1


def test_a_view_that_raises_leaves_nothing_written(app):
    def half_done():
        audit("half.done", None)
        raise NotFound()

    with app.test_request_context():
        try:
            commit_after(half_done)()
        except NotFound:
            pass
    assert _audit_rows() == 0


def test_every_view_is_wrapped(app):
    unwrapped = [e for e, view in app.view_functions.items()
                 if e != "static" and getattr(view, "__wrapped__", None) is None]
    assert unwrapped == []


def test_no_view_or_service_commits_on_its_own():
    offenders = []
    for path in PORTAL.rglob("*.py"):
        relative = path.relative_to(PORTAL).as_posix()
        if relative in MAY_COMMIT:
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if re.search(r"\bsession\.commit\(\)", line):
                offenders.append(f"{relative}:{number}")
    assert offenders == []
