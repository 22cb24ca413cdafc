"""Flask commands: seed-demo, create-staff, clock (show | set | advance | reset), failures (report | retry |
strategy | resolve | give-up).

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

    @app.cli.group("failures")
    def failures_group():
        """Failed operations and their retries (what the staff pages show, from the command line)."""

    def _staff(email: str):
        import sqlalchemy as sa

        from portal.models import Role, User

        user = db.session.scalar(sa.select(User).where(sa.func.lower(User.email) == email.strip().lower()))
        if user is None or user.role not in (Role.SUPPORT, Role.ADMIN):
            raise click.BadParameter(f"{email} is not a support or admin account", param_hint="--by")
        return user

    def _error(error_id: int):
        from portal.models import OperationError

        error = db.session.get(OperationError, error_id)
        if error is None:
            raise click.BadParameter(f"no failure {error_id}", param_hint="ERROR_ID")
        return error

    def _describe(error) -> str:
        when = error.next_retry_at.isoformat() if error.next_retry_at else "-"
        return (f"#{error.id} {error.operation_type} {error.status.value} ({error.strategy.value}, "
                f"{error.attempts}/{error.max_attempts} tries, next {when}): {error.error_code}")

    @failures_group.command("report")
    def failures_report():
        """Unresolved failures by type: count, oldest, mean tries, waiting for a person, money at stake."""
        from portal.billing.money import format_money
        from portal.services.retries import report

        rows = report.failed_report().rows
        if not rows:
            click.echo("No unresolved failures.")
        for row in rows:
            stake = ", ".join(format_money(amount, currency) for currency, amount in sorted(row.amounts.items()))
            click.echo(f"{row.operation_type:<22} {row.count:>5}  oldest {row.oldest_at:%Y-%m-%d %H:%M}  "
                       f"mean tries {row.mean_attempts:.1f}  manual {row.manual}" + (f"  at stake {stake}" if stake else ""))

    def _act(error_id: int, by: str, action: str, change) -> None:
        from portal.services.audit import audit
        from portal.services.retries import processor

        staff = _staff(by)
        error = _error(error_id)
        try:
            data = change(processor, error, staff) or {}
        except processor.NotRetryable as exc:
            raise click.ClickException(str(exc)) from exc
        audit(f"failure.{action}", error, actor_id=staff.id, data=data)
        db.session.commit()
        click.echo(_describe(db.session.get(type(error), error.id)))

    @failures_group.command("retry")
    @click.argument("error_id", type=int)
    @click.option("--by", required=True, help="The staff account doing it (its email).")
    def failures_retry(error_id: int, by: str):
        """Try failure ERROR_ID once more now, whatever its schedule."""
        def change(processor, error, staff):
            return {"outcome": processor.retry_now(error.id, actor_id=staff.id).value}
        _act(error_id, by, "retry", change)

    @failures_group.command("strategy")
    @click.argument("error_id", type=int)
    @click.argument("strategy", type=click.Choice(["exponential", "immediate", "fixed_interval", "manual"]))
    @click.option("--by", required=True, help="The staff account doing it (its email).")
    def failures_strategy(error_id: int, strategy: str, by: str):
        """Retry failure ERROR_ID by STRATEGY from now on (manual stops the automatic tries)."""
        from portal.models import RetryStrategy

        def change(processor, error, staff):
            before = error.strategy.value
            processor.switch_strategy(error, RetryStrategy(strategy), actor_id=staff.id)
            return {"from": before, "to": strategy}
        _act(error_id, by, "strategy", change)

    for name, status_name in (("resolve", "RESOLVED"), ("give-up", "GAVE_UP")):
        def make(name: str, status_name: str):
            @failures_group.command(name, help=(
                "Close failure ERROR_ID as resolved (fixed another way), with a note." if name == "resolve"
                else "Close failure ERROR_ID as given up (nothing more will be tried), with a note."))
            @click.argument("error_id", type=int)
            @click.option("--note", required=True, help="Why (kept with the failure).")
            @click.option("--by", required=True, help="The staff account doing it (its email).")
            def command(error_id: int, note: str, by: str):
                from portal.models import ErrorStatus

                if not note.strip():
                    raise click.BadParameter("say why", param_hint="--note")

                def change(processor, error, staff):
                    processor.close(error, ErrorStatus[status_name], actor_id=staff.id, note=note.strip())
                    return {"note": note.strip()}
                _act(error_id, by, name, change)
        make(name, status_name)
