"""Register, log in and out, change password; sessions that can be ended; staff-only areas."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.models import Role, User
from portal.services import auth as accounts
from portal.services.subscriptions import live_subscription
from tests.conftest import AuthActions, csrf_from


@pytest.fixture
def free_plan(app):
    from portal.services.catalog import create_plan

    create_plan("free", "Free", price_amount=0, is_default=True)
    db.session.commit()


def _user(email="alice@example.com") -> User:
    return db.session.scalar(sa.select(User).where(User.email == email))


def test_register_creates_a_customer_on_the_free_plan_with_an_argon2id_hash(client, auth, free_plan):
    response = auth.register(email="Alice@Example.com ")
    assert response.status_code == 302 and response.headers["Location"].endswith("/home")
    user = _user()
    assert user.role is Role.CUSTOMER
    assert user.password_hash.startswith("$argon2id$")
    assert live_subscription(user.id).plan.code == "free"
    assert "Free plan" in client.get("/home").get_data(as_text=True)


def test_register_rejects_bad_input_with_field_errors_and_writes_nothing(client, free_plan):
    token = csrf_from(client, "/register")
    response = client.post("/register", data={"csrf_token": token, "email": "not-an-email",
                                              "password": "short", "confirm": "different"})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert "Invalid email address." in html and "Use between 10 and 128 characters." in html
    assert "The passwords differ." in html
    assert db.session.scalar(sa.select(sa.func.count()).select_from(User)) == 0


def test_duplicate_email_is_refused(client, auth, free_plan):
    auth.register()
    auth.logout()
    response = auth.register()
    assert response.status_code == 422
    assert "already exists" in response.get_data(as_text=True)


def test_login_with_wrong_password_is_refused(client, auth, free_plan):
    auth.register()
    auth.logout()
    response = auth.login(password="wrong password!!")
    assert response.status_code == 422
    assert "Email or password is not correct." in response.get_data(as_text=True)
    assert client.get("/home").status_code == 302


def test_login_starts_a_new_session(client, auth, free_plan):
    auth.register()
    auth.logout()
    with client.session_transaction() as session:
        session["planted"] = "by an attacker"
        session["sid"] = "fixed"
    assert auth.login().status_code == 302
    with client.session_transaction() as session:
        assert "planted" not in session
        assert session["sid"] != "fixed"
        assert session["_user_id"].startswith(f"{_user().id}:")


def test_logout_ends_every_session_of_the_account(app, free_plan):
    first, second = app.test_client(), app.test_client()
    AuthActions(first).register()
    AuthActions(second).login()
    assert second.get("/home").status_code == 200
    AuthActions(first).logout()
    assert first.get("/home").status_code == 302
    assert second.get("/home").status_code == 302  # the other device is logged out too


def test_password_change_ends_other_sessions_but_keeps_this_one(app, free_plan):
    here, elsewhere = app.test_client(), app.test_client()
    AuthActions(here).register()
    AuthActions(elsewhere).login()
    token = csrf_from(here, "/account/password")
    response = here.post("/account/password", data={
        "csrf_token": token, "current": "correct horse battery",
        "password": "a brand new passphrase", "confirm": "a brand new passphrase",
    })
    assert response.status_code == 302
    assert here.get("/home").status_code == 200
    assert elsewhere.get("/home").status_code == 302
    assert accounts.authenticate("alice@example.com", "a brand new passphrase") is not None
    assert accounts.authenticate("alice@example.com", "correct horse battery") is None


def test_password_change_needs_the_current_password(client, auth, free_plan):
    auth.register()
    token = csrf_from(client, "/account/password")
    response = client.post("/account/password", data={
        "csrf_token": token, "current": "not my password", "password": "another passphrase",
        "confirm": "another passphrase",
    })
    assert response.status_code == 422
    assert "current password is not correct" in response.get_data(as_text=True)


def test_staff_area_refuses_customers_and_admits_staff(app, client, auth, free_plan):
    assert client.get("/staff/").status_code == 302  # anonymous → log in
    auth.register()
    assert client.get("/staff/").status_code == 403
    accounts.register("sam@example.com", "support password", "Sam", role=Role.SUPPORT)
    db.session.commit()
    staff = app.test_client()
    AuthActions(staff).login("sam@example.com", "support password")
    assert staff.get("/staff/").status_code == 200


def test_post_without_csrf_token_is_400(client, free_plan):
    response = client.post("/login", data={"email": "a@b.c", "password": "whatever"})
    assert response.status_code == 400
    assert "security token" in response.get_data(as_text=True)


@pytest.mark.parametrize("app_config", [{"LOGIN_RATE_LIMIT": "5 per minute"}])
def test_login_attempts_are_rate_limited(client, auth, free_plan):
    statuses = [auth.login(password=f"guess number {i}").status_code for i in range(6)]
    assert statuses[:5] == [422] * 5
    assert statuses[5] == 429


@pytest.fixture
def limiter_defaults_restored(monkeypatch):
    """The limiter is one module-level extension: a default limit set by one app's config stays
    on it for every later app, so put its (empty) defaults back after the test."""
    from portal.extensions import limiter

    monkeypatch.setattr(limiter.limit_manager, "_default_limits", limiter.limit_manager._default_limits)


@pytest.mark.parametrize("app_config", [{"RATELIMIT_DEFAULT": "3 per minute"}])
def test_a_configured_default_limit_still_applies_to_views_without_their_own(limiter_defaults_restored, client,
                                                                                free_plan):
    """The portal drops the limiter's per-request hook (which enforces default limits on views
    without a decorator, e.g. /healthz) only while no such limit exists."""
    statuses = [client.get("/healthz").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


def test_open_redirects_are_ignored(client, auth, free_plan):
    auth.register()
    auth.logout()
    token = csrf_from(client, "/login")
    response = client.post("/login?next=https://evil.example/", data={
        "csrf_token": token, "email": "alice@example.com", "password": "correct horse battery"})
    assert response.headers["Location"] == "/home"


def test_the_demo_logins_printed_by_seed_demo_work(app, catalog):
    """The seeded accounts use the reserved .test domain; logging in with them must work."""
    for email, password, home in [("demo@portal.test", "demo-password-1", "/home"),
                                  ("staff@portal.test", "staff-password-1", "/staff/")]:
        response = AuthActions(app.test_client()).login(email, password)
        assert response.status_code == 302 and response.headers["Location"] == home


def test_an_htmx_request_without_a_session_is_told_to_go_to_the_login_page(client, catalog):
    """The usage meters poll every 10 s: when the session ends they must not swap the login page in."""
    response = client.get("/usage/meters", headers={"HX-Request": "true"})
    assert response.status_code == 401
    assert response.headers["HX-Redirect"].startswith("/login?next=/usage/meters")
    plain = client.get("/usage")
    assert plain.status_code == 302 and plain.headers["Location"].startswith("/login?next=")
