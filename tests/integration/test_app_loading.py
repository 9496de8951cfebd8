"""`ca-bridge run APP` loads an app as Python would run it (issue 14 review, item 5): the package form finds
packages in the current directory (as `python -m bridge run` does), and the file form imports the modules beside
the file (as `python path/to/app.py` does), from whatever directory the command runs in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.device import Device
from tests.procs import free_port, spawn, stop, wait_output

CA_BRIDGE = Path(sys.executable).with_name("ca-bridge")  # the console script a user runs, not `python -m bridge`

APP = """\
from bridge import CA, method
from {helpers} import GREETING


class Hello(CA):
    @method
    async def hello(self):
        return GREETING
"""


def make_apps(root: Path) -> None:
    (root / "myapp").mkdir()
    (root / "myapp" / "__init__.py").write_text("")
    (root / "myapp" / "helpers.py").write_text('GREETING = "hello from a package"\n')
    (root / "myapp" / "hello.py").write_text(APP.format(helpers="myapp.helpers"))
    (root / "app").mkdir()
    (root / "app" / "helpers.py").write_text('GREETING = "hello from a sibling"\n')
    (root / "app" / "app.py").write_text(APP.format(helpers="helpers"))


@pytest.mark.parametrize(("command", "spec", "expected"), [
    ("ca-bridge", "myapp.hello:Hello", "hello from a package"),
    ("python -m bridge", "myapp.hello:Hello", "hello from a package"),
    ("ca-bridge", "app/app.py:Hello", "hello from a sibling"),
    ("python -m bridge", "app/app.py:Hello", "hello from a sibling"),
])
def test_both_app_forms_load_from_the_users_folder(tmp_path, command, spec, expected):
    if command == "ca-bridge" and not CA_BRIDGE.exists():
        pytest.fail(f"{CA_BRIDGE} is missing: run scripts/bootstrap")
    make_apps(tmp_path)
    port = free_port()
    cmd = [str(CA_BRIDGE)] if command == "ca-bridge" else [sys.executable, "-m", "bridge"]
    log = tmp_path / "stderr.log"
    with open(log, "wb") as err:
        proc = spawn([*cmd, "run", spec, "--db", str(tmp_path / "x.db"), "--listen", f"127.0.0.1:{port}"],
                     cwd=tmp_path, stdout=subprocess.PIPE, stderr=err)
    try:
        wait_output(proc, timeout=30, log=log)  # raises with the stderr when it exits instead
        d = Device(port, "h1")
        try:
            assert d.call("hello") == expected
        finally:
            d.close()
    finally:
        stop(proc)
