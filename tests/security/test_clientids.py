"""Client ids are bound to credentials on both brokers: a device with valid credentials cannot use another device's
(or the bridge's) client id to disconnect it or to take over or wipe its saved session.

amqtt: DevicePolicyPlugin binds an id to the first user that authenticated with it. mosquitto: the
broker_config/ca_bridge_clientids.c plugin with the mosquitto.clientids file the credential CLI writes."""

from __future__ import annotations

import time

import pytest

from bridge.auth import AuthStore, read_clientids
from bridge.errors import ConfigError
from tests.device import Device
from tests.security.conftest import Probe, add_device, cli

TIMEOUT = 15.0


class Watched(Probe):
    """A Probe that counts its connections and disconnections and can wait for a payload."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.connects = 0
        self.disconnects = 0
        on_connect = self.client.on_connect

        def connected(*args) -> None:
            with self._cond:
                self.connects += 1
            on_connect(*args)

        def disconnected(*_a) -> None:
            with self._cond:
                self.disconnects += 1
                self._cond.notify_all()
            self.connected.set()

        self.client.on_connect = connected
        self.client.on_disconnect = disconnected

    def wait_for(self, needle: bytes, timeout: float = TIMEOUT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: any(needle in p for _t, p, _r in self.messages), timeout)


def _watched(secure, name: str, client_id: str, *, clean_session: bool = False) -> Watched:
    c = secure.creds[name]
    return Watched(secure.port, c["username"], c["password"], client_id=client_id, clean_session=clean_session)


@pytest.fixture
def clients(secure):
    made: list = []

    def track(x):
        made.append(x)
        return x

    yield track
    for x in made:
        x.close()


def _notify(secure, clients, ca: str, token: str) -> None:
    """Another session of ``ca`` (an unbound client id) makes the CA notify session "watch" with ``token``."""
    c = secure.creds[ca]
    sender = clients(Device(secure.port, ca, "sender", username=c["username"], password=c["password"]))
    assert sender.call("record_notify", token) >= 1


@pytest.mark.parametrize(("who", "thief_clean"), [("alice", False), ("alice", True), ("wrong-password", True)],
                         ids=["persistent", "clean", "wrong-password"])
def test_a_device_cannot_use_another_devices_client_id(secure, clients, who, thief_clean):
    """alice CONNECTs with bob's firmware client id while bob is connected with a saved session (or someone tries
    bob's id with a wrong password): the CONNECT is refused, bob's connection stays up and keeps receiving his
    notifications, and his saved session survives."""
    bob = clients(_watched(secure, "bob", "ca-bob-phone"))
    assert bob.connect()
    assert bob.subscribe("ca/bob/session/+") == [0x01]

    if who == "wrong-password":
        thief = clients(Watched(secure.port, "bob", "not-the-password", client_id="ca-bob-phone", clean_session=True))
    else:
        thief = clients(_watched(secure, who, "ca-bob-phone", clean_session=thief_clean))
    accepted = thief.connect()  # returns on the CONNACK, or when the broker drops the connection
    assert not accepted, "alice was accepted with bob's client id"

    # fence: a notification for bob, through the bridge; bob must get it on the connection he had all along
    _notify(secure, clients, "bob", "fence-1")
    assert bob.wait_for(b"fence-1"), "bob no longer receives his notifications"
    assert (bob.connects, bob.disconnects) == (1, 0), "bob's connection was replaced"

    # his saved session (subscription and queue) is intact: a notification sent while he is away is kept for him
    bob.close()
    _notify(secure, clients, "bob", "queued-2")
    again = clients(_watched(secure, "bob", "ca-bob-phone"))
    assert again.connect()
    assert again.wait_for(b"queued-2"), "bob's saved session was lost"
    assert not any(b"fence" in p or b"queued" in p for _t, p, _r in thief.messages)


def test_a_device_cannot_use_the_bridges_client_id(secure, clients):
    """The bridge's own id (ca-bridge-ca) is the bridge's: a device taking it would cut every CA off."""
    thief = clients(_watched(secure, "alice", "ca-bridge-ca"))
    assert not thief.connect()
    bob = secure.creds["bob"]
    dev = clients(Device(secure.port, "bob", username=bob["username"], password=bob["password"]))
    assert dev.call("incr") == 1  # the bridge still serves
    assert "already connected" not in (secure.broker.log.read_text() if secure.broker is not None else "")


def test_several_sessions_of_one_device_keep_their_own_client_ids(secure, clients):
    """A CA's sessions on several connections (ca-bob-phone, ca-bob-tablet) do not replace each other."""
    phone = clients(_watched(secure, "bob", "ca-bob-phone"))
    tablet = clients(_watched(secure, "bob", "ca-bob-tablet"))
    assert phone.connect() and tablet.connect()
    assert phone.subscribe("ca/bob/session/+") == [0x01] and tablet.subscribe("ca/bob/session/+") == [0x01]
    _notify(secure, clients, "bob", "both")
    assert phone.wait_for(b"both") and tablet.wait_for(b"both")
    assert (phone.disconnects, tablet.disconnects) == (0, 0)


