"""Rerun the hellopersistent device until it exits 0 (the seed's forever.sh, in Python).

    python examples/hellopersistent/forever.py [INTERPRETER] [DEVICE_SCRIPT]

INTERPRETER defaults to this Python (pass a micropython path to run the device there).
Each attempt gets RUN=<n> in its environment. Prints one summary line:
    forever: <runs> runs, <crashes> crashes
MAX_RUNS (env, default 1000) bounds the loop; exit status 0 once the device succeeded.
"""

import os
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
interp = sys.argv[1] if len(sys.argv) > 1 else sys.executable
script = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "device.py")
max_runs = int(os.environ.get("MAX_RUNS", "1000"))

runs = crashes = 0
while runs < max_runs:
    runs += 1
    env = dict(os.environ, RUN=str(runs))
    code = subprocess.call([interp, script], env=env)
    if code == 0:
        print("forever: %d runs, %d crashes" % (runs, crashes), flush=True)
        sys.exit(0)
    crashes += 1
print("forever: gave up after %d runs, %d crashes" % (runs, crashes), flush=True)
sys.exit(1)
