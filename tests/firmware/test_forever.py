"""examples/hellopersistent/forever.py as its docstring says to run it (issue 14 item 5), under both interpreters.

The environment is scrubbed of PYTHONPATH and MICROPYPATH and the command runs from another folder, as from a
fresh clone: the device must find firmware_client by itself. A run that crashes is rerun; an error that a rerun
cannot fix (ImportError, SyntaxError, NameError, a bad setting) stops the loop at once.
"""

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, run_device
from test_integration import HELLOPERSISTENT, SCRIPT, start_bridge

FOREVER = ROOT / "examples/hellopersistent/forever.py"


def clean_env(extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MICROPYPATH", "PYTHONSTARTUP")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def forever(interp, tmp_path, extra, script=None):
    cmd = [sys.executable, str(FOREVER), interp[0]] + ([str(script)] if script else [])
    p = subprocess.run(cmd, env=clean_env(extra), cwd=str(tmp_path), capture_output=True, timeout=120)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def test_forever_runs_the_device_from_a_fresh_clone(procs, tmp_path, interp):
    """`python forever.py [micropython]` works without MICROPYPATH: crashes are rerun until every item is bought."""
    try:
        import bridge  # noqa: F401
    except ImportError:
        pytest.skip("bridge not available")
    port, _ = start_bridge(procs, tmp_path, HELLOPERSISTENT)
    items = 12
    rc, out, err = forever(interp, tmp_path, {"CA_PORT": port, "ITEMS": items, "CRASH": 60, "SEED": 5,
                                              "CA_NAME": "fresh", "MAX_RUNS": 60})
    assert rc == 0, out[-1500:] + err[-1500:]
    assert "ImportError" not in out + err
    m = re.search(r"forever: (\d+) runs, (\d+) crashes", out)
    assert m and int(m.group(2)) >= 1 and int(m.group(1)) == int(m.group(2)) + 1, out[-500:]
    rc, res, o2, e2 = run_device([sys.executable], SCRIPT, [port, "counters", "fresh"])
    assert rc == 0, o2 + e2
    assert res["counters"] == {f"item{i:03d}": 1 for i in range(items)}


@pytest.mark.parametrize(
    "source,error",
    [
        ("import no_such_module_anywhere\n", "no_such_module_anywhere"),  # ImportError
        ("print(no_such_name)\n", "no_such_name"),  # NameError
        ("def broken(:\n    pass\n", "SyntaxError"),
    ],
)
def test_forever_stops_on_errors_that_are_not_crashes(tmp_path, interp, source, error):
    """A device that cannot work (a missing module, a typo, a syntax error) runs once, not MAX_RUNS times."""
    script = tmp_path / "bad_device.py"
    script.write_text(source)
    rc, out, err = forever(interp, tmp_path, {"MAX_RUNS": 5}, script)
    assert rc == 1, out + err
    assert error in out + err
    assert "forever: run 1 exited with status 1, not a crash" in out, out
    assert "gave up" not in out


def test_forever_stops_when_the_device_is_misconfigured(tmp_path, interp):
    """device.py itself: a setting a rerun cannot fix (an invalid CA name) ends the loop after one run."""
    rc, out, err = forever(interp, tmp_path, {"MAX_RUNS": 5, "CA_NAME": "-not-a-name", "CRASH": 0})
    assert rc == 1, out + err
    assert "invalid CA name" in out
    assert "forever: run 1 exited with status 1, not a crash" in out


def test_forever_reruns_crashes(tmp_path, interp):
    """Status 3 (device.py's crash) is rerun, with RUN counting the attempts."""
    script = tmp_path / "crashy.py"
    script.write_text("import os\nimport sys\nsys.exit(0 if int(os.getenv('RUN')) >= 3 else 3)\n")
    rc, out, err = forever(interp, tmp_path, {"MAX_RUNS": 5}, script)
    assert rc == 0, out + err
    assert "forever: 3 runs, 2 crashes" in out