def test_a_device_cannot_claim_another_devices_client_id_in_advance(secure, clients):
    """ca-bob-... is bob's before bob ever used it, so alice cannot squat it and lock bob's device out."""
    assert not clients(_watched(secure, "alice", "ca-bob-new")).connect()
    assert clients(_watched(secure, "bob", "ca-bob-new")).connect()


def test_a_device_added_while_the_broker_runs_owns_its_client_ids(secure, clients):
    secure.creds["carol"] = add_device(secure.auth, "carol")
    if secure.broker is not None:  # mosquitto rereads the files on SIGHUP; wait for the plugin to say it has
        log = secure.broker.log
        loaded = log.read_text().count("client id prefixes from")
        secure.reload()
        deadline = time.monotonic() + TIMEOUT
        while log.read_text().count("client id prefixes from") == loaded and time.monotonic() < deadline:
            time.sleep(0.05)
    assert not clients(_watched(secure, "alice", "ca-carol-x")).connect()
    assert clients(_watched(secure, "carol", "ca-carol-x")).connect()


# -- the file the credential CLI writes for mosquitto's plugin ---------------------------------------------------


def test_the_cli_writes_each_devices_client_id_prefix(tmp_path):
    auth = tmp_path / "auth"
    add_device(auth, "shop")
    add_device(auth, "shop-1", "--prefix", "site")
    owners = read_clientids(auth / "mosquitto.clientids")
    assert owners == {"ca-bridge-": "ca-bridge", "ca-shop-": "shop", "site-shop-1-": "shop-1"}
    add_device(auth, "shop", "--rotate")
    assert read_clientids(auth / "mosquitto.clientids")["ca-shop-"] == "shop"
    cli("device", "remove", "shop-1", "--auth", str(auth))
    assert read_clientids(auth / "mosquitto.clientids") == {"ca-bridge-": "ca-bridge", "ca-shop-": "shop"}


def test_device_names_that_would_own_someone_elses_client_ids_are_refused(tmp_path):
    auth = tmp_path / "auth"
    add_device(auth, "a-b")  # owns ca-a-b-...
    bad = cli("device", "add", "b", "--prefix", "ca-a", "--auth", str(auth), check=False)
    assert bad.returncode != 0 and "a-b" in bad.stderr and "Traceback" not in bad.stderr
    for name in ("bridge", "bridge-ca"):  # ca-bridge-... is the bridge's
        bad = cli("device", "add", name, "--auth", str(auth), check=False)
        assert bad.returncode != 0 and "bridge" in bad.stderr and "Traceback" not in bad.stderr
    assert read_clientids(auth / "mosquitto.clientids") == {"ca-bridge-": "ca-bridge", "ca-a-b-": "a-b"}


def test_an_auth_directory_from_before_the_clientids_file_gets_one(tmp_path):
    store = AuthStore(tmp_path / "auth")
    store.add("shop")
    store.clientids_file.unlink()
    store.bridge_credentials()  # what `ca-bridge run --auth` and every `device add` do first
    assert read_clientids(store.clientids_file) == {"ca-bridge-": "ca-bridge", "ca-shop-": "shop"}
    with pytest.raises(ConfigError):
        store.add("shop", prefix="has space")

