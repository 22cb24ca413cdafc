"""The movable billing clock shared by every process (DESIGN §3.5, §5): `flask --app wsgi clock ...` in one
process, the next request or job of another reads it; refused unless CLOCK_ADJUSTABLE=1."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from portal import create_app
from portal.clock import SharedClock, now
from portal.extensions import db
from tests.conftest import REPO_ROOT, AuthActions, base_config


@pytest.fixture
def database(sqlite_template, tmp_path) -> str:
    path = tmp_path / "portal.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def shared_app(database, tmp_path):
    """An app as `make run` makes them: no clock of its own, the shared one (CLOCK_ADJUSTABLE)."""
    app = create_app({**base_config(database, tmp_path), "CLOCK_ADJUSTABLE": True})
    with app.app_context():
        from portal.seed import seed_demo

        seed_demo()
        db.session.commit()
        yield app
        db.session.remove()
        db.engine.dispose()


def flask_cli(database: str, tmp_path, *args: str, adjustable: bool = True) -> subprocess.CompletedProcess:
    """`flask --app wsgi ...` in its own process, on the test's database."""
    env = {**os.environ, "DATABASE_URL": database, "PORTAL_INSTANCE_PATH": str(tmp_path), "SECRET_KEY": "test",
           "REDIS_URL": "redis://127.0.0.1:1/0", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("CLOCK_ADJUSTABLE", None)
    if adjustable:
        env["CLOCK_ADJUSTABLE"] = "1"
    return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_moving_the_clock_is_refused_unless_clock_adjustable(database, tmp_path):
    for args in (["advance", "30d"], ["set", "2027-01-31"], ["reset"]):
        result = flask_cli(database, tmp_path, "clock", *args, adjustable=False)
        assert result.returncode != 0
        assert result.stderr.strip().splitlines() == [
            "Error: the clock cannot be moved here: set CLOCK_ADJUSTABLE=1 (make run does; production never should)"]
    shown = flask_cli(database, tmp_path, "clock", "show", adjustable=False)
    assert shown.returncode == 0 and "CLOCK_ADJUSTABLE is off" in shown.stdout


def test_bad_steps_and_instants_are_refused_with_a_clear_message(database, tmp_path):
    step = flask_cli(database, tmp_path, "clock", "advance", "2x")
    assert step.returncode == 2 and "use a whole number followed by d, h or m" in step.stderr
    instant = flask_cli(database, tmp_path, "clock", "set", "next tuesday")
    assert instant.returncode == 2 and "is not an ISO 8601 date or time" in instant.stderr


def test_a_move_made_by_the_cli_is_seen_by_the_next_request_of_another_process(shared_app, database, tmp_path):
    client = shared_app.test_client()
    AuthActions(client).login("demo@portal.test", "demo-password-1")
    assert "clock-banner" not in client.get("/subscription").get_data(as_text=True)

    moved = flask_cli(database, tmp_path, "clock", "set", "2027-01-31T14:00:00+00:00", "--freeze")
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.startswith("2027-01-31T14:00:00+00:00 (frozen; real time ")
    page = client.get("/subscription").get_data(as_text=True)
    assert "clock-banner" in page and "31 Jan 2027, 14:00 UTC" in page

    advanced = flask_cli(database, tmp_path, "clock", "advance", "30d")
    assert advanced.stdout.startswith("2027-03-02T14:00:00+00:00 (frozen")
    with shared_app.test_request_context():
        shared_app.preprocess_request()  # what every request does first: read the shared clock
        assert now() == datetime(2027, 3, 2, 14, tzinfo=timezone.utc)
    assert flask_cli(database, tmp_path, "clock", "advance", "-90m").stdout.startswith("2027-03-02T12:30:00")

    reset = flask_cli(database, tmp_path, "clock", "reset")
    assert "(the real time)" in reset.stdout
    assert "clock-banner" not in client.get("/subscription").get_data(as_text=True)


def test_a_moved_clock_runs_on_with_real_time_unless_frozen(shared_app, database, tmp_path):
    assert flask_cli(database, tmp_path, "clock", "set", "2030-06-01T00:00:00").returncode == 0
    clock = shared_app.extensions["clock"]
    assert isinstance(clock, SharedClock)
    clock.refresh()
    first = clock.now()
    assert abs(first - datetime(2030, 6, 1, tzinfo=timezone.utc)) < timedelta(seconds=30)
    assert clock.now() >= first and not clock.frozen
    shown = flask_cli(database, tmp_path, "clock", "show")
    assert "moved by +" in shown.stdout and shown.stdout.startswith("2030-06-01T")


def test_a_job_reads_the_shared_clock_when_it_starts(shared_app, database, tmp_path):
    from worker import job

    @job("default")
    def what_time_is_it() -> str:
        return now().isoformat()

    assert flask_cli(database, tmp_path, "clock", "set", "2028-02-29T12:00:00+00:00", "--freeze").returncode == 0
    assert what_time_is_it() == "2028-02-29T12:00:00+00:00"
    assert flask_cli(database, tmp_path, "clock", "advance", "1d").returncode == 0
    assert what_time_is_it() == "2028-03-01T12:00:00+00:00"


def test_production_ignores_a_stored_setting(database, tmp_path):
    assert flask_cli(database, tmp_path, "clock", "set", "2031-01-01", "--freeze").returncode == 0
    app = create_app({**base_config(database, tmp_path)})  # CLOCK_ADJUSTABLE off
    with app.app_context():
        assert abs(now() - datetime.now(timezone.utc)) < timedelta(minutes=1)
        db.engine.dispose()
