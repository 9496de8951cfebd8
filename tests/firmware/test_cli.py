"""python -m firmware_client call / listen against the fake broker."""

import json
import socket
import subprocess
import sys

from conftest import ROOT, Proc, device_env


def cli(*args, env=None, timeout=30):
    return subprocess.run(
        [sys.executable, "-m", "firmware_client", *args],
        env=device_env(env),
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_call_prints_json_result(broker):
    """Args are parsed as JSON when they can be, else strings; the result is printed as JSON."""
    p = cli("call", "--ca", "dev", "--session", "s1", "echo", "1", '{"a": [true]}', "hello",
            env={"CA_PORT": broker.port})
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == [1, {"a": [True]}, "hello"]
    connects = [e for e in broker.events if e[0] == "connect"]
    assert connects[0][1].startswith("cli-")  # never steals the device's stable client id


def test_cli_call_app_error_exit_status(broker):
    """An app error exits non-zero with the error on stderr."""
    p = cli("--port", str(broker.port), "call", "--ca", "dev", "--session", "s1", "fail")
    assert p.returncode == 1
    assert "AppError" in p.stderr and "bad nonce" in p.stderr
    assert p.stdout == ""


def test_cli_call_no_broker_fails(broker):
    """A connection failure exits non-zero (bounded by --timeout)."""
    port = broker.port
    broker.stop()
    p = cli("--port", str(port), "--timeout", "1", "call", "--ca", "dev", "echo")
    assert p.returncode == 2
    assert "error" in p.stderr


def test_cli_listen_prints_notifications(broker):
    """listen prints each notification as a JSON line."""
    p = Proc([sys.executable, "-m", "firmware_client", "--port", str(broker.port), "listen", "--ca", "dev",
              "--session", "s1", "--count", "2"], env=device_env(), cwd=str(ROOT))
    try:
        assert broker.wait_for(lambda: broker.count("sync") >= 1)
        broker.notify(["x", 1])
        broker.notify([{"b": 2}])
        p.p.wait(15)
        out, err = p.output()
    finally:
        p.stop()
    assert p.p.returncode == 0, err
    assert [json.loads(line) for line in out.splitlines()] == [["x", 1], [{"b": 2}]]


def test_cli_listen_stops_after_timeout(broker):
    """Issue 14 item 6: `--timeout 1 listen` stops after a second (exit 0: nothing was expected); it used to run on."""
    broker.notify(["queued"], send=False)  # sent on the listener's sync
    p = cli("--port", str(broker.port), "--timeout", "1", "listen", "--ca", "dev", "--session", "s1", timeout=20)
    assert p.returncode == 0, p.stderr
    assert [json.loads(line) for line in p.stdout.splitlines()] == [["queued"]]


def test_cli_listen_count_not_reached_within_timeout(broker):
    """With --count, running out of --timeout first is an error (exit 2) that says how many arrived."""
    broker.notify(["only one"], send=False)
    p = cli("--port", str(broker.port), "--timeout", "1.5", "listen", "--ca", "dev", "--session", "s1", "--count",
            "3", timeout=20)
    assert p.returncode == 2
    assert [json.loads(line) for line in p.stdout.splitlines()] == [["only one"]]
    assert "1 of 3 notifications within 1.5 s" in p.stderr


def test_cli_refused_connection_is_reported_at_once_with_host_and_port():
    """Issue 14 item 9: nothing listening is said at once, with host:port (not a bare ConnectionRefusedError after
    retrying until --timeout: with --timeout 60 the CLI would still be retrying when this test gives up)."""
    with socket.socket() as held:  # bound, never listening: connections are refused and no other test can take it
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        p = cli("--port", str(port), "--timeout", "60", "call", "--ca", "dev", "echo", timeout=20)
    assert p.returncode == 2
    assert p.stderr.strip() == f"error: cannot connect to 127.0.0.1:{port}: Connection refused"


def test_cli_refused_login_says_why(broker):
    """CONNACK refusals are named: code 5 is "not authorized", code 4 "bad user name or password"."""
    broker.connack_code = 5
    p = cli("--port", str(broker.port), "call", "--ca", "dev", "echo")
    assert p.returncode == 2
    assert p.stderr.strip() == (
        f"error: cannot connect to 127.0.0.1:{broker.port}: connection refused: not authorized (CONNACK code 5)")
    broker.connack_code = 4
    p = cli("--port", str(broker.port), "--user", "u", "--password", "wrong", "listen", "--ca", "dev",
            "--session", "s1")
    assert p.returncode == 2
    assert "bad user name or password" in p.stderr and f"127.0.0.1:{broker.port}" in p.stderr


def test_cli_listen_count_prints_exactly_n_and_leaves_the_rest_queued(broker):
    """Issue 14 (review) item 3: one poll delivers the whole backlog; `--count 3` of 5 queued prints exactly 3 and
    acks only those, so a second `--count 2` gets the other 2 (it used to print and ack all 5)."""
    for i in range(5):
        broker.notify([f"n{i}"], send=False)  # queued: all sent on the listener's sync
    p = cli("--port", str(broker.port), "--timeout", "10", "listen", "--ca", "dev", "--session", "s1", "--count",
            "3", timeout=30)
    assert p.returncode == 0, p.stderr
    assert [json.loads(line) for line in p.stdout.splitlines()] == [["n0"], ["n1"], ["n2"]]
    assert p.stderr == ""
    assert broker.wait_for(lambda: any(e[0] == "ack" and e[1]["seq"] == 3 for e in list(broker.events)))
    acked = [e[1]["seq"] for e in broker.events if e[0] in ("ack", "sync")]
    assert max(acked) == 3, acked  # the extras were not acked
    assert [q[0] for q in broker.queue] == [4, 5]
    p = cli("--port", str(broker.port), "--timeout", "10", "listen", "--ca", "dev", "--session", "s1", "--count",
            "2", timeout=30)
    assert p.returncode == 0, p.stderr
    assert [json.loads(line) for line in p.stdout.splitlines()] == [["n3"], ["n4"]]


def test_cli_connection_options_before_or_after_the_subcommand(broker):
    """Issue 14 (review) item 4: `call --port P --ca X METHOD` was "unrecognized arguments: --port"; the connection
    options now go on either side of the subcommand, and one given before it is not reset by the subcommand."""
    p = cli("call", "--port", str(broker.port), "--timeout", "5", "--ca", "dev", "--session", "s1", "echo", "after",
            env={"CA_PORT": "1"})
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == ["after"]
    p = cli("--port", str(broker.port), "call", "--ca", "dev", "--session", "s1", "--timeout", "5", "echo", "before",
            env={"CA_PORT": "1"})
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == ["before"]
    broker.notify(["x"], send=False)
    p = cli("listen", "--ca", "dev", "--session", "s1", "--port", str(broker.port), "--count", "1", "--timeout", "10",
            env={"CA_PORT": "1"}, timeout=30)
    assert p.returncode == 0, p.stderr
    assert [json.loads(line) for line in p.stdout.splitlines()] == [["x"]]
    p = cli("call", "--ca", "dev", "--nope", "echo")
    assert p.returncode == 2 and "unrecognized arguments: --nope" in p.stderr
