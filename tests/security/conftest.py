"""Secured brokers for the security tests: an auth directory made with the CLI, TLS certificates made with openssl,
and either the embedded amqtt broker (bridge --auth --tls-cert) or mosquitto with broker_config/mosquitto-auth.conf."""

from __future__ import annotations

import getpass
import json
import re
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import PYTHON, ROOT, Mosquitto, free_port, wait_port
from tests.skips import missing

APP = "tests/apps.py:Counter"


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "bridge", *args], cwd=ROOT, capture_output=True, text=True, check=check,
                          timeout=60)


def add_device(auth: Path, name: str, *extra: str) -> dict:
    return json.loads(cli("device", "add", name, "--auth", str(auth), "--json", *extra).stdout)


def make_certs(d: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost signed by it (openssl CLI)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        missing("openssl is not installed", "apt-get install openssl")
    d.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=ca-bridge test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    # a second, unrelated CA: a client trusting only it must refuse the server
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other.pem", "-days", "2",
        "-subj", "/CN=some other CA")
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key", "other_ca": d / "other.pem"}


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


def build_clientid_plugin(out: Path) -> Path:
    """broker_config/ca_bridge_clientids.c built with cc into ``out`` (needs the mosquitto-dev headers)."""
    import os

    cc = shutil.which("cc") or shutil.which("gcc")
    missing = "a C compiler" if cc is None else (
        "the mosquitto-dev headers" if not Path("/usr/include/mosquitto_broker.h").exists() else None)
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} missing: cannot build mosquitto's client-id plugin (apt-get install gcc "
                        "mosquitto-dev)")
        pytest.skip(f"{missing} missing: cannot build mosquitto's client-id plugin")
    subprocess.run([str(cc), "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(out),
                    str(ROOT / "broker_config" / "ca_bridge_clientids.c")],
                   check=True, capture_output=True, timeout=120)
    return out


def mosquitto_auth_conf(template: Path, *, port: int, tls_port: int, passwd: Path, acl: Path, certs: dict,
                        plugin: Path) -> str:
    """broker_config/mosquitto-auth.conf with the test's ports and paths (every other line as shipped)."""
    out = []
    for line in template.read_text().splitlines():
        key = line.split(" ", 1)[0]
        if key == "plugin":
            line = f"plugin {plugin}"
        elif key == "plugin_opt_clientid_file":
            line = f"plugin_opt_clientid_file {passwd.parent / 'mosquitto.clientids'}"
        elif key == "listener":
            line = f"listener {port} 127.0.0.1" if " 1883" in line else f"listener {tls_port} 127.0.0.1"
        elif key == "password_file":
            line = f"password_file {passwd}"
        elif key == "acl_file":
            line = f"acl_file {acl}"
        elif key == "certfile":
            line = f"certfile {certs['cert']}"
        elif key == "keyfile":
            line = f"keyfile {certs['key']}"
        elif key == "persistence":
            line = "persistence false"
        elif key in ("persistence_location", "autosave_interval"):
            continue
        out.append(line)
    # mosquitto started as root drops to user "mosquitto", who cannot read the 0600 files of this test's user
    out.append(f"user {getpass.getuser()}")
    return "\n".join(out) + "\n"


class SecureMosquitto(Mosquitto):
    def __init__(self, workdir: Path, auth: Path, certs: dict) -> None:
        super().__init__(workdir)
        self.tls_port = free_port()
        self.conf.write_text(mosquitto_auth_conf(
            ROOT / "broker_config" / "mosquitto-auth.conf", port=self.port, tls_port=self.tls_port,
            passwd=auth / "mosquitto.passwd", acl=ROOT / "broker_config" / "mosquitto.acl", certs=certs,
            plugin=build_clientid_plugin(workdir / "ca_bridge_clientids.so")))

    def start(self) -> None:
        self.log = self.conf.with_suffix(".log")
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "ab"))  # noqa: SIM115
        wait_port(self.port)
        wait_port(self.tls_port)

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(1)  # SIGHUP: reread password and ACL files


@dataclass
class Secure:
    """A running secured setup: ``port`` (plain) and ``tls_port`` accept devices; ``creds[name]`` their settings."""

    kind: str
    auth: Path
    certs: dict
    port: int
    tls_port: int
    bridge: object
    broker: SecureMosquitto | None
    creds: dict[str, dict] = field(default_factory=dict)

    def reload(self) -> None:
        """Make the broker see a changed auth directory (amqtt watches the file; mosquitto wants SIGHUP)."""
        if self.broker is not None:
            self.broker.reload()


