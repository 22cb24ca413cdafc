"""Benchmark: do /usage and /wallet stay fast as data grows?

Two databases side by side: in one the demo customer has 1k usage events and 1k ledger rows, in
the other 1M usage events (half theirs, half their neighbours') and 100k ledger rows. Each page
is rendered for the customer in both, alternately, in the same run; the report gives the median
render time of each and the ratio. Pages are rendered in-process through the Flask test client
(no HTTP noise).

    .venv/bin/python bench/pages.py --backend postgres
    .venv/bin/python bench/pages.py --tiny       # seconds: checks the script runs (figures mean nothing)
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import cli  # noqa: E402

#: The measurement, and --tiny: the same steps at a size that runs in seconds (tests/test_bench.py).
SIZES = {
    "full": {"small": 1_000, "events": 1_000_000, "ledger": 100_000, "repeats": 30},
    "tiny": {"small": 100, "events": 300, "ledger": 300, "repeats": 1},
}


def build_app(url: str, instance: Path):
    from portal import create_app

    return create_app({"SQLALCHEMY_DATABASE_URI": url, "INSTANCE_PATH": str(instance), "ARGON2_TIME_COST": 1,
                       "ARGON2_MEMORY_COST": 64, "REDIS_URL": "redis://127.0.0.1:1/0", "WTF_CSRF_ENABLED": False,
                       "RATELIMIT_ENABLED": False})


def seed(app) -> int:
    from flask_migrate import upgrade

    from portal.extensions import db
    from portal.seed import seed_demo
    from portal.services.auth import register

    with app.app_context():
        upgrade()
        seed_demo()
        for n in range(20):  # neighbours: their rows must not slow the customer's pages
            register(f"neighbour{n}@example.com", "neighbour password 1")
        db.session.commit()
        from portal.models import User
        import sqlalchemy as sa

        return db.session.scalar(sa.select(User.id).where(User.email == "demo@portal.test"))


def grow(app, user_id: int, events: int, ledger_rows: int) -> None:
    """Bulk-insert usage events (with matching daily totals and counters) and wallet entries in SQL."""
    import sqlalchemy as sa

    from portal.extensions import db

    with app.app_context():
        dialect = db.engine.dialect.name
        conn = db.session.connection()
        features = conn.execute(sa.text("SELECT id FROM features WHERE type IN ('QUOTA','RATE','USAGE') ORDER BY id")).scalars().all()
        users = conn.execute(sa.text("SELECT id FROM users ORDER BY id")).scalars().all()
        series = ("generate_series(1, :n) AS s(i)" if dialect == "postgresql"
                  else "(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :n) SELECT i FROM s) AS s")
        ts = ("(timestamp '2026-01-31 08:00:00' - (s.i % 86400) * interval '1 minute')" if dialect == "postgresql"
              else "datetime('2026-01-31 08:00:00', '-' || (s.i % 86400) || ' minutes')")
        # Events: half for the customer, half for the neighbours, over all features.
        conn.execute(sa.text(
            f"INSERT INTO usage_events (user_id, feature_id, subscription_id, quantity, idempotency_key, source, occurred_at) "
            f"SELECT CASE WHEN s.i % 2 = 0 THEN :uid ELSE {users[0]} + (s.i % {len(users)}) END, "
            f"{features[0]} + (s.i % {len(features)}), NULL, 1, NULL, 'bench', {ts} FROM {series}"
        ), {"n": events, "uid": user_id})
        # Daily totals as the record path keeps them (history reads these, never the events).
        day = "date(occurred_at)" if dialect == "sqlite" else "CAST(occurred_at AS date)"
        conn.execute(sa.text("DELETE FROM usage_daily"))
        conn.execute(sa.text(
            f"INSERT INTO usage_daily (user_id, feature_id, day, quantity) "
            f"SELECT user_id, feature_id, {day}, SUM(quantity) FROM usage_events GROUP BY user_id, feature_id, {day}"
        ))
        # Ledger: credits and debits for the customer, balance_after consistent, then the balance.
        wallet_id = conn.execute(sa.text("SELECT id FROM wallets WHERE user_id = :u"), {"u": user_id}).scalar_one()
        start = conn.execute(sa.text("SELECT balance FROM wallets WHERE id = :w"), {"w": wallet_id}).scalar_one()
        conn.execute(sa.text(
            f"INSERT INTO wallet_entries (wallet_id, kind, amount, currency, balance_after, reason, actor_id, reference, "
            f"idempotency_key, created_at) SELECT :w, CASE WHEN s.i % 2 = 1 THEN 'topup' ELSE 'payment' END, "
            f"CASE WHEN s.i % 2 = 1 THEN 500 ELSE -300 END, 'USD', "
            f":b + (s.i / 2) * 200 + CASE WHEN s.i % 2 = 1 THEN 500 ELSE 0 END, 'bench movement', NULL, NULL, "
            f"'bench:' || :tag || ':' || s.i, {ts} FROM {series}"
        ), {"n": ledger_rows, "w": wallet_id, "b": start, "tag": f"{ledger_rows}-{time.time_ns()}"})
        total = conn.execute(sa.text("SELECT COALESCE(SUM(amount), 0) FROM wallet_entries WHERE wallet_id = :w"),
                             {"w": wallet_id}).scalar_one()
        conn.execute(sa.text("UPDATE wallets SET balance = :t WHERE id = :w"), {"t": int(total), "w": wallet_id})
        if dialect == "postgresql":
            conn.execute(sa.text("ANALYZE"))
        db.session.commit()
        counts = {t: db.session.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar_one()
                  for t in ("usage_events", "usage_daily", "wallet_entries")}
        db.session.commit()
        print(f"  {dialect}: {counts}", flush=True)


def login(app, email: str = "demo@portal.test", password: str = "demo-password-1"):
    client = app.test_client()
    response = client.post("/login", data={"email": email, "password": password})
    assert response.status_code == 302, response.status_code
    return client


def timed(client, path: str) -> float:
    started = time.perf_counter()
    response = client.get(path)
    elapsed = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, (path, response.status_code, response.get_data(as_text=True)[:300])
    return elapsed


def run(backend: str, repeats: int, small: int, big_events: int, big_ledger: int, workdir: Path) -> list[tuple]:
    """Two databases side by side, small (1k rows) and large; renders alternate between them, medians compared."""
    instance = workdir / backend
    instance.mkdir()
    pg = None
    if backend == "postgres":
        from devtools.postgres import EmbeddedPostgres

        pg = EmbeddedPostgres(workdir / "pgdata").start()
        urls = [pg.create_database("bench_small"), pg.create_database("bench_large")]
    else:
        urls = [f"sqlite:///{instance / 'small.db'}", f"sqlite:///{instance / 'large.db'}"]
    apps = [build_app(url, instance) for url in urls]
    for app, (events, ledger) in zip(apps, [(small, small), (big_events, big_ledger)]):
        grow(app, seed(app), events, ledger)
    paths = ["/usage", "/usage/meters", "/wallet", "/wallet/ledger"]
    clients = [login(app) for app in apps]
    times = {(size, p): [] for size in (0, 1) for p in paths}
    for path in paths:  # warm both
        for client in clients:
            timed(client, path)
    for _ in range(repeats):
        for path in paths:
            for size, client in enumerate(clients):
                times[(size, path)].append(timed(client, path))
    if pg is not None:
        pg.stop()
    med = {k: statistics.median(v) for k, v in times.items()}
    return [(backend, p, med[(0, p)], med[(1, p)], med[(1, p)] / med[(0, p)]) for p in paths]


def main() -> int:
    args = cli.parse(cli.parser(__doc__, {
        "repeats": "alternating renders of each page (default 30)",
        "events": "usage events in the large database (default 1,000,000)",
        "ledger": "wallet ledger rows in the large database (default 100,000)",
    }, tiny="100 vs 300 rows, one render"), SIZES)
    size = SIZES["tiny" if args.tiny else "full"]
    repeats, events, ledger = args.repeats, args.events, args.ledger
    rows = []
    with tempfile.TemporaryDirectory(prefix="portal-bench-pages-") as tmp:
        for backend in cli.backends(args):
            rows += run(backend, repeats, size["small"], events, ledger, Path(tmp))
    print(f"events {events:,}, ledger rows {ledger:,}, {repeats} alternating renders each")
    small_header = f"{size['small']:,} (ms)"
    print(f"{'backend':<9} {'page':<15} {small_header:>10} {'large (ms)':>11} {'ratio':>6}")
    for backend, path, small, large, ratio in rows:
        print(f"{backend:<9} {path:<15} {small:>10.2f} {large:>11.2f} {ratio:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
