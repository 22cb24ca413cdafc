"""Audit trail, email log, API idempotency records and the job outbox."""
from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from portal.clock import now
from portal.extensions import db
from portal.models.types import IdType, UTCDateTime, enum_column


class AuditLog(db.Model):
    __tablename__ = "audit_log"
    __table_args__ = (
        sa.Index("ix_audit_log_at", "at"),
        sa.Index("ix_audit_log_target", "target_type", "target_id"),
        sa.Index("ix_audit_log_actor", "actor_id", "at"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    #: The user who did it; NULL for the system or an anonymous request (a failed login).
    actor_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))
    #: Dotted verb: "auth.login_failed", "wallet.topup", "api_key.revoked".
    action: Mapped[str] = mapped_column(sa.String(64))
    #: The target's table ("users", "payments", "api_keys"); NULL when there is none.
    target_type: Mapped[str | None] = mapped_column(sa.String(32))
    #: The target's id, as text.
    target_id: Mapped[str | None] = mapped_column(sa.String(64))
    #: Details of the action, a JSON object ({"email": ...} for a failed login; amounts in minor units).
    data: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    #: The request's remote address (IPv4 or IPv6); NULL outside a request (jobs).
    ip: Mapped[str | None] = mapped_column(sa.String(45))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)


class EmailStatus(str, enum.Enum):
    QUEUED = "queued"  #: waiting for its first try
    SENDING = "sending"  #: claimed by a sender until claimed_until
    SENT = "sent"  #: the SMTP server accepted it
    FAILED = "failed"  #: the last try failed; tried again at next_attempt_at, or never (NULL)


class EmailLog(db.Model):
    __tablename__ = "email_log"
    __table_args__ = (
        sa.Index("ix_email_log_user_created", "user_id", "created_at"),
        sa.Index("ix_email_log_status_created", "status", "created_at"),
        # The sender's sweep: what is due now (queued, failed with a retry, claims that lapsed).
        sa.Index("ix_email_log_status_next_attempt", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    user_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))
    to_address: Mapped[str] = mapped_column(sa.String(254))
    #: Template name under templates/emails/ ("renewal_failed").
    template: Mapped[str] = mapped_column(sa.String(64))
    subject: Mapped[str] = mapped_column(sa.String(255))
    context: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    status: Mapped[EmailStatus] = mapped_column(enum_column(EmailStatus, "email_status"), default=EmailStatus.QUEUED)
    #: Tries to send it so far.
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    #: When it is (next) due to be sent: its queueing time, then each retry's; NULL once sent or given up.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: A sender that claimed it (status sending) has until then; after, the sweep may take it over once.
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: A claim lapsed once already (a sender died, perhaps after the SMTP server accepted it): it is
    #: not sent a third time, so a crash costs at most one duplicate.
    interrupted: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    #: The Message-ID header, the same on every try (mail clients fold a duplicate by it).
    message_id: Mapped[str | None] = mapped_column(sa.String(255))
    #: The same notice is sent once ("renewal_reminder:12:2026-02-28").
    idempotency_key: Mapped[str] = mapped_column(sa.String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class IdempotencyRecord(db.Model):
    """The first answer to an API request with an Idempotency-Key, replayed byte for byte."""

    __tablename__ = "idempotency_records"
    __table_args__ = (
        sa.UniqueConstraint("user_id", "key"),
        sa.Index("ix_idempotency_records_expires", "expires_at"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    #: The client's Idempotency-Key header (or the body's event_id), unique per user.
    key: Mapped[str] = mapped_column(sa.String(200))
    #: SHA-256 of method, path and body: the same key with another body is a conflict.
    request_hash: Mapped[str] = mapped_column(sa.String(64))
    #: HTTP status of the stored answer; 0 while the first request is still in progress.
    response_status: Mapped[int] = mapped_column(sa.Integer)
    #: The answer's bytes, replayed as they are (empty while in progress).
    response_body: Mapped[bytes] = mapped_column(sa.LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    #: Kept until then (48 h after created_at); the hourly purge job deletes it afterwards.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class OutboxMessage(db.Model):
    """A job to enqueue once the transaction that asked for it has committed (DESIGN §3.7)."""

    __tablename__ = "outbox"
    __table_args__ = (sa.Index("ix_outbox_pending", "enqueued_at", "id"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    #: The RQ queue it is pushed to (worker.QUEUES: billing, emails, retries, default).
    queue: Mapped[str] = mapped_column(sa.String(32))
    #: Dotted path of the job function ("worker.emails.send_email").
    func: Mapped[str] = mapped_column(sa.String(128))
    #: The job's positional arguments, a JSON list (ids and plain values, never ORM objects).
    args: Mapped[list[Any]] = mapped_column(sa.JSON, default=list)
    #: Also the RQ job id, so enqueuing the same message twice runs it once.
    job_id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    #: A dispatcher that claimed the message enqueues it before then; after, another may claim it.
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: When it was pushed to RQ (UTC); NULL while pending.
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
