"""Emails the portal owes its customers and staff: queued once, sent after commit, logged, retried.

`notify` writes an EmailLog row (queued) in the caller's transaction, under a unique key naming
the business event ("renewal_failed:12:2026-02-28T09:00:00+00:00"): the same key twice is one
email. The send is enqueued after the commit (the outbox); if that enqueue is lost, the sender's
sweep finds the row due anyway, so the log itself is the outbox of emails. A rolled-back
transaction leaves no row and sends nothing. Delivery, retries and the bound on duplicates are in
`delivery`; the kinds, their subjects and sample facts in `kinds`; rendering in `render`.
"""
from __future__ import annotations

import json
import uuid
from datetime import datetime
from email.utils import make_msgid
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from flask import current_app

from portal.clock import now
from portal.extensions import db
from portal.models import EmailLog, EmailStatus, User
from portal.services import outbox
from portal.services.notifications.kinds import KINDS
from portal.services.notifications.render import render_subject
from portal.services.statements import connection, dialect_insert

__all__ = ["KINDS", "notify", "notify_many", "notify_staff"]

SEND_JOB = "worker.emails.send_email"
_log = EmailLog.__table__


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def notify(user: User | int, kind: str, context: dict[str, Any], key: str) -> int | None:
    """Queue email `kind` to the customer, once per `key` (no savepoint: safe on an autocommit
    connection). Returns the EmailLog id, or None when the key was used before or the customer
    turned this kind off."""
    spec = KINDS[kind]
    if spec.audience != "customer":
        raise ValueError(f"{kind} is not a customer email")
    if not isinstance(user, User):
        user = db.session.get(User, user)
    if spec.optional and not user.usage_emails:
        return None
    return _queue(kind, context, key, to=user.email, user_id=user.id, name=user.name, tz_name=user.timezone)


def notify_many(kind: str, emails: list[tuple[Any, dict[str, Any], str]]) -> int:
    """`notify` for many customers at once (a batch of renewals): one insert of the log rows and one of
    their send jobs' outbox messages. Each item is (recipient, context, key); a recipient has the
    customer's `id`, `email`, `name`, `timezone` and `usage_emails` (a User, or a row read with them).
    Returns how many were queued (a key used before queues nothing, as in `notify`)."""
    spec = KINDS[kind]
    if spec.audience != "customer":
        raise ValueError(f"{kind} is not a customer email")
    at = now()
    domain = _sender_domain() or "portal"
    rows = [_log_row(kind, context, key, to=recipient.email, user_id=recipient.id, tz_name=recipient.timezone,
                     at=at, domain=domain)
            for recipient, context, key in emails if not spec.optional or recipient.usage_emails]
    if not rows:
        return 0
    conn = connection()
    email_ids = conn.execute(_insert(conn.dialect.name), rows).scalars().all()
    outbox.enqueue_many_after_commit(SEND_JOB, [[email_id] for email_id in email_ids], queue_name="emails",
                                     job_ids=[f"email-{email_id}" for email_id in email_ids])
    return len(email_ids)


def notify_staff(kind: str, context: dict[str, Any], key: str) -> int | None:
    """Queue a staff email (to STAFF_ALERT_EMAIL), once per `key`."""
    if KINDS[kind].audience != "staff":
        raise ValueError(f"{kind} is not a staff email")
    return _queue(kind, context, key, to=current_app.config["STAFF_ALERT_EMAIL"], user_id=None, name="",
                  tz_name=None)


def _queue(kind: str, context: dict[str, Any], key: str, *, to: str, user_id: int | None, name: str,
           tz_name: str | None) -> int | None:
    conn = connection()
    email_id = conn.execute(_insert(conn.dialect.name), _log_row(
        kind, context, key, to=to, user_id=user_id, tz_name=tz_name, at=now(), domain=_sender_domain() or "portal",
    )).scalar_one_or_none()
    if email_id is not None:
        outbox.enqueue_after_commit(SEND_JOB, email_id, queue_name="emails", job_id=f"email-{email_id}")
    return email_id


def _log_row(kind: str, context: dict[str, Any], key: str, *, to: str, user_id: int | None, tz_name: str | None,
             at: datetime, domain: str) -> dict[str, Any]:
    """The EmailLog row of an email queued now: its context as JSON keeps it, its subject rendered."""
    context = json.loads(json.dumps(_jsonable(context)))
    return dict(
        user_id=user_id, to_address=to, template=kind, subject=render_subject(kind, context, tz_name=tz_name)[:255],
        context=context, status=EmailStatus.QUEUED.value, attempts=0, idempotency_key=key[:200], created_at=at,
        next_attempt_at=at, interrupted=False, message_id=make_msgid(idstring=uuid.uuid4().hex[:12], domain=domain),
    )


_INSERTS: dict[str, sa.Insert] = {}


def _insert(dialect: str) -> sa.Insert:
    """INSERT ... ON CONFLICT (idempotency_key) DO NOTHING RETURNING id, built once per dialect."""
    stmt = _INSERTS.get(dialect)
    if stmt is None:
        stmt = _INSERTS[dialect] = (dialect_insert(dialect)(_log).on_conflict_do_nothing(index_elements=["idempotency_key"])
                                    .returning(_log.c.id))
    return stmt


def _sender_domain() -> str:
    sender = current_app.config.get("MAIL_DEFAULT_SENDER") or ""
    address = sender.rsplit("<", 1)[-1].rstrip(">")
    return address.rsplit("@", 1)[-1] if "@" in address else ""


def by_key(key: str) -> EmailLog | None:
    return db.session.scalar(sa.select(EmailLog).where(EmailLog.idempotency_key == key))
