"""Subscription Portal: the application factory."""
from __future__ import annotations

from typing import Any

from flask import Flask


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app from the environment (and `.env`), then apply `config` overrides."""
    from dotenv import load_dotenv

    from portal.config import load_config

    load_dotenv(override=False)
    settings = load_config()
    settings.update(config or {})
    app = Flask(__name__, instance_path=settings["INSTANCE_PATH"])
    app.config.update(settings)
    register_clock(app)
    register_extensions(app)
    register_purchases()
    register_blueprints(app)
    _limits_by_decorator_only(app)
    register_errorhandlers(app)
    register_template_helpers(app)
    register_commands(app)
    return app


def register_clock(app: Flask) -> None:
    """The billing clock: a test's own (CLOCK), the shared movable one (CLOCK_ADJUSTABLE), a fixed
    instant (CLOCK_FROZEN_AT), else the real time."""
    from datetime import datetime

    from portal.billing.clock import FrozenClock, SystemClock
    from portal.clock import SharedClock

    clock = app.config.get("CLOCK")
    if clock is None and app.config.get("CLOCK_ADJUSTABLE"):
        clock = SharedClock()
    if clock is None and app.config.get("CLOCK_FROZEN_AT"):
        clock = FrozenClock(datetime.fromisoformat(app.config["CLOCK_FROZEN_AT"]))
    app.extensions["clock"] = clock or SystemClock()
    if isinstance(clock, SharedClock):
        # Each request reads the shared setting once, so a move made by `flask clock` is seen at once.
        app.before_request(clock.refresh)


def register_extensions(app: Flask) -> None:
    from portal import models  # noqa: F401  (every table registered before Alembic looks)
    from portal.extensions import (
        configure_pool_pings, configure_sqlite_engines, csrf, db, htmx, limiter, login_manager, mail, migrate,
    )

    configure_sqlite_engines()
    configure_pool_pings()
    db.init_app(app)
    migrate.init_app(app, db, directory=str(_migrations_dir()), render_as_batch=True, compare_type=True)
    login_manager.init_app(app)
    csrf.init_app(app)
    mail.init_app(app)
    htmx.init_app(app)
    limiter.init_app(app)
    from portal.extensions import PortalSessionInterface

    app.session_interface = PortalSessionInterface()
    from portal.services import auth as auth_service
    from portal.services import outbox

    auth_service.init_login_manager(login_manager)
    outbox.init_app(app)


def _limits_by_decorator_only(app: Flask) -> None:
    """Drop Flask-Limiter's per-request hook while every limit is a decorator on its view.

    A `@limiter.limit` view checks its own limit when it runs; the extension's global
    before_request hook exists for default, application-wide, blueprint, meta and in-memory
    fallback limits, which the portal does not configure, yet costs every request (the usage
    API's hot path most) its exemption lookups. Runs after the blueprints are registered, so a
    limit any of them declares is seen; should such limits be configured one day
    (RATELIMIT_DEFAULT and friends land in the limiter), the hook stays. With
    RATELIMIT_ENABLED=false Flask-Limiter registers no hook and checks nothing: nothing to drop.

    Flask-Limiter offers no public way to do this (init_app always registers the hook), so it
    rests on what its source does: the hook is the limiter's bound method in Flask's
    `before_request_funcs`, and those limits sit in the attributes read below. pyproject pins
    the minor version this was read against; tests/test_rate_limits.py fails when any of it moves.
    """
    from portal.extensions import limiter

    hooks = app.before_request_funcs.get(None, [])
    own = [hook for hook in hooks if getattr(hook, "__self__", None) is limiter]
    manager = limiter.limit_manager
    if not own or manager._default_limits or manager._application_limits or manager._blueprint_limits \
            or limiter._meta_limits or limiter._in_memory_fallback:
        return
    for hook in own:
        hooks.remove(hook)


def register_purchases() -> None:
    """Each kind of purchase registers its effect, and each failing operation its retry handler, where
    its domain lives; load them all, so a webhook or a job can settle any invoice and retry any failure
    whatever pages this process has served."""
    from portal.services import webhooks  # noqa: F401
    from portal.services.purchases import bank  # noqa: F401
    from portal.services.subscriptions import changes, renewals  # noqa: F401
    from portal.services.usage import packages  # noqa: F401
    from portal.services.wallet import topups  # noqa: F401


def register_blueprints(app: Flask) -> None:
    """Every blueprint, then one commit per request around every view (blueprints.transactions)."""
    from portal.blueprints import auth, health, transactions, webhooks
    from portal.blueprints.api import bp as api_bp
    from portal.blueprints.customer import bp as customer_bp
    from portal.blueprints.staff import bp as staff_bp

    app.register_blueprint(health.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(api_bp)
    # The API's limits are the plan's RATE features, enforced per customer by the usage service.
    from portal.extensions import limiter

    limiter.exempt(api_bp)
    app.register_blueprint(customer_bp)
    app.register_blueprint(staff_bp, url_prefix="/staff")
    app.register_blueprint(webhooks.bp)
    transactions.register(app)


def register_errorhandlers(app: Flask) -> None:
    from portal.blueprints.errors import register

    register(app)


def register_template_helpers(app: Flask) -> None:
    from portal.templating import register

    register(app)


def register_commands(app: Flask) -> None:
    from portal.cli import register

    register(app)


def _migrations_dir():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent / "migrations"
