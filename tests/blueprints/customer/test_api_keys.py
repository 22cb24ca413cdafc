"""The API keys page: list, create (raw key shown once, stored hashed), revoke."""
from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.models import ApiKey, AuditLog
from portal.services import api_keys
from tests.conftest import csrf_from

KEY_RE = re.compile(r'id="new-api-key" value="(sp_live_[A-Za-z0-9_-]+)"')


def create(client, name: str, *, htmx: bool = False):
    token = csrf_from(client, "/account/api-keys")
    headers = {"HX-Request": "true"} if htmx else {}
    return client.post("/account/api-keys", data={"csrf_token": token, "name": name}, headers=headers)


def raw_key(response) -> str:
    match = KEY_RE.search(response.get_data(as_text=True))
    assert match, "the new key is not on the page"
    return match.group(1)


def revoke(client, key_id: int):
    token = csrf_from(client, "/account/api-keys")
    return client.post(f"/account/api-keys/{key_id}/revoke", data={"csrf_token": token})


def test_the_page_needs_a_login(client, catalog):
    response = client.get("/account/api-keys")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_empty_list(alice_client):
    html = alice_client.get("/account/api-keys").get_data(as_text=True)
    assert "No API keys yet" in html and 'name="name"' in html
    assert 'href="/account/api-keys" aria-current="page"' in html  # in the navigation


def test_create_shows_the_key_once_and_stores_only_its_hash(alice_client, alice):
    response = create(alice_client, "Quiz app")
    assert response.status_code == 201
    assert response.headers["Cache-Control"] == "no-store"
    html = response.get_data(as_text=True)
    raw = raw_key(response)
    assert "it will not be shown again" in html and 'data-copy="#new-api-key"' in html
    # Stored hashed: the raw key is in no column of any api_keys row.
    rows = db.session.execute(sa.text("SELECT * FROM api_keys")).all()
    assert len(rows) == 1
    assert not any(raw in str(value) for value in rows[0])
    key = db.session.scalar(sa.select(ApiKey))
    assert key.name == "Quiz app" and raw.startswith(key.prefix) and key.user_id == alice.id
    found = api_keys.authenticate(raw)
    assert found is not None and found[1].id == alice.id
    # Later visits list the key by its prefix, never the key itself.
    listing = alice_client.get("/account/api-keys").get_data(as_text=True)
    assert raw not in listing and f"<code>{key.prefix}…</code>" in listing
    row = re.search(rf'<tr id="api-key-{key.id}".*?</tr>', listing, re.S).group(0)
    assert "Quiz app" in row and "never" in row and "Active" in row
    assert db.session.scalar(sa.select(AuditLog.action).where(AuditLog.action == "api_key.created"))


def test_create_by_htmx_answers_with_the_partial(alice_client):
    response = create(alice_client, "Worker", htmx=True)
    assert response.status_code == 201 and response.headers["Cache-Control"] == "no-store"
    html = response.get_data(as_text=True)
    assert "<html" not in html and '<section id="api-key-create"' in html
    assert raw_key(response).startswith("sp_live_")
    # The list comes along out of band, with the new key in it.
    table = re.search(r'<div id="api-key-table"[^>]*>', html).group(0)
    assert 'hx-swap-oob="true"' in table and "Worker" in html


@pytest.mark.parametrize("name, message", [
    ("", "give the key a name"),
    ("   ", "give the key a name"),
    ("x" * 81, "names are at most 80 characters"),
])
def test_bad_names_are_field_errors(alice_client, name, message):
    response = create(alice_client, name)
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert message in html and 'aria-invalid="true"' in html and "<html" in html
    assert db.session.scalar(sa.select(sa.func.count()).select_from(ApiKey)) == 0


def test_bad_name_by_htmx_rerenders_the_form_only(alice_client):
    response = create(alice_client, "", htmx=True)
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert "<html" not in html and '<section id="api-key-create"' in html and "give the key a name" in html


def test_create_needs_the_csrf_token(alice_client):
    response = alice_client.post("/account/api-keys", data={"name": "No token"})
    assert response.status_code == 400
    assert db.session.scalar(sa.select(sa.func.count()).select_from(ApiKey)) == 0


def test_revoke_is_idempotent_and_stops_the_key(alice_client):
    raw = raw_key(create(alice_client, "Old app"))
    key = db.session.scalar(sa.select(ApiKey))
    key_id = key.id
    response = revoke(alice_client, key_id)
    assert response.status_code == 303 and response.headers["Location"].endswith("/account/api-keys")
    assert api_keys.authenticate(raw) is None
    db.session.expire_all()
    first = db.session.get(ApiKey, key_id).revoked_at
    assert first is not None
    assert revoke(alice_client, key_id).status_code == 303  # again: harmless
    db.session.expire_all()
    assert db.session.get(ApiKey, key_id).revoked_at == first
    listing = alice_client.get("/account/api-keys").get_data(as_text=True)
    row = re.search(rf'<tr id="api-key-{key_id}".*?</tr>', listing, re.S).group(0)
    assert "Revoked" in row and "/revoke" not in row
    assert "is revoked" in listing  # the flash
    assert db.session.scalar(sa.select(sa.func.count()).select_from(AuditLog)
                             .where(AuditLog.action == "api_key.revoked")) == 1


def test_revoke_needs_the_csrf_token(alice_client):
    raw = raw_key(create(alice_client, "App"))
    key_id = db.session.scalar(sa.select(ApiKey.id))
    assert alice_client.post(f"/account/api-keys/{key_id}/revoke").status_code == 400
    assert api_keys.authenticate(raw) is not None


def test_another_customers_key_is_not_found(alice_client, bob):
    key, raw = api_keys.create(bob, "Bob's app")
    db.session.commit()
    key_id = key.id
    assert revoke(alice_client, key_id).status_code == 404
    assert revoke(alice_client, 999_999).status_code == 404
    assert api_keys.authenticate(raw) is not None
    assert "Bob's app" not in alice_client.get("/account/api-keys").get_data(as_text=True)


def test_last_use_is_shown(alice_client, alice, clock):
    key, _ = api_keys.create(alice, "Busy app")
    db.session.flush()
    api_keys.touch(key)
    db.session.commit()
    html = alice_client.get("/account/api-keys").get_data(as_text=True)
    row = re.search(r'<tr id="api-key-\d+".*?</tr>', html, re.S).group(0)
    assert "31 Jan 2026, 09:00 UTC" in row and "never" not in row
