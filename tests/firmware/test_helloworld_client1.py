"""examples/helloworld/client1.py as a new user runs it (review item 2): from another folder with neither PYTHONPATH
nor MICROPYPATH, under CPython and the real MicroPython. No broker: one line that says where it tried, exit 2 (it
was a ConnectionRefusedError traceback, and an ImportError under MicroPython). Ctrl-C: no traceback, exit 130."""

import signal
import subprocess

from conftest import ROOT
from test_forever import clean_env, held_port

CLIENT1 = ROOT / "examples/helloworld/client1.py"


def test_client1_without_a_broker_says_so_in_one_line(tmp_path, interp):
    sock, port = held_port()
    with sock:
        p = subprocess.run([*interp, str(CLIENT1)], env=clean_env({"CA_PORT": port}), cwd=str(tmp_path),
                           capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr == ""
    lines = p.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cannot connect to 127.0.0.1:{port}: "), p.stdout
    assert "111" in lines[0]  # the reason: ECONNREFUSED


def test_client1_ctrl_c_exits_without_a_traceback(broker, tmp_path, interp):
    broker.connack = False  # client1 waits in connect
    p = subprocess.Popen([*interp, str(CLIENT1)], env=clean_env({"CA_PORT": broker.port}), cwd=str(tmp_path),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert broker.wait_for(lambda: broker.count("connect") >= 1, timeout=30)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    assert "Traceback" not in out + err, out + err
    assert p.returncode == 130, out + err
    assert out.strip() == "interrupted"
