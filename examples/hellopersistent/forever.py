"""Rerun the hellopersistent device while it crashes, until it exits 0 (the seed's forever.sh, in Python).

    python examples/hellopersistent/forever.py [INTERPRETER] [DEVICE_SCRIPT]
    python examples/hellopersistent/forever.py .venv/bin/micropython     # the device under MicroPython

Runs under CPython (it starts processes); INTERPRETER (default: this Python) runs DEVICE_SCRIPT (default:
device.py next to this file), which finds this checkout's firmware_client by itself. Each attempt gets RUN=<n>
in its environment. A run that exits 0 ends the loop (status 0). A run that crashed, exiting 3 (device.py's
crash status) or killed by a signal, is rerun. A run that never reached the CA (status 4: connection refused,
nothing there) is rerun too, but after UNREACHED_MAX (env, default 3) such runs in a row the loop stops with
status 2 and says so (the bridge is most likely not running at CA_HOST:CA_PORT); a run that reached the CA
starts that count again. Any other status is an error a rerun cannot fix (an ImportError, a SyntaxError, a
NameError, a refused login: the interpreter's status 1, or 2 for its usage errors): the loop stops at once
with that status. Prints one summary line:
    forever: <runs> runs, <crashes> crashes
MAX_RUNS (env, default 1000) bounds the loop. Ctrl-C stops it (status 130) without a traceback.
"""

import os
import subprocess
import sys

CRASHED = 3  # device.py's exit status for "crashed: run me again"
UNREACHED = 4  # device.py's exit status for "never reached the CA in this run"

here = os.path.dirname(os.path.abspath(__file__))
interp = sys.argv[1] if len(sys.argv) > 1 else sys.executable
script = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "device.py")
max_runs = int(os.environ.get("MAX_RUNS", "1000"))
unreached_max = int(os.environ.get("UNREACHED_MAX", "3"))
where = "{}:{}".format(os.environ.get("CA_HOST", "127.0.0.1"), os.environ.get("CA_PORT", "1883"))


def loop():
    runs = crashes = unreached = 0
    while runs < max_runs:
        runs += 1
        env = dict(os.environ, RUN=str(runs))
        try:
            code = subprocess.call([interp, script], env=env)
        except OSError as e:  # no such interpreter
            print(f"forever: cannot run {interp}: {e.strerror or e}", file=sys.stderr)
            return 2
        if code == 0:
            print(f"forever: {runs} runs, {crashes} crashes", flush=True)
            return 0
        if code == UNREACHED:
            unreached += 1
            if unreached >= unreached_max:
                print(f"forever: cannot reach the bridge at {where} (is it running?): {unreached} runs in a row "
                      f"never reached the CA", flush=True)
                return 2
        elif code != CRASHED and code >= 0:
            print(f"forever: run {runs} exited with status {code}, not a crash (see its error above): stopping "
                  f"after {runs} runs, {crashes} crashes", flush=True)
            return code
        else:
            unreached = 0  # this run reached the CA (or was killed by a signal while at it)
        crashes += 1
    print(f"forever: gave up after {runs} runs, {crashes} crashes", flush=True)
    return 1


try:
    status = loop()
except KeyboardInterrupt:
    print("forever: interrupted", flush=True)
    status = 130
sys.exit(status)
