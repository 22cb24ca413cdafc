"""What `pip install .` installs: the portal and the worker, never the development stand-ins."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The modules of devtools/ (by file name): none of them may ship, under any folder.
STAND_INS = {path.name for path in (REPO / "devtools").glob("*.py")} - {"__init__.py"}


def _checkout_copy(dest: Path) -> Path:
    """The files a clone of this checkout would hold (uncommitted changes included, ignored files not)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():  # a file deleted in the working tree is not part of the clone
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def test_the_wheel_holds_portal_and_worker_and_no_stand_in(tmp_path):
    source = _checkout_copy(tmp_path / "src")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         str(source), "-w", str(tmp_path / "dist")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [wheel] = (tmp_path / "dist").glob("subscription_portal-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}

    assert tops - {"portal", "worker"} == {f"{wheel.name.split('-py3')[0]}.dist-info"}, tops
    assert {"portal/__init__.py", "portal/templates/base.html", "worker/__init__.py", "worker/__main__.py",
            "worker/subprocesses.py"} <= set(names)
    assert STAND_INS >= {"embedded.py", "launcher.py", "mailcatcher.py", "stripe_emulator.py"}
    shipped_stand_ins = [name for name in names if name.rsplit("/", 1)[-1] in STAND_INS]
    assert shipped_stand_ins == []
    # Nothing that ships reaches for what does not.
    with zipfile.ZipFile(wheel) as archive:
        importers = [name for name in names if name.endswith(".py")
                     and "devtools" in _imported_packages(archive.read(name).decode())]
    assert importers == []


def _imported_packages(source: str) -> set[str]:
    """The top-level package of every import in `source`, lazy imports inside functions included."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_no_module_of_portal_or_worker_imports_devtools():
    importers = [str(path.relative_to(REPO)) for folder in ("portal", "worker")
                 for path in sorted((REPO / folder).rglob("*.py"))
                 if "devtools" in _imported_packages(path.read_text())]
    assert importers == []


def test_the_worker_command_loads_no_devtools_module():
    """In a fresh interpreter where devtools is importable, `python -m worker`'s module loads none of it."""
    script = ("import importlib.util, sys\n"
              "assert importlib.util.find_spec('devtools') is not None\n"
              "import worker.__main__\n"
              "print(sorted(m for m in sys.modules if m == 'devtools' or m.startswith('devtools.')))")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
