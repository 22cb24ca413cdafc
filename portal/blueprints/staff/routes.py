"""Staff overview."""
from __future__ import annotations

import sqlalchemy as sa
from flask import render_template

from portal.billing.lifecycle import SubscriptionStatus
from portal.blueprints.staff import bp
from portal.extensions import db
from portal.models import ErrorStatus, OperationError, Plan, Role, Subscription, User


@bp.get("/")
def index():
    """Counts that tell support where to look first."""
    by_status = dict(
        db.session.execute(sa.select(Subscription.status, sa.func.count()).group_by(Subscription.status)).all()
    )
    stats = {
        "customers": db.session.scalar(sa.select(sa.func.count()).select_from(User).where(User.role == Role.CUSTOMER)),
        "plans": db.session.scalar(sa.select(sa.func.count()).select_from(Plan).where(Plan.is_archived.is_(False))),
        "active": by_status.get(SubscriptionStatus.ACTIVE, 0) + by_status.get(SubscriptionStatus.TRIALING, 0),
        "past_due": by_status.get(SubscriptionStatus.PAST_DUE, 0),
        "open_errors": db.session.scalar(
            sa.select(sa.func.count()).select_from(OperationError).where(
                OperationError.status.in_([ErrorStatus.PENDING, ErrorStatus.RETRYING, ErrorStatus.MANUAL])
            )
        ),
    }
    return render_template("staff/index.html", stats=stats)
