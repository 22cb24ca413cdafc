"""Benchmark: throughput and p99 latency of POST /api/v1/usage/record, as a ratio to hello-world.

Both apps run under gunicorn the same way (gthread workers) and are driven by ApacheBench (`ab`,
Debian's apache2-utils) with keep-alive from several processes at once (one API key each), for a
fixed number of requests, so every answer is counted. Rounds alternate hello / record so both see
the same machine load; the report gives medians. Afterwards the number of usage events in the
database must equal the number of 2xx answers (nothing lost or doubled).

On PostgreSQL a third app runs in the same rounds: bench/reference_record.py, the same two
round trips in raw psycopg with no framework, as the floor of what a durable per-request
record costs on the machine (its events are counted too).

    .venv/bin/python bench/usage_api.py --backend both --requests 20000 --rounds 3
    .venv/bin/python bench/usage_api.py --tiny    # seconds: checks the script runs (figures mean nothing)
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import cli  # noqa: E402
from devtools.embedded import free_port  # noqa: E402
from devtools.postgres import EmbeddedPostgres  # noqa: E402

#: The measurement, and --tiny: every app of it, each driven a little, in seconds (tests/test_bench.py).
SIZES = {
    "full": {"requests": 20000, "rounds": 3, "concurrency": 32, "customers": 4, "workers": 4, "threads": 8},
    "tiny": {"requests": 200, "rounds": 1, "concurrency": 4, "customers": 2, "workers": 1, "threads": 2},
}


def prepare_database(url: str, instance: Path, customers: int) -> list[str]:
    """Migrate, create a plan with a huge QUOTA and `customers` users with one API key each."""
    from flask_migrate import upgrade

    from portal import create_app
    from portal.billing.features import FeatureType
    from portal.extensions import db
    from portal.services import api_keys, catalog
    from portal.services.auth import register

    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "INSTANCE_PATH": str(instance),
                      "ARGON2_TIME_COST": 1, "ARGON2_MEMORY_COST": 64})
    with app.app_context():
        upgrade()
        plan = catalog.create_plan("bench", "Bench", price_amount=0, is_default=True)
        feature = catalog.get_or_create_feature("bench_calls", "Bench calls", FeatureType.QUOTA, "call")
        # A QUOTA with a limit far away: every record takes the conditional-increment path.
        catalog.grant(plan, feature, limit=2_000_000_000)
        keys = []
        for n in range(customers):
            user = register(f"bench{n}@example.com", "bench password 123")
            db.session.flush()
            keys.append(api_keys.create(user, "bench")[1])
        db.session.commit()
        db.engine.dispose()
    return keys


def count_events(url: str, instance: Path) -> int:
    import sqlalchemy as sa

    from portal import create_app
    from portal.extensions import db
    from portal.models import UsageEvent

    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "INSTANCE_PATH": str(instance)})
    with app.app_context():
        count = db.session.scalar(sa.select(sa.func.count()).select_from(UsageEvent))
        db.engine.dispose()
    return int(count)


class Gunicorn:
    def __init__(self, target: str, env: dict[str, str], workers: int, threads: int, log: Path,
                 root: Path = ROOT) -> None:
        self.port = free_port()
        self.target = target
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--worker-class", "gthread",
             "--threads", str(threads), "--bind", f"127.0.0.1:{self.port}", "--no-control-socket",
             "--log-level", "warning", target],
            cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1)
                return
            except urllib.error.HTTPError:
                return  # answering (hello has no /healthz: 404 is an answer)
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"gunicorn {target} did not start; see {log}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)
        self.log.close()


def drive(port: int, path: str, keys: list[str], total: int, concurrency: int, workdir: Path) -> dict:
    """Run one ab per key in parallel (concurrency split evenly); return rate, p50, p99 and 2xx count."""
    body = workdir / "body.json"
    body.write_text(json.dumps({"feature": "bench_calls", "quantity": 1}))
    per_proc, conc = total // len(keys), max(concurrency // len(keys), 1)
    procs = []
    started = time.perf_counter()
    for n, key in enumerate(keys):
        timings = workdir / f"ab-{n}.tsv"
        cmd = ["ab", "-q", "-k", "-n", str(per_proc), "-c", str(conc), "-p", str(body), "-T", "application/json",
               "-H", f"Authorization: Bearer {key}", "-g", str(timings), f"http://127.0.0.1:{port}{path}"]
        procs.append((subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), timings))
    outputs = [(p.communicate()[0], t) for p, t in procs]
    elapsed = time.perf_counter() - started
    latencies: list[int] = []
    non2xx = failed = completed = 0
    for out, timings in outputs:
        for line in out.splitlines():
            if line.startswith("Complete requests:"):
                completed += int(line.split()[-1])
            elif line.startswith("Non-2xx responses:"):
                non2xx += int(line.split()[-1])
            elif line.strip().startswith("(Connect:"):
                # ab counts answers of a different length than the first as "failed (Length)";
                # the meter in our answers grows, so only connection-level failures count here.
                parts = dict(p.split(": ") for p in line.strip(" ()").split(", "))
                failed += int(parts["Connect"]) + int(parts["Receive"]) + int(parts["Exceptions"])
        rows = timings.read_text().splitlines()[1:]
        latencies += [int(r.split("\t")[4]) for r in rows if r.strip()]  # ttime, ms
    latencies.sort()
    return {
        "requests": completed, "seconds": elapsed, "rate": completed / elapsed,
        "p50_ms": latencies[len(latencies) // 2], "p99_ms": latencies[int(len(latencies) * 0.99) - 1],
        "non2xx": non2xx, "failed": failed, "ok": completed - non2xx - failed,
    }


def run_backend(backend: str, args, workdir: Path) -> dict:
    instance = workdir / backend
    instance.mkdir()
    pg = None
    if backend == "postgres":
        pg = EmbeddedPostgres(workdir / "pgdata").start()
        url = pg.create_database("bench")
    else:
        url = f"sqlite:///{instance / 'bench.db'}"
    keys = prepare_database(url, instance, args.customers)
    env = dict(os.environ, DATABASE_URL=url.replace("postgresql+psycopg://", "postgresql://"), SECRET_KEY="bench",
               PORTAL_INSTANCE_PATH=str(instance), REDIS_URL="redis://127.0.0.1:1/0",
               RATELIMIT_STORAGE_URI="memory://", PYTHONPATH=str(ROOT))
    servers = {"hello": (Gunicorn("bench.hello:app", env, args.workers, args.threads, instance / "hello.log"),
                         "/hello")}
    if args.reference and backend == "postgres":
        servers["reference"] = (Gunicorn("bench.reference_record:app", env, args.workers, args.threads,
                                         instance / "reference.log"), "/api/v1/usage/record")
    if args.baseline is not None:  # another checkout of the portal, e.g. before a change
        servers["baseline"] = (Gunicorn("wsgi:app", dict(env, PYTHONPATH=str(args.baseline)), args.workers,
                                        args.threads, instance / "baseline.log", root=args.baseline),
                               "/api/v1/usage/record")
    servers["record"] = (Gunicorn("wsgi:app", env, args.workers, args.threads, instance / "portal.log"),
                         "/api/v1/usage/record")
    for name, (server, _) in servers.items():
        print(f"  {backend}: {name} = {server.target} on port {server.port}", flush=True)
    rounds: dict[str, list[dict]] = {name: [] for name in servers}
    try:
        for _ in range(args.rounds):
            for name, (server, path) in servers.items():  # alternating, so all see the same machine
                rounds[name].append(drive(server.port, path, keys, args.requests, args.concurrency, instance))
    finally:
        for server, _ in servers.values():
            server.stop()
    events = count_events(url, instance)
    ok = sum(r["ok"] for r in rounds["record"])
    # The reference and the baseline write events too.
    written = ok + sum(r["ok"] for name in ("reference", "baseline") for r in rounds.get(name, []))
    if pg is not None:
        pg.stop()
    med = lambda runs, key: statistics.median(r[key] for r in runs)  # noqa: E731
    result = {
        "backend": backend,
        "hello_rps": med(rounds["hello"], "rate"), "record_rps": med(rounds["record"], "rate"),
        "ratio": med(rounds["record"], "rate") / med(rounds["hello"], "rate"),
        "ratios": [r["rate"] / h["rate"] for h, r in zip(rounds["hello"], rounds["record"])],
        "hello_p99_ms": med(rounds["hello"], "p99_ms"), "record_p99_ms": med(rounds["record"], "p99_ms"),
        "record_p50_ms": med(rounds["record"], "p50_ms"),
        "record_2xx": ok, "events_in_db": events, "consistent": written == events,
        "record_non2xx": sum(r["non2xx"] + r["failed"] for r in rounds["record"]),
    }
    if "reference" in rounds:
        result.update({
            "reference_rps": med(rounds["reference"], "rate"),
            "reference_ratio": med(rounds["reference"], "rate") / med(rounds["hello"], "rate"),
            "reference_p99_ms": med(rounds["reference"], "p99_ms"),
        })
    if "baseline" in rounds:
        result.update({
            "baseline_rps": med(rounds["baseline"], "rate"),
            "baseline_ratio": med(rounds["baseline"], "rate") / med(rounds["hello"], "rate"),
            "baseline_p99_ms": med(rounds["baseline"], "p99_ms"),
        })
    return result


def main() -> int:
    parser = cli.parser(__doc__, {
        "requests": "per round and app (default 20000)", "rounds": "default 3",
        "concurrency": "connections in all (default 32)", "customers": "API keys, one ab process each (default 4)",
        "workers": "gunicorn processes per app (default 4)", "threads": "threads per gunicorn process (default 8)",
    }, tiny="200 requests per app, one round, 1 worker x 2 threads")
    parser.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                        help="also serve the portal from this checkout (e.g. `git worktree add /tmp/base REV`), "
                             "in the same rounds, to compare a change side by side")
    parser.add_argument("--no-reference", dest="reference", action="store_false",
                        help="skip bench/reference_record.py (PostgreSQL only), the floor of a durable record")
    args = cli.parse(parser, SIZES)
    if shutil.which("ab") is None:
        print("bench needs ApacheBench: apt-get install apache2-utils", file=sys.stderr)
        return 2
    backends = cli.backends(args)
    with tempfile.TemporaryDirectory(prefix="portal-bench-") as tmp:
        results = [run_backend(b, args, Path(tmp)) for b in backends]
    print(json.dumps(results, indent=2))
    print(f"\n{'backend':<9} {'hello rps':>10} {'record rps':>11} {'ratio':>6} {'record p50':>11} "
          f"{'record p99':>11} {'hello p99':>10} {'2xx':>7} {'events':>7}")
    for r in results:
        print(f"{r['backend']:<9} {r['hello_rps']:>10.0f} {r['record_rps']:>11.0f} {r['ratio']:>6.2f} "
              f"{r['record_p50_ms']:>9} ms {r['record_p99_ms']:>9} ms {r['hello_p99_ms']:>8} ms "
              f"{r['record_2xx']:>7} {r['events_in_db']:>7}")
    for r in results:
        if "reference_rps" in r:
            print(f"\n{r['backend']}: reference (bench/reference_record.py, raw psycopg, same two round trips): "
                  f"{r['reference_rps']:.0f} rps, ratio {r['reference_ratio']:.2f}, p99 {r['reference_p99_ms']} ms; "
                  f"portal / reference {r['record_rps'] / r['reference_rps']:.2f}")
        if "baseline_rps" in r:
            print(f"{r['backend']}: baseline ({args.baseline}): {r['baseline_rps']:.0f} rps, ratio "
                  f"{r['baseline_ratio']:.2f}, p99 {r['baseline_p99_ms']} ms; portal / baseline "
                  f"{r['record_rps'] / r['baseline_rps']:.2f}")
    return 0 if all(r["consistent"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
