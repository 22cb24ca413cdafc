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
    actor_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))
    #: dotted verb: "plan.update", "wallet.adjust", "auth.login_failed"
    action: Mapped[str] = mapped_column(sa.String(64))
    target_type: Mapped[str | None] = mapped_column(sa.String(32))
    target_id: Mapped[str | None] = mapped_column(sa.String(64))
    data: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    ip: Mapped[str | None] = mapped_column(sa.String(45))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)


class EmailStatus(str, enum.Enum):
    QUEUED = "queued"
    SENT = "sent"
    FAILED = "failed"


class EmailLog(db.Model):
    __tablename__ = "email_log"
    __table_args__ = (
        sa.Index("ix_email_log_user_created", "user_id", "created_at"),
        sa.Index("ix_email_log_status_created", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    user_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))
    to_address: Mapped[str] = mapped_column(sa.String(254))
    #: Template name under templates/emails/ ("renewal_failed").
    template: Mapped[str] = mapped_column(sa.String(64))
    subject: Mapped[str] = mapped_column(sa.String(255))
    context: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    status: Mapped[EmailStatus] = mapped_column(enum_column(EmailStatus, "email_status"), default=EmailStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
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
    key: Mapped[str] = mapped_column(sa.String(200))
    #: SHA-256 of method, path and body: the same key with another body is a conflict.
    request_hash: Mapped[str] = mapped_column(sa.String(64))
    response_status: Mapped[int] = mapped_column(sa.Integer)
    response_body: Mapped[bytes] = mapped_column(sa.LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class OutboxMessage(db.Model):
    """A job to enqueue once the transaction that asked for it has committed (DESIGN §3.7)."""

    __tablename__ = "outbox"
    __table_args__ = (sa.Index("ix_outbox_pending", "enqueued_at", "id"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    queue: Mapped[str] = mapped_column(sa.String(32))
    #: Dotted path of the job function ("worker.emails.send_email").
    func: Mapped[str] = mapped_column(sa.String(128))
    args: Mapped[list[Any]] = mapped_column(sa.JSON, default=list)
    #: Also the RQ job id, so enqueuing the same message twice runs it once.
    job_id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    #: A dispatcher that claimed the message enqueues it before then; after, another may claim it.
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