@pytest.fixture(params=["amqtt", "mosquitto"])
def secure(request, tmp_path, certs, bridge_factory):
    auth = tmp_path / "devices.auth"
    creds = {name: add_device(auth, name) for name in ("alice", "bob")}
    broker = None
    if request.param == "mosquitto":
        if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
            missing("mosquitto is not installed", "apt-get install mosquitto")
        broker = SecureMosquitto(tmp_path, auth, certs)
        broker.start()
        bridge = bridge_factory(APP, broker_port=broker.port, extra=[
            "--broker", f"mqtts://127.0.0.1:{broker.tls_port}", "--ca-file", str(certs["ca"]), "--auth", str(auth)])
        port, tls_port = broker.port, broker.tls_port
    else:
        tls_port = free_port()
        bridge = bridge_factory(APP, extra=[
            "--auth", str(auth), "--tls-cert", str(certs["cert"]), "--tls-key", str(certs["key"]),
            "--tls-listen", f"127.0.0.1:{tls_port}"])
        port = bridge.port
    try:
        bridge.start()
        s = Secure(request.param, auth, certs, port, tls_port, bridge, broker, creds)
        yield s
    finally:
        bridge.stop()
        if broker is not None:
            broker.stop()


# -- a bare paho client to probe what the broker allows -----------------------------------------------------------


class Probe:
    """A paho client that records CONNACK, SUBACK codes and every message it receives (with the retain flag)."""

    def __init__(self, port: int, username: str | None = None, password: str | None = None, *,
                 tls: Path | None = None, client_id: str | None = None, clean_session: bool = True) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "",
                                  clean_session=clean_session, protocol=mqtt.MQTTv311)
        self.connack: mqtt.ReasonCode | None = None
        self.connected = threading.Event()
        self.subacks: dict[int, list] = {}
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls is not None:
            self.client.tls_set(ca_certs=str(tls))
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *a: self.connected.set()
        self.port = port

    def _on_connect(self, _c, _u, _f, rc, _p) -> None:
        self.connack = rc
        self.connected.set()

    def _on_subscribe(self, _c, _u, mid, codes, _p) -> None:
        with self._cond:
            self.subacks[mid] = [c.value for c in codes]
            self._cond.notify_all()

    def _on_message(self, _c, _u, m) -> None:
        with self._cond:
            self.messages.append((m.topic, bytes(m.payload), bool(m.retain)))
            self._cond.notify_all()

    def connect(self, timeout: float = 10.0) -> bool:
        """True if the broker accepted the connection."""
        try:
            self.client.connect("127.0.0.1", self.port)
        except OSError:
            return False
        self.client.loop_start()
        self.connected.wait(timeout)
        return self.connack is not None and not self.connack.is_failure

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 10.0) -> list[int]:
        """The SUBACK codes (0x80 = refused)."""
        _rc, mid = self.client.subscribe(topic, qos)
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self.subacks, timeout), "no SUBACK"
            return self.subacks[mid]

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos, retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- raw MQTT 3.1.1 packets for what paho refuses to send --------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode()
    return len(b).to_bytes(2, "big") + b


def connect_packet(client_id: str, username: str | None, password: str | None) -> bytes:
    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = _str("MQTT") + bytes([4, flags]) + (60).to_bytes(2, "big") + _str(client_id)
    if username is not None:
        body += _str(username)
    if password is not None:
        body += _str(password)
    return bytes([0x10]) + _varint(len(body)) + body


def publish_packet(topic: str, payload: bytes, qos: int = 0, packet_id: int = 1) -> bytes:
    body = _str(topic) + (packet_id.to_bytes(2, "big") if qos else b"") + payload
    return bytes([0x30 | (qos << 1)]) + _varint(len(body)) + body


def raw_session(port: int, client_id: str, username: str | None, password: str | None) -> socket.socket:
    """A TCP connection that has sent CONNECT and got a successful CONNACK."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(connect_packet(client_id, username, password))
    connack = sock.recv(4)
    assert connack[:1] == b"\x20" and connack[3:4] == b"\x00", f"CONNACK {connack!r}"
    return sock


def strip_ansi(s: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", s)
