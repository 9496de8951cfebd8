"""`ca-bridge run --loop ... --prefix ...` as a user starts it: a real bridge process answers on the prefixed topics
only, and runs on the event loop asked for."""

from __future__ import annotations

import cbor2
import pytest

from tests.device import Device

PREFIX = "plant/v1"


@pytest.mark.parametrize("loop,expected", [("asyncio", "asyncio"), ("uvloop", "uvloop"), ("auto", "uvloop")])
def test_loop_and_prefix_options_of_a_real_bridge(bridge_factory, loop, expected):
    pytest.importorskip("uvloop")  # a dependency on Linux (pyproject.toml): auto picks it
    bridge = bridge_factory("tests/apps.py:Counter", extra=["--loop", loop, "--prefix", PREFIX])
    bridge.start()
    dev = Device(bridge.port, "c1", prefix=PREFIX)
    try:
        # the same call on the default prefix, sent first on the same connection, is not for this bridge
        dev.publish(cbor2.dumps({"t": "call", "id": "unprefixed", "session": "default", "method": "incr"}),
                    topic="ca/c1/in")
        assert dev.call("incr") == 1  # answered on plant/v1/c1/session/default
        assert dev.call("get")["n"] == 1
        assert "unprefixed" not in dev.replies
        assert {topic for topic, _ in dev.raw} == {f"{PREFIX}/c1/session/default"}
    finally:
        dev.close()
    logs = bridge.logs()
    assert f"event loop: {expected} (--loop {loop})" in logs, logs[-2000:]


def test_an_unknown_loop_is_refused_without_a_traceback(bridge_factory):
    bridge = bridge_factory("tests/apps.py:Counter", extra=["--loop", "trio"])
    with pytest.raises(RuntimeError) as err:
        bridge.start()
    assert "invalid choice: 'trio'" in str(err.value)
    assert "Traceback" not in str(err.value)
