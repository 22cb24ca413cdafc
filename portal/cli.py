"""Flask commands: seed-demo, create-staff."""
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
