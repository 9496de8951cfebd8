"""A graceful stop under load: "SIGINT/SIGTERM drain the mailboxes, commit and publish what is pending, then stop"
(README). The signal arrives while one call is running and more wait in the CA's mailbox; every one of them must
be answered on the broker and committed in the store the bridge leaves behind."""

from __future__ import annotations

import re
import signal
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import committed_state, free_port, wait_until
from tests.device import Device

QUEUED = 5


def mailbox_depth(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        page = resp.read().decode()
    found = re.search(r"^ca_bridge_mailbox_depth ([0-9.e+]+)$", page, re.M)
    return float(found.group(1)) if found else -1.0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_answers_and_commits_every_queued_call(sig, mosquitto, bridge_factory, tmp_path):
    mport = free_port()
    bridge = bridge_factory("tests/apps.py:Gated", broker_port=mosquitto.port,
                            extra=["--pulse", "0", "--metrics", f"127.0.0.1:{mport}"])
    bridge.start()
    gate = tmp_path / "gate"
    d = Device(mosquitto.port, "s1", "phone")
    try:
        assert d.call("record", "warm") == "warm"
        held = d.send_call("hold", str(gate), "held")
        wait_until(Path(f"{gate}.started").exists, "the first call is running")
        queued = {d.send_call("record", f"q{i}"): f"q{i}" for i in range(QUEUED)}
        wait_until(lambda: mailbox_depth(mport) == QUEUED, f"{QUEUED} calls wait in the mailbox")
        assert bridge.proc is not None
        bridge.proc.send_signal(sig)
        wait_until(lambda: "shutting down" in bridge.logs(), "the bridge has begun to stop")
        gate.touch()  # the held call finishes only now, while the bridge is stopping
        assert bridge.proc.wait(30) == 0, bridge.logs()[-3000:]
        assert d.wait_reply(held) == {"t": "reply", "id": held, "ok": "held"}
        for rid, token in queued.items():
            assert d.wait_reply(rid) == {"t": "reply", "id": rid, "ok": token}
        tokens = ["warm", "held", *queued.values()]
        assert [n["args"][0] for n in d.wait_notes(len(tokens))] == tokens
        assert committed_state(bridge.db, "s1")["done"] == tokens
        assert "not committed" not in bridge.logs()
    finally:
        d.close()
