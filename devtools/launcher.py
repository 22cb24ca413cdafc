"""python -m devtools.launcher run: the whole portal on one machine, stopped with one Ctrl-C.

Starts the stand-ins the environment does not already point elsewhere (Redis unless REDIS_URL
is set, localstripe unless STRIPE_API_BASE is set, the mail catcher unless MAIL_SERVER is
set), applies migrations, seeds the demo data (idempotent), then runs the worker with its
scheduler and the web server (gunicorn, 2 workers) on http://127.0.0.1:5000 (PORT overrides).
SIGINT or SIGTERM stops everything it started; if any child dies, the rest are stopped and
it exits non-zero.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from devtools.embedded import (
    EmbeddedMail,
    EmbeddedRedis,
    EmbeddedServiceError,
    EmbeddedStripe,
    kill_group,
    port_in_use,
)
from worker.subprocesses import die_with_parent


class Shutdown(Exception):
    """A stop signal arrived."""


def _on_signal(signum, frame):
    raise Shutdown(signum)


def say(message: str) -> None:
    print(f"[launcher] {message}", flush=True)


def _gunicorn_extra_args() -> list[str]:
    # gunicorn >= 25 opens a control socket at a fixed ~/.gunicorn path: two copies would clash.
    from gunicorn.config import Config

    return ["--no-control-socket"] if "control_socket_disable" in Config().settings else []


class Launcher:
    def __init__(self, instance: Path, web_port: int, web_workers: int) -> None:
        self.instance = instance
        self.logs = instance / "logs"
        self.web_port = web_port
        self.web_workers = web_workers
        self.env = dict(os.environ)
        self.services: list = []  # embedded stand-ins, in start order
        self.processes: list[tuple[str, subprocess.Popen]] = []  # worker and web

    # --- steps ---------------------------------------------------------------------------------

    def check_ports(self) -> None:
        """Fail before starting anything when a fixed port is taken, naming the variable to change."""
        wanted = [("PORT", self.web_port)]
        if "STRIPE_API_BASE" not in self.env:
            wanted.append(("STRIPE_PORT", int(self.env.get("STRIPE_PORT") or 8420)))
        if "MAIL_SERVER" not in self.env:
            wanted.append(("MAIL_PORT", int(self.env.get("MAIL_PORT") or 8025)))
        for variable, port in wanted:
            if port_in_use(port):
                raise SystemExit(
                    f"[launcher] port {port} is already in use (another `make run`?); "
                    f"stop that, or choose another port: {variable}=... make run"
                )

    def start_services(self) -> None:
        env = self.env
        env["TZ"] = "UTC"
        if "REDIS_URL" not in env:
            port = int(env["REDIS_PORT"]) if env.get("REDIS_PORT") else None
            redis = self._start(EmbeddedRedis(self.instance / "redis", port=port, log_path=self.logs / "redis.log"))
            env["REDIS_URL"] = redis.url
        if "STRIPE_API_BASE" not in env:
            port = int(env.get("STRIPE_PORT") or 8420)
            stripe = self._start(EmbeddedStripe(port=port, log_path=self.logs / "localstripe.log"))
            env["STRIPE_API_BASE"] = stripe.url
        if "MAIL_SERVER" not in env:
            port = int(env.get("MAIL_PORT") or 8025)
            mail = self._start(
                EmbeddedMail(self.instance / "mail", port=port, log_path=self.logs / "mailcatcher.log")
            )
            env["MAIL_SERVER"] = mail.host
            env["MAIL_PORT"] = str(mail.port)
            env["PORTAL_MAILDIR"] = str(mail.maildir.resolve())
        env.setdefault("RATELIMIT_STORAGE_URI", env["REDIS_URL"])
        # Links in emails point at this server.
        env.setdefault("PORTAL_BASE_URL", f"http://127.0.0.1:{self.web_port}")
        # A demo walks the days: `flask --app wsgi clock advance 30d` moves billing time for every process.
        env.setdefault("CLOCK_ADJUSTABLE", "1")
        self.write_run_env()

    #: What commands run beside `make run` need to reach the same services (read by wsgi.py).
    RUN_ENV_KEYS = ("REDIS_URL", "STRIPE_API_BASE", "MAIL_SERVER", "MAIL_PORT", "PORTAL_BASE_URL",
                    "CLOCK_ADJUSTABLE", "RATELIMIT_STORAGE_URI", "TZ")

    @property
    def run_env_path(self) -> Path:
        return self.instance / "make-run.env"

    def write_run_env(self) -> None:
        lines = ["# Written by `make run` (devtools/launcher.py) while it runs, for `flask --app wsgi ...`",
                 "# commands run from the checkout meanwhile; removed when it stops."]
        lines += [f"{key}={self.env[key]}" for key in self.RUN_ENV_KEYS if self.env.get(key)]
        self.run_env_path.write_text("\n".join(lines) + "\n")

    def _start(self, service):
        say(f"starting {service.name} ...")
        self.services.append(service)
        service.start()
        say(f"{service.name} ready at {service.url} (log: {service.log_path})")
        return service

    def flask(self, *args: str) -> None:
        """Run a flask command to completion, its output passed through; fail loudly."""
        cmd = [sys.executable, "-m", "flask", "--app", "wsgi", *args]
        say("$ flask " + " ".join(args))
        result = subprocess.run(cmd, env=self.env, start_new_session=True, preexec_fn=die_with_parent)
        if result.returncode != 0:
            raise SystemExit(f"[launcher] `flask {' '.join(args)}` failed with code {result.returncode}")

    def spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, env=self.env, start_new_session=True, preexec_fn=die_with_parent)
        self.processes.append((name, proc))
        return proc

    def start_worker(self) -> None:
        self.spawn("worker", [sys.executable, "-m", "worker"])

    def start_web(self) -> None:
        self.spawn(
            "web",
            [
                sys.executable, "-m", "gunicorn",
                "--bind", f"127.0.0.1:{self.web_port}",
                "--workers", str(self.web_workers),
                "--graceful-timeout", "3",
                "--timeout", "60",
                "--access-logfile", str(self.logs / "access.log"),
                *_gunicorn_extra_args(),
                "wsgi:app",
            ],
        )

    def wait_for_web(self, timeout: float = 60.0) -> None:
        url = f"http://127.0.0.1:{self.web_port}/healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_children()
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # it answers HTTP: serving (even if /healthz is not there yet)
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        raise SystemExit(f"[launcher] the web server did not answer on {url} within {timeout:.0f}s")

    def check_children(self) -> None:
        for name, proc in self.processes:
            if proc.poll() is not None:
                raise SystemExit(f"[launcher] {name} exited with code {proc.returncode}; stopping everything")
        for service in self.services:
            if not service.running:
                raise SystemExit(f"[launcher] {service.name} died (log: {service.log_path}); stopping everything")

    def banner(self) -> None:
        env = self.env
        lines = [
            f"Subscription Portal: http://127.0.0.1:{self.web_port}",
            "Demo customer and staff logins: printed above by `flask seed-demo`",
            f"Redis:  {env['REDIS_URL']}",
            f"Stripe: {env.get('STRIPE_API_BASE') or 'api.stripe.com'}",
        ]
        if env.get("PORTAL_MAILDIR"):
            lines.append(f"Mail:   smtp://{env['MAIL_SERVER']}:{env['MAIL_PORT']} -> {env['PORTAL_MAILDIR']}/*.eml")
        else:
            lines.append(f"Mail:   smtp://{env['MAIL_SERVER']}:{env.get('MAIL_PORT', '')}")
        lines += [f"Logs:   {self.logs}/", "Ctrl-C stops everything."]
        width = max(len(line) for line in lines) + 4
        print("=" * width, *(f"  {line}" for line in lines), "=" * width, sep="\n", flush=True)

    def stop(self) -> None:
        """Web first, then the worker, then the stand-ins: each SIGTERM, SIGKILL if it lingers."""
        for name, proc in reversed(self.processes):
            if proc.poll() is None:
                say(f"stopping {name} ...")
            kill_group(proc, timeout=8 if name == "worker" else 5)
        for service in reversed(self.services):
            if service.running:
                say(f"stopping {service.name} ...")
            service.stop()
        self.run_env_path.unlink(missing_ok=True)
        say("all stopped")

    def run(self) -> int:
        started = time.monotonic()
        self.instance.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.check_ports()
        self.start_services()
        self.flask("db", "upgrade")
        self.flask("seed-demo")
        self.start_worker()
        self.start_web()
        self.wait_for_web()
        self.banner()
        say(f"serving after {time.monotonic() - started:.1f}s")
        while True:
            self.check_children()
            time.sleep(0.25)


def run(args: argparse.Namespace) -> int:
    from dotenv import load_dotenv

    # The same .env the app reads decides which stand-ins are needed.
    load_dotenv(override=False)
    instance = Path(os.environ.get("PORTAL_INSTANCE_PATH") or Path.cwd() / "instance").resolve()
    launcher = Launcher(instance, web_port=int(os.environ.get("PORT") or 5000), web_workers=args.web_workers)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    code = 0
    try:
        launcher.run()
    except Shutdown as stop:
        say(f"got {signal.Signals(stop.args[0]).name}")
    except EmbeddedServiceError as exc:
        print(f"[launcher] {exc}", file=sys.stderr, flush=True)
        code = 1
    except SystemExit as exc:
        if exc.code not in (None, 0):
            print(exc.code if isinstance(exc.code, str) else f"[launcher] exit {exc.code}", file=sys.stderr, flush=True)
            code = exc.code if isinstance(exc.code, int) else 1
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        launcher.stop()
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.launcher", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="start everything and serve on http://127.0.0.1:5000")
    run_parser.add_argument("--web-workers", type=int, default=2, help="gunicorn worker processes")
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
