"""Every setting comes from the environment (and `.env`), with defaults for local use."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _bool(value: str | None, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _int(value: str | None, default: int) -> int:
    return default if value in (None, "") else int(value)


def load_config(env: dict[str, str] | None = None, instance_path: str | None = None) -> dict[str, Any]:
    """Build the settings dict from an environment mapping (os.environ by default)."""
    env = dict(os.environ if env is None else env)
    instance = Path(instance_path or env.get("PORTAL_INSTANCE_PATH") or Path.cwd() / "instance")
    database_url = env.get("DATABASE_URL") or f"sqlite:///{instance / 'portal.db'}"
    # Heroku-style URLs name the old driver; psycopg 3 is the one we ship.
    if database_url.startswith("postgres://"):
        database_url = "postgresql://" + database_url[len("postgres://"):]
    if database_url.startswith("postgresql://"):
        database_url = "postgresql+psycopg://" + database_url[len("postgresql://"):]
    redis_url = env.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    return {
        "ENV_NAME": env.get("PORTAL_ENV", "development"),
        "SECRET_KEY": env.get("SECRET_KEY", "dev-only-secret-change-me"),
        "SQLALCHEMY_DATABASE_URI": database_url,
        # Pooled connections are pinged only after sitting idle (extensions.configure_pool_pings),
        # not on every checkout as pool_pre_ping would. Keep the pool at least as large as the
        # web server's threads per process: a connection beyond the pool is opened and closed
        # for each request (on PostgreSQL a new server process every time).
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_size": _int(env.get("DATABASE_POOL_SIZE"), 10)},
        "REDIS_URL": redis_url,
        # Sessions and CSRF
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": _bool(env.get("SESSION_COOKIE_SECURE"), False),
        "REMEMBER_COOKIE_HTTPONLY": True,
        "WTF_CSRF_TIME_LIMIT": _int(env.get("WTF_CSRF_TIME_LIMIT"), 3600 * 8),
        # Rate limits (login attempts); Redis in production, memory for a single process
        "RATELIMIT_STORAGE_URI": env.get("RATELIMIT_STORAGE_URI", "memory://"),
        "RATELIMIT_ENABLED": _bool(env.get("RATELIMIT_ENABLED"), True),
        "LOGIN_RATE_LIMIT": env.get("LOGIN_RATE_LIMIT", "10 per minute;50 per hour"),
        # Billing
        "DEFAULT_CURRENCY": env.get("DEFAULT_CURRENCY", "USD"),
        "DEFAULT_LOCALE": env.get("DEFAULT_LOCALE", "en_US"),
        "GRACE_PERIOD_DAYS": _int(env.get("GRACE_PERIOD_DAYS"), 3),
        "RENEWAL_REMINDER_DAYS": _int(env.get("RENEWAL_REMINDER_DAYS"), 7),
        # Due subscriptions per renewal job (the sweep fans out one job per batch on the billing queue).
        # A job costs ~120 ms before its first renewal (a forked work horse: a new database connection,
        # cold statement caches, the plans read): 2.4 ms per renewal at 50, 0.6 at 200. A batch must end
        # well within RQ's 180 s job timeout: 200 card renewals at ~0.5 s per Stripe charge take ~100 s.
        "RENEWAL_BATCH_SIZE": _int(env.get("RENEWAL_BATCH_SIZE"), 200),
        # A subscription handed to a renewal job is not handed out again for this long (a job that died
        # is retried by the sweep after it).
        "RENEWAL_LEASE_MINUTES": _int(env.get("RENEWAL_LEASE_MINUTES"), 15),
        # Retries of failed operations (DESIGN §4). Exponential backoff with full jitter (transient errors):
        # the n-th retry waits a random time up to min(cap, base * 2^(n-1)).
        "RETRY_BACKOFF_BASE_SECONDS": _int(env.get("RETRY_BACKOFF_BASE_SECONDS"), 60),
        "RETRY_BACKOFF_CAP_SECONDS": _int(env.get("RETRY_BACKOFF_CAP_SECONDS"), 6 * 3600),
        "RETRY_BACKOFF_MAX_ATTEMPTS": _int(env.get("RETRY_BACKOFF_MAX_ATTEMPTS"), 8),
        # Immediate (refunds): tries one after another, then a person.
        "RETRY_IMMEDIATE_MAX_ATTEMPTS": _int(env.get("RETRY_IMMEDIATE_MAX_ATTEMPTS"), 3),
        # Fixed interval (a declined card, insufficient funds): with a 3-day grace period, tries at
        # 0, 24 and 48 hours, the last a day before grace ends; a try that would land after the
        # deadline (grace) is not made.
        "RETRY_FIXED_INTERVAL_HOURS": _int(env.get("RETRY_FIXED_INTERVAL_HOURS"), 24),
        "RETRY_FIXED_MAX_ATTEMPTS": _int(env.get("RETRY_FIXED_MAX_ATTEMPTS"), 3),
        # A try whose outcome is still unknown (the bank is working on it) is looked at again after this.
        "RETRY_WAIT_MINUTES": _int(env.get("RETRY_WAIT_MINUTES"), 15),
        # Errors claimed per statement by process_pending_retries, and how long a claim holds (a processor
        # that died lets the next run take its errors after it).
        "RETRY_BATCH_SIZE": _int(env.get("RETRY_BATCH_SIZE"), 50),
        "RETRY_CLAIM_MINUTES": _int(env.get("RETRY_CLAIM_MINUTES"), 10),
        # The staff alert (to STAFF_ALERT_EMAIL) goes out when unresolved failures reach this count, or
        # the oldest is this old; once per crossing. The age is past the grace period (a failed renewal
        # is retried and then closed within it), so only a failure that is stuck raises it.
        "STAFF_ALERT_MIN_FAILURES": _int(env.get("STAFF_ALERT_MIN_FAILURES"), 10),
        "STAFF_ALERT_MAX_AGE_HOURS": _int(env.get("STAFF_ALERT_MAX_AGE_HOURS"), 96),
        "WALLET_MAX_TOPUP": _int(env.get("WALLET_MAX_TOPUP"), 1_000_000),  # minor units
        "WALLET_MIN_TOPUP": _int(env.get("WALLET_MIN_TOPUP"), 500),
        "BILLING_TZ": env.get("TZ", "UTC"),
        # Stripe (localstripe in make run / tests: STRIPE_API_BASE=http://127.0.0.1:8420)
        "STRIPE_SECRET_KEY": env.get("STRIPE_SECRET_KEY", "sk_test_local"),
        "STRIPE_PUBLISHABLE_KEY": env.get("STRIPE_PUBLISHABLE_KEY", "pk_test_local"),
        "STRIPE_API_BASE": env.get("STRIPE_API_BASE", ""),
        "STRIPE_JS_URL": env.get("STRIPE_JS_URL", "https://js.stripe.com/v3/"),
        "STRIPE_WEBHOOK_SECRET": env.get("STRIPE_WEBHOOK_SECRET", "whsec_local"),
        # Starts every Idempotency-Key we send to Stripe, so installations sharing one Stripe account
        # never reuse each other's keys; empty = derived from SECRET_KEY (one per installation).
        "STRIPE_IDEMPOTENCY_PREFIX": env.get("STRIPE_IDEMPOTENCY_PREFIX", ""),
        # Card payments still open (pending, or waiting for 3-D Secure) after this many minutes are
        # reconciled with Stripe by a periodic job: settled, failed, or cancelled and released.
        "PAYMENT_RECONCILE_AFTER_MINUTES": _int(env.get("PAYMENT_RECONCILE_AFTER_MINUTES"), 30),
        # A payment still waiting for the customer's bank (3-D Secure) this long gets one email with the link.
        "PAYMENT_AUTH_REMINDER_MINUTES": _int(env.get("PAYMENT_AUTH_REMINDER_MINUTES"), 10),
        # Mail
        "MAIL_SERVER": env.get("MAIL_SERVER", "127.0.0.1"),
        "MAIL_PORT": _int(env.get("MAIL_PORT"), 8025),
        "MAIL_USE_TLS": _bool(env.get("MAIL_USE_TLS"), False),
        "MAIL_USE_SSL": _bool(env.get("MAIL_USE_SSL"), False),
        "MAIL_USERNAME": env.get("MAIL_USERNAME") or None,
        "MAIL_PASSWORD": env.get("MAIL_PASSWORD") or None,
        "MAIL_DEFAULT_SENDER": env.get("MAIL_DEFAULT_SENDER", "Subscription Portal <billing@portal.test>"),
        "STAFF_ALERT_EMAIL": env.get("STAFF_ALERT_EMAIL", "ops@portal.test"),
        # Seconds an SMTP connection may take (Flask-Mail sets none).
        "MAIL_TIMEOUT": float(env.get("MAIL_TIMEOUT") or 10),
        # Minutes to wait before each retry of an email that failed; one more try than delays in all.
        "EMAIL_RETRY_MINUTES": env.get("EMAIL_RETRY_MINUTES", "1,5,15,60"),
        # A sender holds an email this long while sending it; after that another may take it over once.
        "EMAIL_CLAIM_SECONDS": _int(env.get("EMAIL_CLAIM_SECONDS"), 600),
        # Where the portal is reached: links in emails are absolute to it.
        "PORTAL_BASE_URL": env.get("PORTAL_BASE_URL", "http://127.0.0.1:5000"),
        # Password hashing cost (tests lower it; production keeps argon2's defaults)
        "ARGON2_TIME_COST": _int(env.get("ARGON2_TIME_COST"), 3),
        "ARGON2_MEMORY_COST": _int(env.get("ARGON2_MEMORY_COST"), 65536),
        "INSTANCE_PATH": str(instance),
        # A fixed billing time (ISO 8601, e.g. 2026-01-31T09:00:00+00:00) for tests and demos; empty = real time.
        "CLOCK_FROZEN_AT": env.get("PORTAL_CLOCK_FROZEN_AT", ""),
        # Billing time may be moved with `flask clock set|advance|reset`, shared by every process through
        # the database. `make run` sets it; production never should (it then reads the real clock only).
        "CLOCK_ADJUSTABLE": _bool(env.get("CLOCK_ADJUSTABLE"), False),
    }
