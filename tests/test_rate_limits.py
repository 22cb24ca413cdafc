"""Flask-Limiter as the portal uses it: decorated login limits, no per-request hook, the documented off switch.

`portal._limits_by_decorator_only` drops the limiter's global before_request hook while every
limit is a decorator on its view. Flask-Limiter has no public way to do that, so it reads
attributes of the version pyproject pins; the last test here fails when any of them moves.
"""
from __future__ import annotations

import flask
import pytest
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from portal import create_app
from portal.extensions import db, limiter
from tests.conftest import AuthActions, PortalClient, base_config


def limiter_hooks(app) -> list:
    return [hook for hook in app.before_request_funcs.get(None, []) if getattr(hook, "__self__", None) is limiter]


@pytest.fixture
def make_app(database_url, tmp_path, clock):
    """create_app on this test's database with extra settings (closed at the end of the test)."""
    made = []

    def make(**settings):
        app = create_app({**base_config(database_url, tmp_path), "CLOCK": clock, **settings})
        app.test_client_class = PortalClient
        made.append(app)
        return app

    yield make
    for app in made:
        with app.app_context():
            db.engine.dispose()


@pytest.fixture
def limiter_state_restored(monkeypatch):
    """The limiter is one module-level extension: limits one app's settings add stay on it for
    every later app, so put its (empty) app-wide limits back after the test."""
    manager = limiter.limit_manager
    monkeypatch.setattr(manager, "_application_limits", manager._application_limits)
    monkeypatch.setattr(manager, "_blueprint_limits", dict(manager._blueprint_limits))
    monkeypatch.setattr(limiter, "_meta_limits", limiter._meta_limits)
    monkeypatch.setattr(limiter, "_in_memory_fallback", limiter._in_memory_fallback)
    monkeypatch.setattr(limiter, "_in_memory_fallback_enabled", limiter._in_memory_fallback_enabled)
    monkeypatch.setattr(limiter, "enabled", limiter.enabled)


def test_ratelimit_enabled_false_starts_the_app_and_serves_its_pages(make_app, limiter_state_restored):
    """Flask-Limiter's documented off switch: the app starts, serves, and limits nothing."""
    app = make_app(RATELIMIT_ENABLED=False, LOGIN_RATE_LIMIT="1 per minute")
    assert limiter_hooks(app) == []
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    login_page = client.get("/login")
    assert login_page.status_code == 200 and 'name="password"' in login_page.get_data(as_text=True)
    statuses = [AuthActions(client).login(password=f"guess {i}").status_code for i in range(3)]
    assert statuses == [422, 422, 422]


def test_with_decorator_limits_only_no_request_pays_the_limiters_hook(make_app):
    app = make_app(LOGIN_RATE_LIMIT="2 per minute")
    assert limiter_hooks(app) == []
    client = app.test_client()
    statuses = [AuthActions(client).login(password=f"guess {i}").status_code for i in range(3)]
    assert statuses == [422, 422, 429], "the decorated login limit still holds"
    assert [client.get("/healthz").status_code for _ in range(5)] == [200] * 5


@pytest.mark.parametrize("settings", [
    {"RATELIMIT_APPLICATION": "2 per minute"},
    {"RATELIMIT_IN_MEMORY_FALLBACK": "2 per minute"},
], ids=["application", "in-memory-fallback"])
def test_an_app_wide_limit_keeps_the_hook(make_app, limiter_state_restored, settings):
    app = make_app(**settings)
    assert len(limiter_hooks(app)) == 1
    if "RATELIMIT_APPLICATION" in settings:
        assert [app.test_client().get("/healthz").status_code for _ in range(3)] == [200, 200, 429]


def test_a_blueprint_limit_keeps_the_hook(make_app, limiter_state_restored):
    from portal.blueprints import health

    limiter.limit("2 per minute")(health.bp)
    app = make_app()
    assert len(limiter_hooks(app)) == 1
    assert [app.test_client().get("/healthz").status_code for _ in range(3)] == [200, 200, 429]


def test_a_meta_limit_keeps_the_hook(make_app, limiter_state_restored):
    """A meta limit, once hit by a breach, answers 429 to every request: it needs the global hook."""
    app = make_app(RATELIMIT_META="1 per minute", LOGIN_RATE_LIMIT="1 per minute")
    assert len(limiter_hooks(app)) == 1
    client = app.test_client()
    assert [AuthActions(client).login(password=f"guess {i}").status_code for i in range(2)] == [422, 429]
    assert client.get("/healthz").status_code == 429


def test_the_flask_limiter_internals_the_portal_reads_are_where_it_reads_them():
    """Fails when a Flask-Limiter release moves what `_limits_by_decorator_only` relies on.

    On a bare Flask app with a limiter of its own: init_app registers exactly one before_request
    hook, a bound method of the limiter; each kind of app-wide limit lands in the attribute read
    for it, and a limiter without them leaves each one empty.
    """
    def read(lim: Limiter) -> dict:
        manager = lim.limit_manager
        return {"default": manager._default_limits, "application": manager._application_limits,
                "blueprint": manager._blueprint_limits, "meta": lim._meta_limits,
                "fallback": lim._in_memory_fallback}

    bare = flask.Flask("bare")
    bare.config["RATELIMIT_STORAGE_URI"] = "memory://"
    plain = Limiter(key_func=get_remote_address, default_limits=[])
    plain.init_app(bare)
    [hook] = bare.before_request_funcs[None]
    assert hook.__self__ is plain and callable(hook)
    assert not any(read(plain).values())

    everything = flask.Flask("everything")
    everything.config.update(RATELIMIT_STORAGE_URI="memory://", RATELIMIT_DEFAULT="5 per minute",
                             RATELIMIT_APPLICATION="50 per minute", RATELIMIT_META="2 per hour",
                             RATELIMIT_IN_MEMORY_FALLBACK="5 per minute")
    full = Limiter(key_func=get_remote_address)
    bp = flask.Blueprint("limited", __name__)
    full.limit("1 per second")(bp)
    full.init_app(everything)
    assert all(read(full).values()), read(full)
