"""Every benchmark under bench/ still runs: each script, at its --tiny size, on both databases.

The scripts are found by glob, so a new one is covered without editing this file. A module
under bench/ without a `__main__` block is either code the scripts import (`from bench import
cli`) or a helper app a script serves (bench/hello.py, bench/reference_record.py under gunicorn in
usage_api.py); a script's run must name a helper app (`bench.<name>`), so one no script starts any
more is noticed too. The figures of a tiny
run mean nothing; what counts is exit code 0 and the table at the end.
"""
from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = sorted((REPO / "bench").glob("*.py"))
SCRIPTS = [path for path in BENCH if 'if __name__ == "__main__":' in path.read_text()]
#: Modules the scripts import (`from bench import cli`): code they share, not apps they serve.
LIBRARIES = [path for path in BENCH if path not in SCRIPTS
             and any(f"from bench import {path.stem}" in script.read_text() for script in SCRIPTS)]
HELPERS = [path for path in BENCH if path not in SCRIPTS and path not in LIBRARIES]
BACKENDS = {"postgres", "sqlite"}


@functools.cache
def run_tiny(script: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), "--tiny"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def table_rows(output: str) -> list[list[str]]:
    """The rows under the last header line starting with `backend`."""
    lines = [line.split() for line in output.splitlines()]
    headers = [n for n, words in enumerate(lines) if words[:1] == ["backend"]]
    assert headers, "no table (a header line starting with 'backend')"
    return [words for words in lines[headers[-1] + 1:] if words[:1] and words[0] in BACKENDS]


def test_the_glob_finds_the_benchmarks():
    assert {path.name for path in SCRIPTS} >= {"pages.py", "usage_api.py"}
    assert {path.name for path in HELPERS} >= {"hello.py", "reference_record.py"}
    assert {path.name for path in LIBRARIES} == {"cli.py"}


@pytest.mark.parametrize("script", SCRIPTS, ids=[path.name for path in SCRIPTS])
def test_a_benchmark_runs_to_its_table_at_a_tiny_size(script):
    result = run_tiny(script)
    assert result.returncode == 0, f"{script.name} --tiny exited {result.returncode}:\n{result.stderr[-4000:]}"
    rows = table_rows(result.stdout)
    assert {row[0] for row in rows} == BACKENDS, result.stdout[-3000:]


@pytest.mark.parametrize("helper", HELPERS, ids=[path.name for path in HELPERS])
def test_a_helper_app_is_served_by_a_benchmark(helper):
    module = f"bench.{helper.stem}"
    assert any(module in run_tiny(script).stdout for script in SCRIPTS), f"no benchmark's tiny run names {module}"
