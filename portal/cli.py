"""Flask commands: seed-demo, create-staff, clock (show | set | advance | reset).

`jobs run-due` is the worker's (worker/cli.py, registered as a Flask command plug-in).
"""
from __future__ import annotations

import click
from flask import Flask

from portal.extensions import db


def register(app: Flask) -> None:
    @app.cli.command("seed-demo")
    def seed_demo_command():
        """Create the demo plans and accounts (once; later runs change nothing)."""
        from portal.seed import demo_logins, seed_demo

        created = seed_demo()
        db.session.commit()
        click.echo("Demo data created." if created else "Demo data already present; nothing changed.")
        for role, email, password in demo_logins():
            click.echo(f"  {role:<9} {email}  password: {password}")

    @app.cli.command("create-staff")
    @click.argument("email")
    @click.option("--role", type=click.Choice(["support", "admin"]), default="support")
    @click.option("--name", default="")
    @click.password_option()
    def create_staff(email: str, role: str, name: str, password: str):
        """Create a support or admin account."""
        from portal.models import Role
        from portal.services import auth

        try:
            user = auth.register(email, password, name, role=Role(role))
        except auth.AuthError as exc:
            raise click.ClickException(str(exc)) from exc
        db.session.commit()
        click.echo(f"Created {role} {user.email}")

    @app.cli.group("clock")
    def clock_group():
        """Billing time shared by the web, workers and commands (moved only where CLOCK_ADJUSTABLE=1)."""

    def _moved(change) -> None:
        from portal.services import clock as clock_service

        try:
            change(clock_service)
        except clock_service.ClockNotAdjustable as exc:
            raise click.ClickException(str(exc)) from exc
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from exc
        db.session.commit()
        click.echo(clock_service.state().describe())

    @clock_group.command("show")
    def clock_show():
        """Print billing time (and how it differs from the real time)."""
        from portal.services import clock as clock_service

        click.echo(clock_service.state().describe())

    @clock_group.command("set")
    @click.argument("instant")
    @click.option("--freeze", is_flag=True, help="Stand still at that instant instead of running on from it.")
    def clock_set(instant: str, freeze: bool):
        """Make billing time read INSTANT (ISO 8601; UTC unless it names a zone)."""
        _moved(lambda svc: svc.set_to(svc.parse_instant(instant), freeze=freeze))

    @clock_group.command("advance", context_settings={"ignore_unknown_options": True})
    @click.argument("step")
    def clock_advance(step: str):
        """Move billing time by STEP: 30d, 12h or 90m (a minus sign moves it back)."""
        _moved(lambda svc: svc.advance(svc.parse_step(step)))

    @clock_group.command("reset")
    def clock_reset():
        """Back to the real time."""
        _moved(lambda svc: svc.reset())
