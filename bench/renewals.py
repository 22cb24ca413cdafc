"""Benchmark: subscription renewals run by real RQ worker processes.

Two cases, each in a database of its own, copied afresh for every round from a template seeded
once with bulk SQL:

- **wallet**: N customers on Business ($49/month) whose period ended, each with the closing
  period's usage counters (api_calls 25,000, seats 12, emails 3,000: three priced USAGE lines) and
  a wallet holding $1,000 (one ledger credit explains it). Every renewal is paid from the wallet.
- **card**: M customers on Premium ($9.99) with an empty wallet and a saved default card at
  localstripe: every renewal is paid off session by a PaymentIntent.

Each round starts `python -m worker --workers W --no-scheduler --queues billing` (W RQ worker
processes, each forking a work horse per job) and waits until every worker has registered in
Redis; then the sweep runs here as the scheduler runs it (`worker.billing.renew_due`: leases the
due subscriptions, fans out `renew_subscriptions` jobs of RENEWAL_BATCH_SIZE after its commit), and
the clock runs from the sweep's start until every renewal invoice is paid. Every process (this one,
the workers, the sweep) reads the same frozen billing time (PORTAL_CLOCK_FROZEN_AT). Receipt emails
are queued (EmailLog rows, their send jobs waiting on the emails queue) but not sent: the workers
serve the billing queue only.

After each round the script counts paid renewal invoices, their lines, wallet debits, receipts,
'renew' events, card payments and PaymentIntents at localstripe, checks that every wallet's ledger
adds up to its balance and that no job failed, and exits non-zero if any figure is not what the
number of subscriptions says. CPU per renewal (from /proc: worker processes with their work horses,
PostgreSQL's backends, localstripe) says where the time went.

    .venv/bin/python bench/renewals.py                   # PostgreSQL, 10,000 wallet + 1,000 card, 3 rounds
    .venv/bin/python bench/renewals.py --tiny            # seconds, both databases (figures mean nothing)
    .venv/bin/python bench/renewals.py --profile 200     # renewals in this process under cProfile, SQL counted
"""
from __future__ import annotations

import contextlib
import cProfile
import io
import json
import os
import pstats
import re
import resource
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import cli  # noqa: E402
from devtools.embedded import EmbeddedRedis, EmbeddedStripe, kill_group, log_tail  # noqa: E402
from devtools.postgres import EmbeddedPostgres  # noqa: E402
from worker.subprocesses import die_with_parent  # noqa: E402

#: The measurement, and --tiny: the same steps at a size that runs in seconds (tests/test_bench.py).
#: batch_size None: the app's RENEWAL_BATCH_SIZE.
SIZES = {
    "full": {"subscriptions": 10_000, "card_subscriptions": 1_000, "rounds": 3, "workers": 2, "batch_size": None},
    "tiny": {"subscriptions": 20, "card_subscriptions": 5, "rounds": 1, "workers": 2, "batch_size": 5},
}

#: Billing time for every process; the closing period is February, the renewal opens March.
NOW = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)
ANCHOR = datetime(2026, 1, 1, tzinfo=timezone.utc)
PERIOD_START = datetime(2026, 2, 1, tzinfo=timezone.utc)
PERIOD_END = datetime(2026, 3, 1, tzinfo=timezone.utc)
#: The closing period's use of each wallet customer (all priced on Business: one invoice line each).
USAGE = {"api_calls": 25_000, "seats": 12, "emails": 3_000}
WALLET_BALANCE = 100_000  # $1,000.00; one renewal is $185.00
CASES = {  # case: (plan, lines per renewal invoice, wallet debits per renewal, card payments per renewal)
    "wallet": ("business", 1 + len(USAGE), 1, 0),
    "card": ("premium", 1, 0, 1),
}
SECRET_KEY = "bench-renewals"
STRIPE_KEY = "sk_test_local"
TEST_CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123"}


# --- services -----------------------------------------------------------------------------------------------

@dataclass
class Services:
    workdir: Path
    redis: EmbeddedRedis
    stripe: EmbeddedStripe | None
    pg: EmbeddedPostgres | None = None

    def redis_conn(self):
        from redis import Redis

        return Redis.from_url(self.redis.url)


