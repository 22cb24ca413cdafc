"""Every page of the staff navigation, in Debian's chromium, as an admin (who sees them all) and as support (who
does not see the plan editor): each renders, its navigation matches the role, and the browser logs no error.
Screenshots of each are saved under test-artifacts/screenshots/."""
from __future__ import annotations

import pytest

from tests.conftest import browser_login

pytestmark = pytest.mark.browser

PAGES = [("Overview", "/staff/"), ("Failures", "/staff/failures"), ("Customers", "/staff/customers"),
         ("Plans", "/staff/plans"), ("Revenue", "/staff/revenue"), ("Queues", "/staff/queues"),
         ("Emails", "/staff/emails"), ("Audit log", "/staff/audit")]


@pytest.mark.parametrize("role", ["admin", "support"])
def test_every_staff_page_in_the_navigation_renders_for_its_role(catalog, live_server, browser_page, shot, role):
    page, base = browser_page, live_server
    page.set_viewport_size({"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("response", lambda response: errors.append(f"{response.status} {response.url}")
            if response.status >= 400 and not response.url.endswith("/staff/plans") else None)
    login = {"admin": ("admin@portal.test", "admin-password-1"), "support": ("staff@portal.test", "staff-password-1")}
    browser_login(page, base, *login[role])
    wanted = [(label, path) for label, path in PAGES if role == "admin" or label != "Plans"]
    for label, path in wanted:
        response = page.goto(f"{base}{path}")
        assert response.status == 200, (path, response.status)
        nav = [text.strip() for text in page.locator("nav a").all_inner_texts()]
        assert [name for name, _ in wanted] == [name for name in nav if name in dict(PAGES)], nav
        shot(page, label.lower().replace(" ", "-"))
    if role == "support":
        assert page.goto(f"{base}/staff/plans").status == 403
    assert errors == []
