"""Sending queued emails: claimed, rendered, handed to SMTP, logged; retried with backoff on failure.

Each try first *claims* the row (a guarded update to `sending`, with a lease) and commits the
claim before talking to SMTP: like the purchase path's pending payment, the record of the
attempt is durable before the side effect that cannot be taken back. Two senders never send one
email at once. If a sender dies after the SMTP server accepted the message but before it wrote
`sent`, the lease lapses and the sweep sends it once more — and marks it `interrupted`, so a
second lapse is not sent again but left `failed` for a person: a crash costs at most one
duplicate, and that duplicate carries the same Message-ID, which mail clients fold.

An SMTP failure leaves the row `failed` with the error and, until the tries run out
(EMAIL_RETRY_MINUTES), the time of the next try; the sweep (every minute, by the billing clock)
sends what is due.
"""
from __future__ import annotations

import logging
import smtplib
import socket
from datetime import timedelta

import sqlalchemy as sa
from flask import current_app
from flask_mail import Connection, Message

from portal.clock import now
from portal.extensions import db
from portal.models import EmailLog, EmailStatus, User
from portal.services.notifications.render import render

log = logging.getLogger(__name__)

_DUE = (EmailStatus.QUEUED, EmailStatus.FAILED)


def retry_delays() -> list[timedelta]:
    """The waits before each retry (EMAIL_RETRY_MINUTES, e.g. "1,5,15,60": five tries in all)."""
    return [timedelta(minutes=float(m)) for m in str(current_app.config["EMAIL_RETRY_MINUTES"]).split(",") if m.strip()]


def _claim(email_id: int) -> bool:
    """Take the email for one try: due and not held by another sender, or held by a lease that lapsed
    (only once: see the module doc). Commits the claim."""
    at = now()
    lease = timedelta(seconds=current_app.config["EMAIL_CLAIM_SECONDS"])
    table = EmailLog.__table__
    lapsed = sa.and_(table.c.status == EmailStatus.SENDING.value, table.c.claimed_until < at)
    due = sa.and_(table.c.status.in_([s.value for s in _DUE]), table.c.next_attempt_at <= at)
    row = db.session.execute(
        sa.update(table).where(table.c.id == email_id, sa.or_(due, sa.and_(lapsed, table.c.interrupted.is_(False))))
        .values(status=EmailStatus.SENDING.value, attempts=table.c.attempts + 1, claimed_until=at + lease,
                interrupted=sa.case((lapsed, sa.true()), else_=table.c.interrupted))
        .returning(table.c.id)
    ).first()
    if row is None:
        _give_up_on_a_second_lapse(email_id, at)
    db.session.commit()  # the documented two-phase step: the claim is durable before SMTP is called
    return row is not None


def _give_up_on_a_second_lapse(email_id: int, at) -> None:
    table = EmailLog.__table__
    db.session.execute(
        sa.update(table).where(table.c.id == email_id, table.c.status == EmailStatus.SENDING.value,
                               table.c.claimed_until < at, table.c.interrupted.is_(True))
        .values(status=EmailStatus.FAILED.value, next_attempt_at=None, claimed_until=None,
                last_error="the sender stopped twice while sending it; not sent again to avoid duplicates")
    )


class _TimedConnection(Connection):
    """Flask-Mail's connection with a timeout (it opens smtplib.SMTP without one, so a silent server
    would hold a worker forever)."""

    def configure_host(self):
        timeout = current_app.config["MAIL_TIMEOUT"]
        cls = smtplib.SMTP_SSL if self.mail.use_ssl else smtplib.SMTP
        host = cls(self.mail.server, self.mail.port, timeout=timeout)
        host.set_debuglevel(int(self.mail.debug))
        if self.mail.use_tls:
            host.starttls()
        if self.mail.username and self.mail.password:
            host.login(self.mail.username, self.mail.password)
        return host


def deliver(email_id: int) -> str:
    """One try of one email: "sent", "failed" (will be retried or was the last try), or "skipped"
    (not due, sent already, or claimed by another sender)."""
    if not _claim(email_id):
        return "skipped"
    email = db.session.get(EmailLog, email_id)
    user = db.session.get(User, email.user_id) if email.user_id else None
    try:
        rendered = render(email.template, email.context, name=user.name if user else "",
                          tz_name=user.timezone if user else None)
    except Exception as error:  # noqa: BLE001 - a template or context bug: logged on the row, tried again
        log.exception("email %s (%s) could not be rendered", email.id, email.template)
        return _failed(email, f"rendering failed: {type(error).__name__}: {error}")
    try:
        message = Message(rendered.subject, recipients=[email.to_address], body=rendered.text, html=rendered.html,
                          sender=current_app.config["MAIL_DEFAULT_SENDER"])
        message.msgId = email.message_id or message.msgId
        with _TimedConnection(current_app.extensions["mail"]) as smtp:
            smtp.send(message)
    except (smtplib.SMTPException, OSError, socket.timeout) as error:
        return _failed(email, f"{type(error).__name__}: {error}")
    db.session.execute(sa.update(EmailLog).where(EmailLog.id == email.id).values(
        status=EmailStatus.SENT, sent_at=now(), next_attempt_at=None, claimed_until=None, last_error=None,
        subject=rendered.subject[:255]))
    return "sent"


def _failed(email: EmailLog, error: str) -> str:
    delays = retry_delays()
    retry_in = delays[email.attempts - 1] if email.attempts - 1 < len(delays) else None
    log.warning("email %s (%s) try %s failed: %s", email.id, email.template, email.attempts, error)
    db.session.execute(sa.update(EmailLog).where(EmailLog.id == email.id).values(
        status=EmailStatus.FAILED, last_error=error[:2000], claimed_until=None,
        next_attempt_at=None if retry_in is None else now() + retry_in))
    return "failed"


def due_ids(limit: int = 200) -> list[int]:
    """Emails to try now: queued or failed ones whose time has come, and claims that lapsed."""
    at = now()
    return list(db.session.scalars(
        sa.select(EmailLog.id).where(sa.or_(
            sa.and_(EmailLog.status.in_(_DUE), EmailLog.next_attempt_at <= at),
            sa.and_(EmailLog.status == EmailStatus.SENDING, EmailLog.claimed_until < at),
        )).order_by(EmailLog.id).limit(limit)
    ))


def deliver_due(limit: int = 200) -> dict[str, int]:
    """The sweep: one try of everything due; counts by outcome."""
    counts: dict[str, int] = {}
    for email_id in due_ids(limit):
        outcome = deliver(email_id)
        db.session.commit()
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts
