"""`ca-bridge device add/remove/list` and the password file formats each broker reads."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from pwdlib.hashers.argon2 import Argon2Hasher

from bridge.auth import AuthStore, argon2_verify, mosquitto_hash, mosquitto_verify, read_passwd
from tests.security.conftest import add_device, cli
from tests.skips import missing


def test_add_prints_settings_once_and_list_never_shows_secrets(tmp_path):
    auth = tmp_path / "devices.auth"
    out = cli("device", "add", "shop1", "--auth", str(auth), "--host", "mqtt.example.org", "--port", "8883",
              "--tls").stdout
    password = next(line.split()[-1] for line in out.splitlines() if line.strip().startswith("password"))
    assert len(password) >= 32 and "mqtt.example.org" in out and "8883" in out and "ca/shop1/in" in out
    listing = cli("device", "list", "--auth", str(auth)).stdout
    assert listing.split() == ["shop1"] and password not in listing
    assert json.loads(cli("device", "list", "--auth", str(auth), "--json").stdout) == ["shop1"]
    for f in auth.iterdir():  # the clear password is stored nowhere
        assert password not in f.read_text()
    assert argon2_verify(password, read_passwd(auth / "amqtt.passwd")["shop1"])
    assert mosquitto_verify(password, read_passwd(auth / "mosquitto.passwd")["shop1"])


def test_add_refuses_an_existing_name_unless_rotate(tmp_path):
    auth = tmp_path / "a"
    first = add_device(auth, "dev1")
    again = cli("device", "add", "dev1", "--auth", str(auth), check=False)
    assert again.returncode != 0 and "--rotate" in again.stderr and first["password"] not in again.stdout
    assert argon2_verify(first["password"], read_passwd(auth / "amqtt.passwd")["dev1"])  # unchanged
    rotated = add_device(auth, "dev1", "--rotate")
    assert not argon2_verify(first["password"], read_passwd(auth / "amqtt.passwd")["dev1"])
    assert argon2_verify(rotated["password"], read_passwd(auth / "amqtt.passwd")["dev1"])
    assert cli("device", "add", "ghost", "--rotate", "--auth", str(auth), check=False).returncode != 0


@pytest.mark.parametrize("name", ["ca-bridge", "a/b", "+", "#", "-x", "a b", "x" * 65, "caf\u00e9", "a:b"])
def test_bad_or_reserved_names_are_refused(tmp_path, name):
    r = cli("device", "add", name, "--auth", str(tmp_path / "a"), check=False)
    assert r.returncode != 0


def test_remove(tmp_path):
    auth = tmp_path / "a"
    add_device(auth, "dev1")
    add_device(auth, "dev2")
    assert cli("device", "remove", "dev1", "--auth", str(auth)).returncode == 0
    assert cli("device", "remove", "dev1", "--auth", str(auth), check=False).returncode == 1
    assert json.loads(cli("device", "list", "--auth", str(auth), "--json").stdout) == ["dev2"]
    assert set(read_passwd(auth / "mosquitto.passwd")) == {"ca-bridge", "dev2"}


def test_permissions_and_bridge_credentials(tmp_path):
    store = AuthStore(tmp_path / "a")
    creds = store.bridge_credentials()
    assert "password=<hidden>" in repr(creds) and creds.password not in repr(creds)
    assert store.bridge_credentials() == creds  # stable across calls
    assert (os.stat(store.dir).st_mode & 0o777) == 0o700
    for f in store.dir.iterdir():
        assert (os.stat(f).st_mode & 0o777) == 0o600
    assert store.devices() == []


def test_hash_formats_match_what_the_brokers_read(tmp_path):
    # argon2id PHC strings: what amqtt's FileAuthPlugin (pwdlib) verifies
    store = AuthStore(tmp_path / "a")
    creds = store.add("dev1")
    encoded = read_passwd(store.amqtt_file)["dev1"]
    assert encoded.startswith("$argon2id$v=19$m=4096,t=2,p=1$")
    assert Argon2Hasher().verify(creds.password, encoded)
    # $7$: byte-for-byte what mosquitto_passwd derives for the same salt
    tool = Path("/usr/bin/mosquitto_passwd")
    if not tool.exists():
        missing("mosquitto_passwd is not installed", "apt-get install mosquitto")
    f = tmp_path / "pw"
    subprocess.run([str(tool), "-c", "-b", str(f), "u", "s3cret"], check=True, capture_output=True)
    theirs = read_passwd(f)["u"]
    _, _, iterations, salt, _ = theirs.split("$")
    import base64

    assert mosquitto_hash("s3cret", iterations=int(iterations), salt=base64.b64decode(salt)) == theirs
    assert mosquitto_verify("s3cret", theirs) and not mosquitto_verify("wrong", theirs)