def app_config(url: str, services: Services, batch_size: int) -> dict:
    return {
        "SQLALCHEMY_DATABASE_URI": url, "INSTANCE_PATH": str(services.workdir / "instance"),
        "REDIS_URL": services.redis.url, "SECRET_KEY": SECRET_KEY, "STRIPE_SECRET_KEY": STRIPE_KEY,
        "STRIPE_API_BASE": services.stripe.url if services.stripe else "", "CLOCK_FROZEN_AT": NOW.isoformat(),
        "CLOCK_ADJUSTABLE": False, "RENEWAL_BATCH_SIZE": batch_size, "ARGON2_TIME_COST": 1,
        "ARGON2_MEMORY_COST": 64, "RATELIMIT_ENABLED": False, "WTF_CSRF_ENABLED": False,
    }


def build_app(url: str, services: Services, batch_size: int):
    from portal import create_app

    return create_app(app_config(url, services, batch_size))


def worker_env(url: str, services: Services, batch_size: int, root: Path = ROOT) -> dict[str, str]:
    """What `python -m worker` needs: everything comes from the environment (portal/config.py)."""
    env = {k: v for k, v in os.environ.items() if k != "CLOCK_ADJUSTABLE"}
    env.update({
        "DATABASE_URL": url.replace("postgresql+psycopg://", "postgresql://", 1),
        "REDIS_URL": services.redis.url, "PORTAL_CLOCK_FROZEN_AT": NOW.isoformat(), "CLOCK_ADJUSTABLE": "0",
        "PORTAL_INSTANCE_PATH": str(services.workdir / "instance"), "SECRET_KEY": SECRET_KEY,
        "STRIPE_SECRET_KEY": STRIPE_KEY, "STRIPE_API_BASE": services.stripe.url if services.stripe else "",
        "RENEWAL_BATCH_SIZE": str(batch_size), "RATELIMIT_STORAGE_URI": "memory://", "TZ": "UTC",
        "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p),
        "PYTHONWARNINGS": "ignore::DeprecationWarning",
    })
    return env


class Workers:
    """`python -m worker --workers N --no-scheduler --queues billing`, stopped (with its children) by stop()."""

    def __init__(self, env: dict[str, str], count: int, log: Path, root: Path = ROOT) -> None:
        self.env, self.count, self.log_path, self.root = env, count, log, root
        self.proc: subprocess.Popen | None = None

    def start(self, redis_conn, timeout: float = 90) -> Workers:
        from rq import Worker

        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker", "--workers", str(self.count), "--no-scheduler",
                 "--queues", "billing", "--grace", "10"],
                cwd=self.root, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while len(Worker.all(connection=redis_conn)) < self.count:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the workers did not register; last lines of {self.log_path}:\n"
                                   f"{log_tail(self.log_path)}")
            time.sleep(0.1)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def child_pids(self) -> list[int]:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [int(pid) for pid in re.findall(r"started worker-\d+ \(pid (\d+)\)", text)]

    def stop(self) -> None:
        """SIGTERM the supervisor (it stops its workers: warm shutdown), then make sure none is left."""
        if self.proc is None:
            return
        children = self.child_pids()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                kill_group(self.proc, 1)
        for pid in children:  # each worker led its own group (its work horses in it): none may linger
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        self.proc = None


