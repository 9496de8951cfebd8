"""Wake the sleepy device again after each of its deep sleeps (what a board's RTC does), on CPython.

    python3 examples/sleepy/wake.py [INTERPRETER]        # INTERPRETER: this Python by default, or micropython

Runs device.py (next to this file) with INTERPRETER, passes its output through, and when it ends with
"sleepy: sleeping N ms" starts it again N ms later. WAKES (env, default 0: forever) stops after that many wakes.
Any other end of the device (an error) stops the loop with its status. Ctrl-C stops it (status 130).
"""

import os
import subprocess
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
interp = sys.argv[1] if len(sys.argv) > 1 else sys.executable
wakes = int(os.environ.get("WAKES", "0"))


def loop():
    n = 0
    while not wakes or n < wakes:
        n += 1
        try:
            proc = subprocess.Popen([interp, os.path.join(here, "device.py")], stdout=subprocess.PIPE, text=True,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        except OSError as e:
            print(f"wake: cannot run {interp}: {e.strerror or e}", file=sys.stderr)
            return 2
        sleep_ms = None
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.startswith("sleepy: sleeping "):
                sleep_ms = int(line.split()[2])
        code = proc.wait()
        if code != 0 or sleep_ms is None:
            print(f"wake: the device exited with status {code} instead of sleeping: stopping after {n} wakes",
                  flush=True)
            return code or 1
        time.sleep(sleep_ms / 1000)
    print(f"wake: {n} wakes", flush=True)
    return 0


try:
    status = loop()
except KeyboardInterrupt:
    print("wake: interrupted", flush=True)
    status = 130
sys.exit(status)
