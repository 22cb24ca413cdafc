"""Email jobs: one email after the commit that queued it, and the sweep that sends what is due
(retries, and anything whose enqueue was lost)."""
from __future__ import annotations

from worker import job


@job("emails")
def send_email(email_id: int) -> str:
    """One try of one queued email (see portal.services.notifications.delivery)."""
    from portal.services.notifications import delivery

    return delivery.deliver(email_id)


@job("emails")
def send_due() -> dict[str, int]:
    """Every email due now, by the billing clock: retries after failures, claims that lapsed."""
    from portal.services.notifications import delivery

    return delivery.deliver_due()
