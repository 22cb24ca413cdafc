"""The account page: the name emails greet, the time zone they show dates in, usage emails on or off."""
from __future__ import annotations

import re

import sqlalchemy as sa

from portal.extensions import db
from portal.models import User
from tests.conftest import csrf_from


def _alice() -> User:
    db.session.expire_all()
    return db.session.scalar(sa.select(User).where(User.email == "demo@portal.test"))


def test_settings_are_shown_and_saved(alice_client, alice):
    page = alice_client.get("/account").get_data(as_text=True)
    assert 'value="Alice Demo"' in page and 'name="usage_emails"' in page and "checked" in page
    assert '<option value="Europe/Paris">' in page
    token = csrf_from(alice_client, "/account")
    saved = alice_client.post("/account", data={"csrf_token": token, "name": "Alice D.", "timezone": "Europe/Paris"})
    assert saved.status_code == 303
    alice = _alice()
    assert (alice.name, alice.timezone, alice.usage_emails) == ("Alice D.", "Europe/Paris", False)
    assert "Your settings are saved." in alice_client.get("/account").get_data(as_text=True)


def test_an_unknown_time_zone_is_a_field_error_and_changes_nothing(alice_client, alice):
    token = csrf_from(alice_client, "/account")
    response = alice_client.post("/account", data={"csrf_token": token, "name": "X", "timezone": "Mars/Olympus",
                                                   "usage_emails": "y"})
    assert response.status_code == 422
    error = re.search(r'<small class="field-error" id="timezone-error">([^<]*)</small>', response.get_data(as_text=True))
    assert error and "Choose a time zone from the list" in error.group(1)
    assert (_alice().name, _alice().timezone) == ("Alice Demo", None)


def test_the_account_page_needs_a_login(client, catalog):
    response = client.get("/account")
    assert response.status_code == 302 and "/login" in response.headers["Location"]