def cpu_seconds(pid: int | None, children: bool = True) -> float:
    """CPU time of a process (and of its children it has waited for), from /proc; 0 if it is gone."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    ticks = int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def postmaster_pid(pg: EmbeddedPostgres | None) -> int | None:
    if pg is None:
        return None
    with contextlib.suppress(OSError, ValueError):
        return int((pg.datadir / "postmaster.pid").read_text().split()[0])
    return None


# --- databases ----------------------------------------------------------------------------------------------

class Databases:
    """Named databases on one backend: a template is seeded once, each round gets a fresh copy of it."""

    def __init__(self, backend: str, services: Services) -> None:
        self.backend, self.services = backend, services
        self.dir = services.workdir / backend
        self.dir.mkdir(parents=True, exist_ok=True)

    def url(self, name: str) -> str:
        if self.backend == "postgres":
            return self.services.pg.url_for(name)
        return f"sqlite:///{self.dir / name}.db"

    def create(self, name: str, template: str | None = None) -> str:
        """An empty database, or a copy of `template` (whose connections must all be closed)."""
        if self.backend == "postgres":
            import psycopg
            from psycopg import sql

            with psycopg.connect(self.services.pg.uri("postgres"), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                if template is None:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                else:
                    conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                        sql.Identifier(name), sql.Identifier(template)))
        else:
            self.drop(name)
            if template is not None:
                with sqlite3.connect(self.dir / f"{template}.db") as src, sqlite3.connect(self.dir / f"{name}.db") as dst:
                    src.backup(dst)
                src.close()
                dst.close()
        return self.url(name)

    def drop(self, name: str) -> None:
        if self.backend == "postgres":
            import psycopg
            from psycopg import sql

            with psycopg.connect(self.services.pg.uri("postgres"), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        else:
            for suffix in ("", "-wal", "-shm"):
                (self.dir / f"{name}.db{suffix}").unlink(missing_ok=True)

    def raw(self, name: str):
        """A plain autocommit DBAPI connection for polling (no BEGIN IMMEDIATE: it never takes SQLite's
        write lock from the workers)."""
        if self.backend == "postgres":
            import psycopg

            return psycopg.connect(self.services.pg.uri(name), autocommit=True)
        return sqlite3.connect(self.dir / f"{name}.db", isolation_level=None, timeout=30)


def seed_base(dbs: Databases, batch_size: int) -> None:
    """The schema and the demo catalogue (plans, features), once per backend."""
    from flask_migrate import upgrade

    from portal.extensions import db
    from portal.seed import seed_demo

    app = build_app(dbs.create("base"), dbs.services, batch_size)
    with app.app_context():
        upgrade()
        seed_demo()
        db.session.commit()
        db.engine.dispose()


def seed_case(dbs: Databases, case: str, n: int, batch_size: int) -> None:
    """Template `case` = base + n due customers of that case, inserted in bulk."""
    import sqlalchemy as sa

    from portal.billing.lifecycle import SubscriptionStatus
    from portal.extensions import db
    from portal.models import (Feature, Plan, Role, Subscription, SubscriptionEvent, UsageCounter, User, Wallet,
                               WalletEntry, EntryKind)
    from portal.services.auth import hash_password

    started = time.perf_counter()
    app = build_app(dbs.create(case, template="base"), dbs.services, batch_size)
    plan_code = CASES[case][0]
    with app.app_context():
        conn = db.session.connection()
        plan_id = conn.execute(sa.select(Plan.id).where(Plan.code == plan_code)).scalar_one()
        password_hash = hash_password("bench password 1")  # one hash for all: logins are not measured
        users = User.__table__
        user_ids = conn.execute(users.insert().returning(users.c.id, sort_by_parameter_order=True), [
            {"email": f"{case}{i}@bench.test", "name": f"Bench {case} {i}", "password_hash": password_hash,
             "role": Role.CUSTOMER, "session_token": secrets.token_urlsafe(16), "is_active_account": True,
             "currency": "USD", "usage_emails": True, "created_at": ANCHOR}
            for i in range(n)]).scalars().all()
        balance = WALLET_BALANCE if case == "wallet" else 0
        wallets = Wallet.__table__
        wallet_ids = conn.execute(wallets.insert().returning(wallets.c.id, sort_by_parameter_order=True), [
            {"user_id": uid, "currency": "USD", "balance": balance, "created_at": ANCHOR, "updated_at": ANCHOR}
            for uid in user_ids]).scalars().all()
        if balance:  # the ledger explains the balance: sum(entries) == balance
            conn.execute(WalletEntry.__table__.insert(), [
                {"wallet_id": wid, "kind": EntryKind.CREDIT, "amount": balance, "currency": "USD",
                 "balance_after": balance, "reason": "Bench opening balance", "actor_id": None, "reference": None,
                 "idempotency_key": f"bench:opening:{wid}", "created_at": ANCHOR}
                for wid in wallet_ids])
        subs = Subscription.__table__
        sub_ids = conn.execute(subs.insert().returning(subs.c.id, sort_by_parameter_order=True), [
            {"user_id": uid, "plan_id": plan_id, "status": SubscriptionStatus.ACTIVE, "billing_anchor": ANCHOR,
             "current_period_start": PERIOD_START, "current_period_end": PERIOD_END, "trial_end": None,
             "cancel_at_period_end": False, "created_at": ANCHOR, "updated_at": PERIOD_START}
            for uid in user_ids]).scalars().all()
        conn.execute(SubscriptionEvent.__table__.insert(), [
            {"subscription_id": sid, "transition": "activate", "from_status": None,
             "to_status": SubscriptionStatus.ACTIVE, "reason": "bench seed", "actor_id": None,
             "data": {"plan": plan_code}, "at": ANCHOR}
            for sid in sub_ids])
        if case == "wallet":
            features = dict(conn.execute(sa.select(Feature.code, Feature.id).where(Feature.code.in_(USAGE))).all())
            conn.execute(UsageCounter.__table__.insert(), [
                {"user_id": uid, "feature_id": features[code], "window_start": PERIOD_START,
                 "window_end": PERIOD_END, "used": used, "bonus": 0, "updated_at": PERIOD_END}
                for uid in user_ids for code, used in USAGE.items()])
        db.session.commit()
        if case == "card":
            save_cards(app, list(user_ids))
        if dbs.backend == "postgres":
            db.session.execute(sa.text("ANALYZE"))
        db.session.commit()
        db.engine.dispose()
    print(f"  {dbs.backend}: template {case}: {n:,} due subscriptions seeded in "
          f"{time.perf_counter() - started:.1f} s", flush=True)


def save_cards(app, user_ids: list[int]) -> None:
    """A Stripe customer and an attached test card per user at localstripe (what payments.ensure_customer and
    cards.save do, the HTTP calls in a few threads), then the rows here in bulk."""
    import sqlalchemy as sa

    from portal.extensions import db
    from portal.models import PaymentMethod, User
    from portal.payments import gateway

    def at_stripe(user_id: int):
        with app.app_context():
            customer = gateway.create_customer(f"card{user_id}@bench.test", "", user_id)
            pm = gateway.client().v1.payment_methods.create(params={"type": "card", "card": TEST_CARD})
            return user_id, customer, gateway.attach_payment_method(pm.id, customer)

    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(at_stripe, user_ids))
    conn = db.session.connection()
    users = User.__table__
    conn.execute(sa.update(users).where(users.c.id == sa.bindparam("uid")).values(
        stripe_customer_id=sa.bindparam("customer")), [{"uid": uid, "customer": cus} for uid, cus, _ in made])
    conn.execute(PaymentMethod.__table__.insert(), [
        {"user_id": uid, "stripe_payment_method_id": card.stripe_id, "brand": card.brand, "last4": card.last4,
         "exp_month": card.exp_month, "exp_year": card.exp_year, "is_default": True, "created_at": ANCHOR}
        for uid, _, card in made])
    db.session.commit()


# --- a round ------------------------------------------------------------------------------------------------

def stripe_intents(services: Services) -> Counter:
    """PaymentIntents at localstripe by status."""
    if services.stripe is None:
        return Counter()
    request = urllib.request.Request(f"{services.stripe.url}/v1/payment_intents?limit=10000000",
                                     headers={"Authorization": f"Bearer {STRIPE_KEY}"})
    # localstripe lists every intent it holds (thousands after a few card rounds) slowly on a busy machine
    with urllib.request.urlopen(request, timeout=600) as response:
        return Counter(intent["status"] for intent in json.load(response)["data"])


@dataclass
class Round:
    seconds: float
    sweep_seconds: float
    renewed: int
    outcomes: dict[str, int]
    counts: dict[str, int]
    cpu_ms: dict[str, float | None]
    lock_wait_share: float | None

    @property
    def rate(self) -> float:
        return self.renewed / self.seconds if self.seconds else 0.0


def run_round(dbs: Databases, case: str, n: int, number: int, args, side: Side | None = None) -> Round:
    """A fresh copy of the case's template, W workers, the sweep, the clock until all are renewed, counts.
    `side`: whose workers renew (this checkout's, or --baseline's) and their batch size."""
    side = side or Side("", ROOT, args.batch_size)
    from rq import Queue
    from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

    from portal.extensions import db
    from worker import billing

    services = dbs.services
    name = f"{case}_round{number}{'_' + side.label if side.label else ''}"
    url = dbs.create(name, template=case)
    redis = services.redis_conn()
    redis.flushall()
    intents_before = stripe_intents(services) if case == "card" else Counter()
    workers = Workers(worker_env(url, services, side.batch_size, side.root), args.workers,
                      services.workdir / f"workers-{dbs.backend}-{name}.log", side.root)
    poll = None
    app = build_app(url, services, side.batch_size)  # the sweep fans out batches of the side's size
    try:
        workers.start(redis)
        postmaster = postmaster_pid(services.pg if dbs.backend == "postgres" else None)
        stripe_pid = services.stripe.proc.pid if services.stripe and services.stripe.proc else None
        worker_pids = workers.child_pids()
        cpu_before = {"workers": sum(cpu_seconds(p) for p in worker_pids), "postgres": cpu_seconds(postmaster),
                      "localstripe": cpu_seconds(stripe_pid, children=False)}
        poll = dbs.raw(name)
        self_before = resource.getrusage(resource.RUSAGE_SELF)
        lock_samples = []
        with app.app_context():
            started = time.perf_counter()
            swept = billing.renew_due()  # commits; its after-commit dispatch pushes the batch jobs to Redis
            sweep_seconds = time.perf_counter() - started
            db.engine.dispose()
        if swept["renewals"] != n:
            raise RuntimeError(f"the sweep took {swept['renewals']} subscriptions, expected {n}")
        renewed, last_progress, last_count = 0, time.perf_counter(), 0
        deadline = started + max(300.0, n / 5)
        billing_queue = Queue("billing", connection=redis)
        started_jobs = StartedJobRegistry("billing", connection=redis)
        while True:
            renewed = _scalar(poll, "SELECT count(*) FROM invoices WHERE reason = 'renewal' AND status = 'paid'")
            if renewed >= n:
                break
            now_ = time.perf_counter()
            if renewed != last_count:
                last_count, last_progress = renewed, now_
            if dbs.backend == "postgres":
                lock_samples.append(_scalar(poll, "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                                  "current_database() AND wait_event_type = 'Lock'"))
            stalled = now_ - last_progress > 20 and not billing_queue.count and not started_jobs.count
            if not workers.alive or stalled or now_ > deadline:
                print(f"  !! {dbs.backend} {case} round {number}: stopped waiting at {renewed:,}/{n:,} renewed "
                      f"({'workers died' if not workers.alive else 'stalled' if stalled else 'timeout'}); "
                      f"see {workers.log_path}", flush=True)
                break
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        self_after = resource.getrusage(resource.RUSAGE_SELF)
        _wait_idle(billing_queue, started_jobs, 30)  # the last horses finish (their CPU is then counted)
        cpu_after_workers = sum(cpu_seconds(p) for p in worker_pids)
        outcomes: Counter[str] = Counter()
        from rq.job import Job

        finished = FinishedJobRegistry("billing", connection=redis).get_job_ids()
        for job in Job.fetch_many(finished, connection=redis):
            if job is not None and job.func_name.endswith("renew_subscriptions"):
                outcomes.update(job.return_value() or {})
        failed_jobs = FailedJobRegistry("billing", connection=redis).count
        emails_queued = Queue("emails", connection=redis).count
    finally:
        workers.stop()
        if poll is not None:
            poll.close()
        with app.app_context():
            db.engine.dispose()
    time.sleep(0.3)  # backends of closed connections exit (and are counted by the postmaster)
    cpu_after = {"workers": cpu_after_workers, "postgres": cpu_seconds(postmaster),
                 "localstripe": cpu_seconds(stripe_pid, children=False)}
    bench_cpu = (self_after.ru_utime + self_after.ru_stime) - (self_before.ru_utime + self_before.ru_stime)
    cpu_ms: dict[str, float | None] = {k: (cpu_after[k] - cpu_before[k]) * 1000 / max(renewed, 1) for k in cpu_after}
    if dbs.backend != "postgres":
        cpu_ms["postgres"] = None
    if case != "card":
        cpu_ms["localstripe"] = None
    cpu_ms["bench"] = bench_cpu * 1000 / max(renewed, 1)
    counts = count_rows(dbs, name, case)
    counts["failed jobs"] = failed_jobs
    counts["emails queued"] = emails_queued
    if case == "card":
        counts["intents"] = stripe_intents(services)["succeeded"] - intents_before["succeeded"]
    dbs.drop(name)
    lock_share = (sum(1 for s in lock_samples if s) / len(lock_samples)) if lock_samples else None
    return Round(seconds, sweep_seconds, renewed, dict(outcomes), counts, cpu_ms, lock_share)


def _scalar(conn, sql: str) -> int:
    return int(conn.execute(sql).fetchone()[0])


def _wait_idle(queue, started_jobs, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < 3 and time.monotonic() < deadline:
        quiet = quiet + 1 if not queue.count and not started_jobs.count else 0
        time.sleep(0.1)


def count_rows(dbs: Databases, name: str, case: str) -> dict[str, int]:
    conn = dbs.raw(name)
    try:
        queries = {
            "invoices": "SELECT count(*) FROM invoices WHERE reason = 'renewal' AND status = 'paid'",
            "lines": "SELECT count(*) FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id "
                     "WHERE i.reason = 'renewal'",
            "debits": "SELECT count(*) FROM wallet_entries WHERE kind = 'payment'",
            "receipts": "SELECT count(*) FROM email_log WHERE template = 'renewal_succeeded'",
            "events": "SELECT count(*) FROM subscription_events WHERE transition = 'renew'",
            "card payments": "SELECT count(*) FROM payments WHERE provider = 'stripe' AND status = 'succeeded'",
            "unbalanced wallets": "SELECT count(*) FROM wallets w WHERE w.balance <> "
                                  "(SELECT COALESCE(SUM(e.amount), 0) FROM wallet_entries e WHERE e.wallet_id = w.id)",
            "open invoices": "SELECT count(*) FROM invoices WHERE status = 'open'",
            "still due": "SELECT count(*) FROM subscriptions s JOIN plans p ON p.id = s.plan_id "
                         f"WHERE p.code = '{CASES[case][0]}' AND s.status = 'active' AND s.current_period_start < "
                         + ("'2026-03-01 00:00:00+00'" if dbs.backend == "postgres" else "'2026-03-01 00:00:00'"),
        }
        return {key: _scalar(conn, sql) for key, sql in queries.items()}
    finally:
        conn.close()


def expected(case: str, n: int) -> dict[str, int]:
    _, lines, debits, card = CASES[case]
    wanted = {"invoices": n, "lines": n * lines, "debits": n * debits, "receipts": n, "events": n,
              "card payments": n * card, "unbalanced wallets": 0, "open invoices": 0, "still due": 0,
              "failed jobs": 0, "emails queued": n}
    if case == "card":
        wanted["intents"] = n
    return wanted


# --- the whole run ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Side:
    """Whose workers renew: this checkout's (label "") or --baseline's, with their batch size."""

    label: str
    root: Path
    batch_size: int


def baseline_side(checkout: str) -> Side:
    """--baseline: another checkout of the portal (same migrations), its workers with its own batch size."""
    root = Path(checkout).resolve()
    size = subprocess.run(
        [sys.executable, "-c", "from portal.config import load_config; print(load_config()['RENEWAL_BATCH_SIZE'])"],
        cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, check=True)
    return Side("baseline", root, int(size.stdout.strip().splitlines()[-1]))


@dataclass
class Result:
    backend: str
    case: str
    subscriptions: int
    rounds: list[Round] = field(default_factory=list)
    side: str = ""

    @property
    def label(self) -> str:
        return f"{self.case} ({self.side})" if self.side else self.case

    @property
    def wrong(self) -> list[str]:
        want = expected(self.case, self.subscriptions)
        return sorted({f"{k} {r.counts.get(k)} != {v}" for r in self.rounds for k, v in want.items()
                       if r.counts.get(k) != v})

    @property
    def ok(self) -> bool:
        return bool(self.rounds) and not self.wrong

    def median(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.rounds)

    def cpu(self, key: str) -> float | None:
        values = [r.cpu_ms[key] for r in self.rounds if r.cpu_ms.get(key) is not None]
        return statistics.median(values) if values else None


def run_backend(backend: str, args, services: Services) -> list[Result]:
    dbs = Databases(backend, services)
    if backend == "postgres":
        services.pg = EmbeddedPostgres(services.workdir / "pgdata").start()
    try:
        seed_base(dbs, args.batch_size)
        sizes = {"wallet": args.subscriptions, "card": args.card_subscriptions}
        sizes = {case: n for case, n in sizes.items() if n > 0}
        for case, n in sizes.items():
            seed_case(dbs, case, n, args.batch_size)
        sides = [Side("", ROOT, args.batch_size)] + ([baseline_side(args.baseline)] if args.baseline else [])
        results = {(side.label, case): Result(backend, case, n, side=side.label)
                   for case, n in sizes.items() for side in sides}
        for number in range(1, args.rounds + 1):
            for case, n in sizes.items():
                for side in sides if number % 2 else sides[::-1]:  # alternate which side goes first
                    r = run_round(dbs, case, n, number, args, side)
                    results[side.label, case].rounds.append(r)
                    cpu = ", ".join(f"{k} {v:.2f}" for k, v in r.cpu_ms.items() if v is not None)
                    locks = f", a backend waiting on a lock in {r.lock_wait_share:.0%} of samples" \
                        if r.lock_wait_share is not None else ""
                    what = f"{case} ({side.label}, batches of {side.batch_size})" if side.label else case
                    print(f"  {backend} {what} round {number}: {r.renewed:,}/{n:,} renewed in {r.seconds:.2f} s = "
                          f"{r.rate:,.0f}/s (sweep {r.sweep_seconds:.2f} s); jobs said {r.outcomes}; "
                          f"CPU ms per renewal: {cpu}{locks}", flush=True)
        return list(results.values())
    finally:
        if services.pg is not None:
            services.pg.stop()
            services.pg = None


def print_tables(results: list[Result], args) -> None:
    def fmt(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f}"

    print(f"\nbilling time {NOW.isoformat()}, {args.workers} worker processes (--queues billing), "
          f"batches of {args.batch_size}, {args.rounds} round(s); renewals/s is the median, per-round figures "
          "after it; CPU ms per renewal (medians) from /proc: the worker processes with their work horses, "
          "PostgreSQL's backends, localstripe, and this process (the sweep and the polls)")
    print("\n| backend | case | subscriptions | **renewals/s** | rounds (/s) | invoices | lines | ledger debits | "
          "receipts | renew events | card payments | PaymentIntents | CPU ms: workers / postgres / localstripe / bench | "
          "counts |")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in results:
        last = r.rounds[-1].counts if r.rounds else {}
        rates = ", ".join(f"{x.rate:,.0f}" for x in r.rounds)
        cpu = " / ".join(fmt(r.cpu(k)) for k in ("workers", "postgres", "localstripe", "bench"))
        print(f"| {r.backend} | {r.label} | {r.subscriptions:,} | **{r.median('rate'):,.0f}** | {rates} | "
              f"{last.get('invoices', 0):,} | {last.get('lines', 0):,} | {last.get('debits', 0):,} | "
              f"{last.get('receipts', 0):,} | {last.get('events', 0):,} | {last.get('card payments', 0):,} | "
              f"{last['intents'] if 'intents' in last else '—'} | {cpu} | {'✓' if r.ok else '✗'} |")
    print(f"\n{'backend':<9} {'case':<18} {'subs':>7} {'renewals/s':>11} {'rounds(/s)':<20} {'invoices':>9} "
          f"{'lines':>7} {'debits':>7} {'receipts':>9} {'events':>7} {'intents':>8} {'cpu_ms(w/pg/stripe/bench)':<27} ok")
    for r in results:
        last = r.rounds[-1].counts if r.rounds else {}
        rates = "/".join(f"{x.rate:.0f}" for x in r.rounds) or "-"
        cpu = "/".join(fmt(r.cpu(k)) for k in ("workers", "postgres", "localstripe", "bench"))
        print(f"{r.backend:<9} {r.label:<18} {r.subscriptions:>7} {r.median('rate') if r.rounds else 0:>11.0f} "
              f"{rates:<20} {last.get('invoices', 0):>9} {last.get('lines', 0):>7} {last.get('debits', 0):>7} "
              f"{last.get('receipts', 0):>9} {last.get('events', 0):>7} {last.get('intents', '-'):>8} "
              f"{cpu:<27} {'✓' if r.ok else '✗'}")
    for r in results:
        for problem in r.wrong:
            print(f"✗ {r.backend} {r.label}: {problem}")


# --- --profile: one worker's renewals in this process -------------------------------------------------------

def profile(backend: str, n: int, args, services: Services) -> None:
    """Renew n wallet subscriptions here, batch by batch through `worker.billing.renew_subscriptions` (as a
    work horse does), the first batch as a warm-up, the rest under cProfile; SQL statements counted."""
    import sqlalchemy as sa

    from portal.extensions import db
    from worker import billing

    dbs = Databases(backend, services)
    if backend == "postgres":
        services.pg = EmbeddedPostgres(services.workdir / "pgdata").start()
    try:
        seed_base(dbs, args.batch_size)
        seed_case(dbs, "wallet", n + args.batch_size, args.batch_size)
        app = build_app(dbs.url("wallet"), services, args.batch_size)
        with app.app_context():
            ids = sorted(db.session.scalars(sa.text(
                "SELECT s.id FROM subscriptions s JOIN plans p ON p.id = s.plan_id WHERE p.code = 'business'")))
            db.session.commit()
            statements: Counter[str] = Counter()

            def count(conn, cursor, statement, parameters, context, executemany):
                statements[" ".join(statement.split())[:110]] += 1

            batches = [ids[i:i + args.batch_size] for i in range(0, len(ids), args.batch_size)]
            billing.renew_subscriptions(batches[0])  # warm-up: compiled-statement caches, imports
            timed = batches[1:]
            started = time.perf_counter()
            for batch in timed[: max(1, len(timed) // 2)]:  # half without the profiler: the real in-process time
                billing.renew_subscriptions(batch)
            plain = time.perf_counter() - started
            plain_n = sum(len(b) for b in timed[: max(1, len(timed) // 2)])
            rest = timed[max(1, len(timed) // 2):] or timed[:0]
            sa.event.listen(db.engine, "before_cursor_execute", count)
            profiler = cProfile.Profile()
            profiler.enable()
            outcomes: Counter[str] = Counter()
            for batch in rest:
                outcomes.update(billing.renew_subscriptions(batch))
            profiler.disable()
            sa.event.remove(db.engine, "before_cursor_execute", count)
            profiled_n = sum(len(b) for b in rest)
            db.engine.dispose()
        print(f"\n{backend}: {plain_n} renewals without the profiler in {plain:.2f} s = "
              f"{plain * 1000 / plain_n:.2f} ms each, {plain_n / plain:.0f}/s in one process")
        print(f"{backend}: {profiled_n} renewals under cProfile ({dict(outcomes)}); SQL statements per renewal: "
              f"{sum(statements.values()) / max(profiled_n, 1):.1f}")
        verbs = Counter()
        for sql, k in statements.items():
            verbs[sql.split()[0].upper()] += k
        print("  by kind: " + ", ".join(f"{v} {k / max(profiled_n, 1):.1f}" for v, k in verbs.most_common()))
        print("  statements per renewal, most frequent first:")
        for sql, k in statements.most_common(40):
            print(f"  {k / max(profiled_n, 1):6.2f}  {sql}")
        for order, limit in (("cumulative", 45), ("tottime", 25)):
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(order).print_stats(limit)
            print(f"\n--- cProfile, by {order} ---")
            print("\n".join(line for line in out.getvalue().splitlines()[4:] if line.strip()))
    finally:
        if services.pg is not None:
            services.pg.stop()
            services.pg = None


# --- main ---------------------------------------------------------------------------------------------------

def main() -> int:
    parser = cli.parser(__doc__, {
        "subscriptions": "due wallet-paid subscriptions (default 10,000)",
        "rounds": "rounds of each case, each on a fresh copy of the seeded database (default 3)",
        "workers": "RQ worker processes (default 2)",
    }, tiny="20 wallet + 5 card subscriptions, one round, batches of 5")
    parser.add_argument("--card-subscriptions", dest="card_subscriptions", type=int,
                        help="due card-paid subscriptions, through localstripe (default 1,000; 0 skips the case)")
    parser.add_argument("--batch-size", dest="batch_size", type=int,
                        help="subscriptions per renewal job (default: the app's RENEWAL_BATCH_SIZE, 200)")
    parser.add_argument("--baseline", metavar="CHECKOUT",
                        help="another checkout of the portal (e.g. `git worktree add /tmp/base <rev>`): its workers "
                             "renew in alternate rounds, on copies of the same databases, with its own batch size")
    parser.add_argument("--profile", type=int, metavar="N",
                        help="instead of the benchmark: renew N wallet subscriptions in this process under "
                             "cProfile, with the SQL statements per renewal")
    parser.set_defaults(backend=None)  # PostgreSQL at full size; both databases with --tiny
    args = cli.parse(parser, SIZES)
    if args.backend is None:
        args.backend = "both" if args.tiny else "postgres"
    if args.batch_size is None:
        from portal.config import load_config

        args.batch_size = load_config()["RENEWAL_BATCH_SIZE"]

    def on_sigterm(signum, frame):
        raise SystemExit(128 + signum)  # run the finally blocks: every process started here is stopped

    signal.signal(signal.SIGTERM, on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="bench-renewals-"))
    results: list[Result] = []
    try:
        with contextlib.ExitStack() as stack:
            redis = EmbeddedRedis(workdir / "redis", log_path=workdir / "redis.log").start()
            stack.callback(redis.stop)
            stripe = None
            if args.card_subscriptions > 0 and not args.profile:
                stripe = EmbeddedStripe(log_path=workdir / "localstripe.log").start()
                stack.callback(stripe.stop)
            services = Services(workdir, redis, stripe)
            stack.callback(lambda: services.pg and services.pg.stop())
            if args.profile:
                profile(cli.backends(args)[0], args.profile, args, services)
                return 0
            print(f"bench/renewals.py: {args.subscriptions:,} wallet + {args.card_subscriptions:,} card subscriptions, "
                  f"{args.workers} workers, batches of {args.batch_size}, {args.rounds} round(s), work dir {workdir}",
                  flush=True)
            for backend in cli.backends(args):
                results += run_backend(backend, args, services)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_tables(results, args)
    return 0 if results and all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
