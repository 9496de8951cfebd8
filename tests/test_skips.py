"""tests/skips.py and the skip count: a missing dependency skips on a developer machine, fails under CI and stops a
script with a one-line error; every run ends with "skipped: N" (also written to $CA_BRIDGE_SKIPPED_FILE)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import PYTHON, ROOT

NEEDS_FROB = """
from tests.skips import missing, require

def test_has_frob():
    missing("frob is not installed", "apt-get install frob")

def test_has_python():
    require(True, "python is not installed")
"""


def run_pytest(tmp_path, ci: str) -> tuple[subprocess.CompletedProcess[str], str]:
    (tmp_path / "test_frob.py").write_text(NEEDS_FROB)
    count = tmp_path / f"skipped-{ci or 'none'}"
    env = {**os.environ, "CI": ci, "CA_BRIDGE_SKIPPED_FILE": str(count), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [PYTHON, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-q", "-rs", "--rootdir",
         str(tmp_path), str(tmp_path / "test_frob.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    return done, count.read_text().strip() if count.exists() else ""


@pytest.mark.parametrize("ci", ["", "0", "false"])
def test_a_missing_dependency_skips_and_is_counted_off_ci(tmp_path, ci):
    done, count = run_pytest(tmp_path, ci)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "skipped: 1" in done.stdout and count == "1"
    assert "test_frob.py:5: frob is not installed (apt-get install frob)" in done.stdout  # the caller's line


@pytest.mark.parametrize("ci", ["1", "true"])
def test_a_missing_dependency_fails_under_ci(tmp_path, ci):
    done, count = run_pytest(tmp_path, ci)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed, 1 passed" in done.stdout and "frob is not installed" in done.stdout
    assert "skipped: 0" in done.stdout and count == "0"


def test_a_script_stops_with_a_one_line_error():
    done = subprocess.run([PYTHON, "-c", "from tests.skips import missing; missing('frob is not installed', 'x')"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr == "error: frob is not installed (x)\n"
