"""SIGKILL the bridge mid-stream, restart it, and check every call took effect exactly once."""

from __future__ import annotations

import random
import threading
import time

from tests.device import Device


def test_sigkill_mid_stream_loses_and_repeats_nothing(live_factory):
    live = live_factory()
    rng = random.Random(1234)
    devices = [Device(live.port, f"crash{i}", "default") for i in range(4)]
    done = threading.Event()
    acknowledged: dict[str, set[str]] = {d.ca: set() for d in devices}
    fire_and_forget: dict[str, set[str]] = {d.ca: set() for d in devices}
    failures: list[BaseException] = []

    def work(dev: Device) -> None:
        try:
            i = 0
            while not done.is_set() or i < 20:
                i += 1
                dev.call("record", f"t{i}", retry=0.5, timeout=60)
                acknowledged[dev.ca].add(f"t{i}")
                if i % 5 == 0:  # never retried, never waited for: must end up applied once or not at all
                    dev.send_call("record", f"f{i}")
                    fire_and_forget[dev.ca].add(f"f{i}")
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(d,)) for d in devices]
    for t in threads:
        t.start()
    for _ in range(4):  # the devices keep calling through every kill
        time.sleep(rng.uniform(0.3, 1.2))
        live.bridge.kill()
        time.sleep(rng.uniform(0.0, 0.3))
        live.bridge.start()
    time.sleep(0.5)
    done.set()
    for t in threads:
        t.join(120)
    assert not failures, failures
    for dev in devices:
        state = dev.call("get", retry=0.5, timeout=30)
        seen = state["seen"]
        for token in acknowledged[dev.ca]:
            assert seen.get(token) == 1, (dev.ca, token, seen.get(token))
        for token in fire_and_forget[dev.ca]:
            assert seen.get(token, 0) in (0, 1), (dev.ca, token, seen.get(token))
        assert len(acknowledged[dev.ca]) >= 20
        dev.close()
    from bridge.store.sqlite import SQLiteStore

    assert SQLiteStore(live.bridge.db).integrity_check() == []
