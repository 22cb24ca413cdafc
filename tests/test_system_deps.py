"""`make test` on a fresh machine: scripts/system-deps.sh names the Debian packages it lacks, or installs them as root.

The root branch (apt-get) is not run here; these run the other branch as an unprivileged user
(`runuser -u nobody` when the suite runs as root), with PORTAL_CHROMIUM pointing at no browser.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "system-deps.sh"
CHROMIUM_LINE = "make test needs Debian's chromium: sudo apt-get install chromium fonts-dejavu-core\n"


@pytest.fixture
def checkout():
    """The Makefile and the script in a folder the other user can read (the checkout, or pytest's
    tmp_path, may be private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="portal-system-deps-"))
    (folder / "scripts").mkdir()
    shutil.copy(REPO / "Makefile", folder / "Makefile")
    shutil.copy(SCRIPT, folder / "scripts" / SCRIPT.name)
    for path in (folder, folder / "scripts"):
        path.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def as_another_user(folder: Path, *command: str, **env: str) -> subprocess.CompletedProcess:
    environment = ["env", "-i", f"PATH={env.pop('PATH', os.environ['PATH'])}",
                   *(f"{name}={value}" for name, value in env.items())]
    prefix = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *environment, *command], cwd=folder, capture_output=True, text=True,
                          timeout=60)


def test_with_everything_installed_it_says_nothing():
    """What `make test` leaves behind: the browser the tests launch and ApacheBench are there."""
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_as_another_user_a_missing_browser_is_one_line_naming_the_packages(checkout):
    assert shutil.which("ab"), "ApacheBench is installed (the line below names chromium alone)"
    result = as_another_user(checkout, "bash", "scripts/system-deps.sh", PORTAL_CHROMIUM="/nowhere/chromium")
    assert (result.returncode, result.stdout, result.stderr) == (1, "", CHROMIUM_LINE)


def test_as_another_user_everything_missing_is_still_one_line(checkout):
    result = as_another_user(checkout, "/bin/bash", "scripts/system-deps.sh", PORTAL_CHROMIUM="/nowhere/chromium",
                             PATH="/nowhere")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == ("make test needs Debian's chromium and ApacheBench: "
                             "sudo apt-get install chromium fonts-dejavu-core apache2-utils\n")


@pytest.mark.skipif(shutil.which("make") is None, reason="make is what this checks")
def test_make_test_stops_there_before_installing_or_testing_anything(checkout):
    result = as_another_user(checkout, "make", "test", PORTAL_CHROMIUM="/nowhere/chromium")
    assert result.returncode != 0
    assert result.stdout == ""  # no pip install, no pytest
    assert result.stderr.startswith(CHROMIUM_LINE)
    assert "system-deps" in result.stderr  # make's own "*** [Makefile:NN: system-deps] Error 1"
