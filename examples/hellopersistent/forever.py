"""Rerun the hellopersistent device while it crashes, until it exits 0 (the seed's forever.sh, in Python).

    python examples/hellopersistent/forever.py [INTERPRETER] [DEVICE_SCRIPT]
    python examples/hellopersistent/forever.py .venv/bin/micropython     # the device under MicroPython

Runs under CPython (it starts processes); INTERPRETER (default: this Python) runs DEVICE_SCRIPT (default:
device.py next to this file), which finds this checkout's firmware_client by itself. Each attempt gets RUN=<n>
in its environment. A run that exits 0 ends the loop (status 0). A run that crashed, exiting 3 (device.py's
crash status) or killed by a signal, is rerun. Any other status is an error a rerun cannot fix (an ImportError,
a SyntaxError, a NameError, a refused login: the interpreter's status 1, or 2 for its usage errors): the loop
stops at once with that status. Prints one summary line:
    forever: <runs> runs, <crashes> crashes
MAX_RUNS (env, default 1000) bounds the loop.
"""

import os
import subprocess
import sys

CRASHED = 3  # device.py's exit status for "crashed: run me again"

here = os.path.dirname(os.path.abspath(__file__))
interp = sys.argv[1] if len(sys.argv) > 1 else sys.executable
script = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "device.py")
max_runs = int(os.environ.get("MAX_RUNS", "1000"))

runs = crashes = 0
while runs < max_runs:
    runs += 1
    env = dict(os.environ, RUN=str(runs))
    try:
        code = subprocess.call([interp, script], env=env)
    except OSError as e:  # no such interpreter
        print(f"forever: cannot run {interp}: {e.strerror or e}", file=sys.stderr)
        sys.exit(2)
    if code == 0:
        print(f"forever: {runs} runs, {crashes} crashes", flush=True)
        sys.exit(0)
    if code != CRASHED and code >= 0:
        print(f"forever: run {runs} exited with status {code}, not a crash (see its error above): stopping after "
              f"{runs} runs, {crashes} crashes", flush=True)
        sys.exit(code)
    crashes += 1
print(f"forever: gave up after {runs} runs, {crashes} crashes", flush=True)
sys.exit(1)
