"""Cost of a password CONNECT on the embedded amqtt broker (not a test; run by hand):

    .venv/bin/python -m tests.security.bench_connect

Modes: anonymous; amqtt's FileAuthPlugin with pwdlib's default argon2 (64 MiB, t=3, p=4) checked on the event loop;
the same plugin with bridge.auth's cheap parameters (4 MiB, t=2, p=1);
the bridge's DevicePolicyPlugin with bridge.auth's cheap argon2 parameters checked on a worker thread. For each:
mean ms per sequential CONNECT/CONNACK, wall time of a storm of concurrent CONNECTs, and the longest stall of the
broker's event loop during the storm.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.conftest import free_port
from tests.security.conftest import connect_packet


def _broker(mode: str, port: int, workdir: str, ready, done, result) -> None:  # child process
    from bridge.auth import argon2_hash
    from bridge.broker import EmbeddedBroker

    passwd = Path(workdir) / "amqtt.passwd"
    config = {"listeners": {"default": {"type": "tcp", "max_connections": 10000}}, "timeout_disconnect_delay": 0}
    kwargs = {}
    if mode == "anonymous":
        config["plugins"] = {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
    elif mode == "amqtt-default":
        from pwdlib.hashers.argon2 import Argon2Hasher

        passwd.write_text(f"dev:{Argon2Hasher().hash('pw')}\n")
        config["plugins"] = {"amqtt.plugins.authentication.FileAuthPlugin": {"password_file": str(passwd)}}
    elif mode == "amqtt-cheap":
        passwd.write_text(f"dev:{argon2_hash('pw')}\n")
        config["plugins"] = {"amqtt.plugins.authentication.FileAuthPlugin": {"password_file": str(passwd)}}
    else:
        passwd.write_text(f"dev:{argon2_hash('pw')}\n")
        config["plugins"] = {}
        kwargs["password_file"] = passwd

    async def main() -> None:
        lag = 0.0
        async with EmbeddedBroker("127.0.0.1", port, config, **kwargs):
            ready.set()
            while not done.is_set():
                t = time.perf_counter()
                await asyncio.sleep(0.001)
                lag = max(lag, time.perf_counter() - t - 0.001)
                if result.get("reset"):
                    result["reset"], lag = False, 0.0
                result["lag"] = lag

    asyncio.run(main())


def _connect(port: int, user: str | None) -> float:
    t = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(connect_packet(f"c{time.perf_counter_ns()}", user, "pw" if user else None))
        ack = s.recv(4)
        assert ack[3:4] == b"\x00", ack
        s.sendall(b"\xe0\x00")
    return time.perf_counter() - t


def run(mode: str, n: int = 40, storm: int = 100) -> dict[str, float]:
    port = free_port()
    with tempfile.TemporaryDirectory() as d, multiprocessing.Manager() as mgr:
        ready, done, result = mgr.Event(), mgr.Event(), mgr.dict()
        proc = multiprocessing.Process(target=_broker, args=(mode, port, d, ready, done, result))
        proc.start()
        ready.wait(20)
        user = None if mode == "anonymous" else "dev"
        _connect(port, user)
        seq = statistics.mean(_connect(port, user) for _ in range(n)) * 1000
        result["reset"] = True
        time.sleep(0.05)
        t = time.perf_counter()
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda _: _connect(port, user), range(storm)))
        wall = time.perf_counter() - t
        time.sleep(0.05)
        lag = result.get("lag", 0.0) * 1000
        done.set()
        proc.join(10)
    return {"ms_per_connect": seq, "storm_s": wall, "max_loop_stall_ms": lag}


if __name__ == "__main__":
    for m in sys.argv[1:] or ["anonymous", "amqtt-default", "amqtt-cheap", "bridge"]:
        r = run(m)
        print(f"{m:14} {r['ms_per_connect']:7.1f} ms/CONNECT   100 concurrent CONNECTs: {r['storm_s']:5.2f} s   "
              f"longest event-loop stall {r['max_loop_stall_ms']:6.1f} ms", flush=True)
