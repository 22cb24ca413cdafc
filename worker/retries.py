"""Retry jobs: the processor every 5 minutes, one immediate retry after the commit that asked for it,
and the staff alert check (DESIGN §4, errors & retries)."""
from __future__ import annotations

from worker import job


@job("retries")
def process_pending_retries() -> dict[str, int]:
    """Every failed operation whose next try is due, tried once by its handler."""
    from portal.services.retries import processor

    return processor.process_pending_retries()


@job("retries")
def retry_error(error_id: int) -> str | None:
    """One try of an error due now (the immediate strategy: a refund's quick tries)."""
    from portal.services.retries import processor

    outcome = processor.retry_error(error_id)
    return outcome.value if outcome else None


@job("retries")
def alert_on_failures() -> bool:
    """Email staff once when unresolved failures pass STAFF_ALERT_MIN_FAILURES or STAFF_ALERT_MAX_AGE_HOURS."""
    from portal.services.retries import report

    return report.check_alert()
