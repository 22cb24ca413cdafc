"""Benchmark: do the staff pages stay fast as failures and customers pile up? (issue #13)

Two databases side by side: a small one with 1,000 customers and 1,000 OperationErrors, a large one with
10,000 customers and 100,000 OperationErrors (each error with two RetryAttempt rows, spread over types,
strategies and customers). In both, the same 300 failures are unresolved (pending, retrying or waiting for a
person): that is the queue support works through, and the failed report at the top of the errors page groups
exactly those; what grows 100× is the history of resolved and given-up failures, which no page may scan. Each page is rendered for the demo support
account in both, alternately, in the same run (in-process through the Flask test client, so HTTP noise
stays out); the table gives the median render time of each and the ratio large ÷ small.

    .venv/bin/python bench/staff_pages.py --backend both --repeats 30
    .venv/bin/python bench/staff_pages.py --tiny       # seconds: checks the script runs (figures mean nothing)
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import cli  # noqa: E402
from bench.pages import build_app, login, timed  # noqa: E402  (the same app, login and timing)

SIZES = {
    "full": {"small": 1_000, "customers": 10_000, "errors": 100_000, "unresolved": 300, "repeats": 30},
    "tiny": {"small": 50, "customers": 100, "errors": 300, "unresolved": 20, "repeats": 1},
}
TYPES = ["renewal_payment", "refund", "payment_check", "webhook", "trial_conversion", "dispute"]
STRATEGIES = ["fixed_interval", "immediate", "exponential", "exponential", "fixed_interval", "manual"]
OPEN_STATUSES = ["pending", "manual", "retrying"]
CLOSED_STATUSES = ["resolved", "resolved", "resolved", "gave_up"]


def seed(app, customers: int, errors: int, unresolved: int) -> None:
    """The demo data, then `customers` customers (each on Free, with a wallet) and `errors` failures in bulk SQL."""
    import sqlalchemy as sa
    from flask_migrate import upgrade

    from portal.billing.lifecycle import SubscriptionStatus
    from portal.clock import now
    from portal.extensions import db
    from portal.models import OperationError, Plan, RetryAttempt, Role, Subscription, User, Wallet
    from portal.seed import seed_demo

    with app.app_context():
        upgrade()
        seed_demo()
        db.session.commit()
        at = now()
        conn = db.session.connection()
        free = conn.execute(sa.select(Plan.id).where(Plan.code == "free")).scalar_one()
        users = User.__table__
        ids = conn.execute(users.insert().returning(users.c.id, sort_by_parameter_order=True), [
            {"email": f"customer{n:06d}@example.com", "name": f"Customer {n}", "password_hash": "x",
             "role": Role.CUSTOMER.value, "session_token": f"t{n}", "is_active_account": True, "currency": "USD",
             "usage_emails": True, "created_at": at - timedelta(minutes=n)}
            for n in range(customers)]).scalars().all()
        conn.execute(Wallet.__table__.insert(), [
            {"user_id": uid, "currency": "USD", "balance": 0, "created_at": at, "updated_at": at} for uid in ids])
        subs = Subscription.__table__
        sub_ids = conn.execute(subs.insert().returning(subs.c.id, sort_by_parameter_order=True), [
            {"user_id": uid, "plan_id": free, "status": SubscriptionStatus.ACTIVE.value, "billing_anchor": at,
             "current_period_start": at, "current_period_end": at + timedelta(days=30), "cancel_at_period_end": False,
             "created_at": at, "updated_at": at} for uid in ids]).scalars().all()
        errors_table = OperationError.__table__
        batch = 10_000
        for start in range(0, errors, batch):
            rows = []
            for n in range(start, min(errors, start + batch)):
                kind = n % len(TYPES)
                status = OPEN_STATUSES[n % 3] if n < unresolved else CLOSED_STATUSES[n % len(CLOSED_STATUSES)]
                closed = status in ("resolved", "gave_up")
                rows.append({
                    "operation_type": TYPES[kind], "error_code": "card_declined", "message": f"failure {n}",
                    "context": {"invoice": f"INV-{n:06d}", "amount": 999}, "strategy": STRATEGIES[kind],
                    "status": status, "attempts": 2, "max_attempts": 3, "amount": 999, "currency": "USD",
                    "next_retry_at": None if closed or status == "manual" else at + timedelta(minutes=n % 5000),
                    "user_id": ids[n % len(ids)], "subscription_id": sub_ids[n % len(sub_ids)],
                    "dedupe_key": f"bench:{n}", "created_at": at - timedelta(minutes=n),
                    "updated_at": at, "resolved_at": at if closed else None})
            new_ids = conn.execute(errors_table.insert().returning(errors_table.c.id, sort_by_parameter_order=True),
                                   rows).scalars().all()
            conn.execute(RetryAttempt.__table__.insert(), [
                {"operation_error_id": eid, "attempt_number": k, "succeeded": False, "outcome": "failed",
                 "strategy": "fixed_interval", "error_code": "card_declined", "message": "declined",
                 "started_at": at, "at": at} for eid in new_ids for k in (2, 3)])
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("ANALYZE"))
        db.session.commit()
        db.engine.dispose()


def pages(app) -> list[str]:
    """The URLs to time: lists, filters, a search, one customer and one failure (ids of the same rank)."""
    import sqlalchemy as sa

    from portal.extensions import db
    from portal.models import OperationError, User

    with app.app_context():
        customer = db.session.scalar(sa.select(User.id).where(User.email == "customer000007@example.com"))
        failure = db.session.scalar(sa.select(OperationError.id).where(OperationError.dedupe_key == "bench:7"))
        db.session.commit()
    return ["/staff/failures", "/staff/failures?type=refund", "/staff/failures?status=manual",
            "/staff/failures?customer=customer000007", f"/staff/failures/{failure}", "/staff/customers",
            "/staff/customers?q=customer00001", f"/staff/customers/{customer}"]


def run(backend: str, args, workdir: Path) -> list[tuple]:
    instance = workdir / backend
    instance.mkdir()
    pg = None
    if backend == "postgres":
        from devtools.postgres import EmbeddedPostgres

        pg = EmbeddedPostgres(workdir / "pgdata").start()
        urls = [pg.create_database("staff_small"), pg.create_database("staff_large")]
    else:
        urls = [f"sqlite:///{instance / 'small.db'}", f"sqlite:///{instance / 'large.db'}"]
    try:
        apps = [build_app(url, instance) for url in urls]
        for app, (customers, errors) in zip(apps, [(args.small, args.small), (args.customers, args.errors)]):
            started = time.perf_counter()
            seed(app, customers, errors, args.unresolved)
            print(f"  {backend}: {customers:,} customers, {errors:,} failures seeded in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
        paths = list(zip(pages(apps[0]), pages(apps[1])))
        clients = [login(app, "staff@portal.test", "staff-password-1") for app in apps]
        times: dict[tuple[int, int], list[float]] = {(size, i): [] for size in (0, 1) for i in range(len(paths))}
        for pair in paths:  # warm both
            for client, path in zip(clients, pair):
                timed(client, path)
        for _ in range(args.repeats):
            for i, pair in enumerate(paths):
                for size, (client, path) in enumerate(zip(clients, pair)):
                    times[(size, i)].append(timed(client, path))
    finally:
        if pg is not None:
            pg.stop()
    med = {k: statistics.median(v) for k, v in times.items()}
    label = [small.replace("customer000007", "<name>") for small, _ in paths]
    return [(backend, label[i], med[(0, i)], med[(1, i)], med[(1, i)] / med[(0, i)]) for i in range(len(paths))]


def main() -> int:
    args = cli.parse(cli.parser(__doc__, {
        "small": "customers and failures in the small database (default 1,000)",
        "customers": "customers in the large database (default 10,000)",
        "errors": "OperationErrors in the large database (default 100,000)",
        "unresolved": "unresolved failures in each database (default 300)",
        "repeats": "alternating renders of each page (default 30)",
    }, tiny="50 vs 100 customers and 300 failures, one render"), SIZES)
    rows = []
    with tempfile.TemporaryDirectory(prefix="portal-bench-staff-") as tmp:
        for backend in cli.backends(args):
            rows += run(backend, args, Path(tmp))
    print(f"small: {args.small:,} customers and failures; large: {args.customers:,} customers, "
          f"{args.errors:,} failures; {args.unresolved:,} unresolved in each; {args.repeats} alternating renders each")
    print(f"{'backend':<9} {'page':<42} {'small (ms)':>10} {'large (ms)':>11} {'ratio':>6}")
    for backend, path, small, large, ratio in rows:
        print(f"{backend:<9} {path:<42} {small:>10.2f} {large:>11.2f} {ratio:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
