"""The audit trail: who did what to which thing."""
from __future__ import annotations

from typing import Any

from flask import has_request_context, request

from portal.clock import now
from portal.extensions import db
from portal.models import AuditLog


def audit(action: str, target: Any = None, *, actor_id: int | None = None, data: dict[str, Any] | None = None) -> AuditLog:
    """Add an audit row in the current transaction."""
    target_type = target_id = None
    if target is not None:
        target_type = getattr(target, "__tablename__", type(target).__name__.lower())
        target_id = str(getattr(target, "id", target))
    entry = AuditLog(
        actor_id=actor_id,
        action=action,
        target_type=target_type,
        target_id=target_id,
        data=data or {},
        ip=request.remote_addr if has_request_context() else None,
        at=now(),
    )
    db.session.add(entry)
    return entry
