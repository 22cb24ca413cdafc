"""python -m worker: N RQ worker processes plus the one `rq cron` scheduler, stopped together.

    python -m worker                  # 1 worker + the scheduler (what `make run` starts)
    python -m worker --workers 4      # 4 workers + the scheduler
    python -m worker --no-scheduler   # more workers on another host: run ONE scheduler in total
    python -m worker work|cron        # a single worker or the scheduler alone, in the foreground

REDIS_URL says where Redis is. SIGINT or SIGTERM stops the children: workers finish the job
in hand (warm shutdown) for up to --grace seconds, then are killed. If a child dies on its own,
the rest are stopped and the command exits non-zero, so a supervisor (make run, systemd) sees it.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time

from worker import QUEUES
from worker.subprocesses import die_with_parent

log = logging.getLogger("worker")


def _redis():
    from redis import Redis

    from portal.config import load_config

    return Redis.from_url(load_config()["REDIS_URL"])


def _use_utc() -> None:
    # `rq cron` reads cron fields in local time; ours are written in UTC.
    os.environ["TZ"] = "UTC"
    time.tzset()


def run_worker(queues: list[str], burst: bool = False) -> int:
    """One RQ worker in this process, its app created once here and inherited by each forked job."""
    from rq import Worker

    import worker

    _use_utc()
    worker.get_app()
    w = Worker(queues, connection=_redis())
    w.work(burst=burst, with_scheduler=True, logging_level="INFO")
    return 0


def run_scheduler() -> int:
    """The `rq cron` scheduler over worker/schedule.py, in this process."""
    from rq.cron import CronScheduler

    _use_utc()
    scheduler = CronScheduler(connection=_redis(), logging_level="INFO")
    scheduler.load_config_from_file("worker.schedule")
    scheduler.start()
    return 0


def supervise(workers: int, scheduler: bool, queues: list[str], grace: float) -> int:
    """Start the children, wait for a signal or a child's death, then stop them all."""
    stop_signal: list[int] = []

    def on_signal(signum, frame):
        stop_signal.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    env = dict(os.environ, TZ="UTC", PYTHONUNBUFFERED="1")
    children: list[tuple[str, subprocess.Popen]] = []

    def spawn(name: str, args: list[str]) -> None:
        # Own session: a terminal's Ctrl-C reaches us only, and we stop children in order.
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", *args],
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        children.append((name, proc))
        log.info("started %s (pid %d)", name, proc.pid)

    for i in range(workers):
        spawn(f"worker-{i + 1}", ["work", "--queues", *queues])
    if scheduler:
        spawn("scheduler", ["cron"])

    exit_code = 0
    while not stop_signal:
        dead = [(name, proc) for name, proc in children if proc.poll() is not None]
        if dead:
            for name, proc in dead:
                log.error("%s (pid %d) exited with code %s; stopping the rest", name, proc.pid, proc.returncode)
            exit_code = 1
            break
        time.sleep(0.2)
    if stop_signal:
        log.info("got %s; stopping %d children", signal.Signals(stop_signal[0]).name, len(children))
    _stop(children, grace)
    return exit_code


def _stop(children: list[tuple[str, subprocess.Popen]], grace: float) -> None:
    """SIGTERM all (warm shutdown), SIGTERM again after `grace` (cold), SIGKILL 3 s later."""
    def signal_all(sig: int) -> None:
        for _, proc in children:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass

    def wait_all(seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if all(proc.poll() is not None for _, proc in children):
                return True
            time.sleep(0.05)
        return all(proc.poll() is not None for _, proc in children)

    signal_all(signal.SIGTERM)
    if not wait_all(grace):
        signal_all(signal.SIGTERM)
        if not wait_all(3):
            signal_all(signal.SIGKILL)
            wait_all(3)
    # Work horses and RQ's delayed-job scheduler live in the children's groups: none may linger.
    for _, proc in children:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", choices=["all", "work", "cron"], default="all")
    parser.add_argument("--workers", "-n", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--no-scheduler", action="store_true", help="do not start the cron scheduler")
    parser.add_argument("--queues", nargs="+", default=QUEUES, help=f"queues to serve (default {' '.join(QUEUES)})")
    parser.add_argument("--burst", action="store_true", help="work: quit when the queues are empty")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds a worker may finish its job on stop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    if args.mode == "work":
        return run_worker(args.queues, burst=args.burst)
    if args.mode == "cron":
        return run_scheduler()
    if args.workers < 1 and args.no_scheduler:
        parser.error("nothing to run")
    return supervise(args.workers, not args.no_scheduler, args.queues, args.grace)


if __name__ == "__main__":
    sys.exit(main())
