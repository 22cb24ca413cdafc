"""Real processes for lifecycle tests: RQ worker processes (`python -m worker`) and `flask --app wsgi ...`
commands, sharing this test's database, Redis, localstripe, mail catcher and the shared billing clock."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import REPO_ROOT

#: Fault injections for worker processes (tests/faults/sitecustomize.py), enabled by PORTAL_FAULT.
FAULTS = REPO_ROOT / "tests" / "faults"


class Stack:
    """The environment every process of the portal gets (what `make run` would give them)."""

    def __init__(self, *, database_url: str, redis_url: str, stripe_url: str, mail_host: str, mail_port: int,
                 instance: Path, secret_key: str = "test-secret") -> None:
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "STRIPE_API_BASE": stripe_url,
            "MAIL_SERVER": mail_host,
            "MAIL_PORT": str(mail_port),
            "CLOCK_ADJUSTABLE": "1",
            "SECRET_KEY": secret_key,
            "PORTAL_INSTANCE_PATH": str(instance),
            "RATELIMIT_STORAGE_URI": "memory://",
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
        }
        self.workers: list[subprocess.Popen] = []
        self.logs = instance / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def app_config(self) -> dict:
        """Settings for an in-process app (the web side) on the same stack."""
        return {"REDIS_URL": self.env["REDIS_URL"], "STRIPE_API_BASE": self.env["STRIPE_API_BASE"],
                "MAIL_SERVER": self.env["MAIL_SERVER"], "MAIL_PORT": int(self.env["MAIL_PORT"]),
                "CLOCK_ADJUSTABLE": True, "SECRET_KEY": self.env["SECRET_KEY"]}

    def flask(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """`flask --app wsgi ARGS` in its own process; fails the test if it fails."""
        result = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=REPO_ROOT, env=self.env,
                                capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"flask {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        return result

    def start_workers(self, count: int = 1, *, fault: str | None = None, queues: tuple[str, ...] = ()) -> None:
        """`python -m worker --workers COUNT --no-scheduler`, waiting until each registered with Redis."""
        from redis import Redis
        from rq import Worker

        env = dict(self.env)
        if fault:
            env["PORTAL_FAULT"] = fault
            env["PORTAL_FAULT_MARKER"] = str(self.fault_marker(fault))
            env["PYTHONPATH"] = f"{FAULTS}{os.pathsep}{env['PYTHONPATH']}"
        args = [sys.executable, "-m", "worker", "--workers", str(count), "--no-scheduler"]
        if queues:
            args += ["--queues", *queues]
        log = open(self.logs / f"worker-{len(self.workers)}.log", "w")
        proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.workers.append(proc)
        conn = Redis.from_url(self.env["REDIS_URL"])
        wait_for(lambda: len(Worker.all(connection=conn)) >= count * len(self.workers) or proc.poll() is not None,
                 60, "the workers to start")
        assert proc.poll() is None, self.worker_log()

    def fault_marker(self, fault: str) -> Path:
        """The file a fault writes when it fires (tests/faults/sitecustomize.py)."""
        return self.logs.parent / f"{fault}.fired"

    def worker_log(self) -> str:
        return "\n".join(path.read_text() for path in sorted(self.logs.glob("worker-*.log")))

    def stop(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    """Poll another process's work until `condition` holds (this waits for them; it never moves time)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


@contextmanager
def pg_stack(request, tmp_path: Path, redis_url: str, name: str, **env: str) -> Iterator[Stack]:
    """A Stack on a fresh PostgreSQL database (from the migrated template) with no Stripe or SMTP to reach:
    for races between worker processes over rows the test writes. `env`: extra settings for the workers."""
    from tests.conftest import fresh_pg_database

    database = fresh_pg_database(request, name, template="portal_template")
    stack = Stack(database_url=database, redis_url=redis_url, stripe_url="http://127.0.0.1:1",
                  mail_host="127.0.0.1", mail_port=1, instance=tmp_path)
    stack.env.update(env)
    try:
        yield stack
    finally:
        stack.stop()


@contextmanager
def stack_app(stack: Stack, tmp_path: Path):
    """The in-process app (the test's side) on the same stack, its context pushed."""
    from portal import create_app
    from portal.extensions import db
    from tests.conftest import base_config

    app = create_app({**base_config(stack.env["DATABASE_URL"], tmp_path), **stack.app_config()})
    with app.app_context():
        yield app
        db.session.remove()
        db.engine.dispose()
