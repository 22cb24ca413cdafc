"""The periodic jobs, declared once, in RQ's `rq cron` config format.

Run by the single scheduler process of `python -m worker` (or `rq cron worker.schedule`).
Cron fields are read in the scheduler's local time; the worker command sets TZ=UTC, so
these are UTC.
"""
from __future__ import annotations

from rq import cron

from worker import billing, emails, maintenance, payments, retries

#: Each entry is keyword arguments for `rq.cron.register`; the queue is the job's own.
PERIODIC_JOBS: list[dict] = [
    # Renewals due and grace periods ended, fanned out in batches: a period ending at 14:00 renews by 14:05.
    {"func": billing.renew_due, "cron": "*/5 * * * *", "job_timeout": 600, "result_ttl": 3600},
    # Reminders RENEWAL_REMINDER_DAYS before a paid renewal (once per period).
    {"func": billing.send_renewal_reminders, "cron": "7 * * * *", "job_timeout": 1800},
    # Push outbox messages an after-commit dispatch missed (Redis was down, a process died).
    {"func": maintenance.sweep_outbox, "cron": "* * * * *", "job_timeout": 120, "result_ttl": 300},
    # Emails due: retries after an SMTP failure, sends whose enqueue was lost, claims that lapsed.
    {"func": emails.send_due, "cron": "* * * * *", "job_timeout": 600, "result_ttl": 300},
    # Failed operations whose next try is due (renewal payments, refunds, payment checks, webhooks).
    {"func": retries.process_pending_retries, "cron": "*/5 * * * *", "job_timeout": 1800, "result_ttl": 3600},
    # The staff alert when unresolved failures pile up (once per crossing).
    {"func": retries.alert_on_failures, "cron": "*/5 * * * *", "job_timeout": 120, "result_ttl": 3600},
    # Card payments left open (a crash, a lost answer, an abandoned 3-D Secure): settle, fail or cancel.
    {"func": payments.reconcile_payments, "cron": "*/5 * * * *", "job_timeout": 600},
    # Idempotency records past expiry, RATE counters of long-closed windows.
    {"func": maintenance.purge_expired, "cron": "17 * * * *", "job_timeout": 1800},
]

for _spec in PERIODIC_JOBS:
    cron.register(queue_name=_spec["func"].queue, **_spec)
