"""Ordinary first-use mistakes end in one clear line, never a traceback or silence (issue 14)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import pytest

from bridge.cli import load_app
from bridge.errors import CallError
from bridge.store.urls import scrub as _scrub
from bridge.testing import Harness
from tests.conftest import ROOT, Mosquitto, free_port, stop

SHOP = "examples/shop/shop.py:Shop"


def ca_bridge(*args: str, cwd=ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def one_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


# -- 4: the embedded broker's port is taken (by scripts/run, typically) ------------------------------------------------


def test_a_taken_port_is_one_line_that_says_what_to_do(tmp_path):
    with socket.socket() as held:  # what scripts/run's broker does to 127.0.0.1:1883
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        out = ca_bridge("run", SHOP, "--db", str(tmp_path / "x.db"), "--listen", f"127.0.0.1:{port}")
    assert out.returncode == 2
    line = one_line(out.stderr)
    assert line.startswith(f"ca-bridge: embedded broker cannot listen on 127.0.0.1:{port}: address already in use")
    assert "scripts/run" in line and "--listen" in line


# -- 7: unknown method -------------------------------------------------------------------------------------------------


async def test_an_unknown_method_names_the_method_and_the_ca():
    async with Harness(load_app(SHOP)) as h:
        with pytest.raises(CallError) as err:
            await h.call("shop1", "default", "get_countrs")
    assert (err.value.kind, err.value.name) == ("bad_request", "NoSuchMethod")
    assert err.value.message == "Shop CA 'shop1' has no method 'get_countrs'"
    assert err.value.data == {}


def test_the_device_cli_prints_an_unknown_method_in_one_line_without_empty_data(bridge_factory):
    bridge = bridge_factory(SHOP)
    bridge.start()
    out = subprocess.run([sys.executable, "-m", "firmware_client", "--port", str(bridge.port), "call", "--ca", "shop1",
                          "get_countrs"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert one_line(out.stderr) == "error: bad_request NoSuchMethod: Shop CA 'shop1' has no method 'get_countrs'"


# -- 8: the app file does not load -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "spec", "expected"), [
    ("from bridge import CA\n\n\nclass Shop(CA)\n    pass\n", "shop.py:Shop", r"shop\.py:4: SyntaxError: \S.*"),
    ("from bridge import CA\nimport no_such_module_zz\n", "shop.py:Shop",
     r"shop\.py:2: ModuleNotFoundError: No module named 'no_such_module_zz'"),
    ("from bridge import CA\n\nclass Shop(CA):\n    pass\n", "shop.py:Shopp",
     r"shop\.py has no 'Shopp' \(its CA classes: Shop\)"),
    ("X = 1\n", "shop.py:Shop", r"shop\.py has no 'Shop' \(it defines no CA class\)"),
])
def test_an_app_that_does_not_load_is_one_line(tmp_path, source, spec, expected):
    (tmp_path / "shop.py").write_text(source)
    out = ca_bridge("run", spec, "--db", str(tmp_path / "x.db"), "--listen", f"127.0.0.1:{free_port()}", cwd=tmp_path)
    assert out.returncode == 2
    line = one_line(out.stderr)
    assert re.fullmatch("ca-bridge: " + expected, line), line
    assert "subclass" not in line


# -- 9: the broker is not there yet ------------------------------------------------------------------------------------


def test_the_bridge_says_waiting_until_the_broker_is_there(tmp_path):
    broker = Mosquitto(tmp_path)  # not started yet: its port is free
    bridge = subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", SHOP, "--db", str(tmp_path / "x.db"),
         "--broker", f"mqtt://127.0.0.1:{broker.port}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert bridge.stdout is not None
    os.set_blocking(bridge.stdout.fileno(), False)
    seen = b""

    def wait_for(word: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + 60
        while word not in seen and time.monotonic() < deadline and bridge.poll() is None:
            seen += bridge.stdout.read() or b""
            time.sleep(0.05)
        assert word in seen, seen

    try:
        wait_for(b"waiting for broker")
        assert f"waiting for broker 127.0.0.1:{broker.port}".encode() in seen
        assert b"listening" not in seen  # scripts/run greps for it: it must not show before it is true
        broker.start()
        wait_for(b"listening")
        assert f"Shop listening on ca/+/in via broker 127.0.0.1:{broker.port}".encode() in seen
    finally:
        stop(bridge)
        broker.stop()
        bridge.stdout.close()


# -- 10: a password in a PostgreSQL URL --------------------------------------------------------------------------------


def test_migrate_hides_the_password_without_mangling_the_message(tmp_path):
    assert ca_bridge("create", "a", "--db", str(tmp_path / "src.db")).returncode == 0
    port = free_port()  # nothing listens there
    out = ca_bridge("migrate", str(tmp_path / "src.db"), f"postgresql://user:o@127.0.0.1:{port}/db")
    assert out.returncode == 2
    line = out.stderr.splitlines()[0]
    assert f"cannot connect to PostgreSQL at postgresql://user@127.0.0.1:{port}/db: OperationalError" in line
    assert "Connection refused" in out.stderr and "***" not in out.stderr and ":o@" not in out.stderr


@pytest.mark.parametrize(("message", "url", "shown"), [
    ('connection to server at "127.0.0.1", port 1 failed: Connection refused', "postgresql://u:1@127.0.0.1:1/d",
     'connection to server at "127.0.0.1", port 1 failed: Connection refused'),
    ('unexpected spaces found in "sec ret", use percent-encoded spaces', "postgresql://u:sec ret@h/d",
     'unexpected spaces found in "***", use percent-encoded spaces'),
    ('in URI: "postgresql://u:secret@[h/d"', "postgresql://u:secret@[h/d", 'in URI: "postgresql://u@[h/d"'),
    ('invalid value in "u:secret@h"', "postgresql://u:secret@h/d", 'invalid value in "u:***@h"'),
    ('bad "password=secret&x=1"', "postgresql://u@h/d?password=secret&x=1", 'bad "password=***&x=1"'),
    ('failed for password s3cr3t!', "postgresql://u:s3cr3t!@h/d", 'failed for password ***'),
])
def test_scrub_hides_the_password_only_where_libpq_shows_it(message, url, shown):
    assert _scrub(message, url) == shown


# -- 11: a reader that stops early -------------------------------------------------------------------------------------


def test_inspect_into_a_closed_pipe_is_quiet(tmp_path):
    db = tmp_path / "s.db"
    assert ca_bridge("create", *[f"ca{i}" for i in range(50)], "--db", str(db)).returncode == 0
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head` that has already exited
    try:
        out = subprocess.run([sys.executable, "-m", "bridge", "inspect", "--json", "--db", str(db)], cwd=ROOT,
                             stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert out.stderr == ""
    assert out.returncode == 141

