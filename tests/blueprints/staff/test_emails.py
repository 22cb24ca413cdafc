"""Staff: the email log and a preview of every kind, text and HTML side by side."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.models import EmailLog, EmailStatus, User
from portal.services import notifications
from portal.services.notifications import KINDS


def test_the_log_lists_kind_recipient_status_attempts_and_last_error(staff_client, catalog):
    alice = db.session.scalar(sa.select(User).where(User.email == "demo@portal.test"))
    notifications.notify(alice, "invoice_paid", KINDS["invoice_paid"].sample, key="a")
    failed_id = notifications.notify(alice, "topup_receipt", KINDS["topup_receipt"].sample, key="b")
    db.session.execute(sa.update(EmailLog).where(EmailLog.id == failed_id).values(
        status=EmailStatus.FAILED, attempts=2, last_error="SMTPServerDisconnected: gone"))
    db.session.commit()
    page = staff_client.get("/staff/emails").get_data(as_text=True)
    assert "demo@portal.test" in page and "Receipt for INV-000046" in page
    assert "SMTPServerDisconnected: gone" in page and ">2<" in page
    only_failed = staff_client.get("/staff/emails?status=failed").get_data(as_text=True)
    assert "Receipt: $25.00 added to your wallet" in only_failed and "Receipt for INV-000046" not in only_failed
    assert staff_client.get("/staff/emails?status=bogus").status_code == 400


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_previews_with_sample_data(staff_client, kind):
    page = staff_client.get(f"/staff/emails/previews/{kind}").get_data(as_text=True)
    assert 'id="preview-text"' in page and 'id="preview-html"' in page and "srcdoc=" in page
    assert KINDS[kind].facts[0] in page


def test_customers_may_not_see_the_email_log(alice_client):
    assert alice_client.get("/staff/emails").status_code == 403
    assert alice_client.get("/staff/emails/previews/invoice_paid").status_code == 403
    assert alice_client.get("/staff/emails/previews/nope").status_code == 403
