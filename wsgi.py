"""WSGI entry point (gunicorn wsgi:app) and the app of `flask --app wsgi ...` commands.

While `make run` runs, it leaves the settings of the services it started (Redis, localstripe, the
mail catcher, CLOCK_ADJUSTABLE) in `instance/make-run.env`, so commands run from the checkout in
another terminal (`flask --app wsgi clock advance 30d`, `jobs run-due`) reach the same services.
What the environment or `.env` sets wins; production has no such file.
"""
import os
from pathlib import Path

from dotenv import load_dotenv

from portal import create_app

load_dotenv(override=False)
_RUN_ENV = Path(os.environ.get("PORTAL_INSTANCE_PATH") or Path.cwd() / "instance") / "make-run.env"
if _RUN_ENV.is_file():
    load_dotenv(_RUN_ENV, override=False)

app = create_app()
