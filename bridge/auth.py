"""Device credentials: one auth directory holding the password files each broker reads.

Layout of an auth directory (created 0700, every file 0600, rewritten atomically under a lock)::

    amqtt.passwd       name:$argon2id$...       read by the embedded broker (bridge.amqtt_plugins) and by
                                                amqtt's own FileAuthPlugin
    mosquitto.passwd   name:$7$101$salt$hash    mosquitto's PBKDF2-SHA512 format (what mosquitto_passwd writes)
    mosquitto.clientids  prefix owner           client-id prefixes and the user owning them, read by the mosquitto
                                                plugin broker_config/ca_bridge_clientids.c: device ``X`` owns the
                                                ids ``<prefix>-X-...`` (the firmware client's default), the bridge
                                                ``ca-bridge-...``; nobody else may connect with them
    bridge.secret      the bridge's own password (user ``ca-bridge``), generated on first use

A device's username is its CA name. Passwords are generated here (192 random bits), shown once by
``ca-bridge device add`` and never stored in clear except the bridge's own. Because they are random, not chosen
by people, a cheap hash is enough: nobody brute-forces 192 bits, so the hash only has to be one-way and salted,
and cheap parameters keep a reconnect storm from stalling the broker.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bridge.errors import ConfigError
from bridge.protocol import token, valid_name

__all__ = [
    "ARGON2_PARAMS",
    "BRIDGE_USER",
    "CLIENTIDS_FILE",
    "AuthStore",
    "Credentials",
    "argon2_hash",
    "argon2_verify",
    "clientid_prefix",
    "mosquitto_hash",
    "mosquitto_verify",
    "read_clientids",
    "read_passwd",
]

BRIDGE_USER = "ca-bridge"
# argon2id, 4 MiB, 2 passes, 1 lane: ~2-5 ms per check on a small VM (amqtt's default, 64 MiB x 3 x 4 lanes,
# costs ~100-200 ms, all of it on the broker's event loop). Enough for random 192-bit secrets; see module doc.
ARGON2_PARAMS: dict[str, int] = {"time_cost": 2, "memory_cost": 4096, "parallelism": 1}  # memory in KiB
MOSQUITTO_ITERATIONS = 101  # mosquitto_passwd's default for $7$ (PBKDF2-SHA512)

AMQTT_FILE = "amqtt.passwd"
MOSQUITTO_FILE = "mosquitto.passwd"
BRIDGE_SECRET_FILE = "bridge.secret"
CLIENTIDS_FILE = "mosquitto.clientids"
BRIDGE_CLIENTID_PREFIX = BRIDGE_USER + "-"  # the bridge's ids: ca-bridge-<prefix>[-<node>] (bridge.service)
DEFAULT_PREFIX = "ca"
_CLIENTIDS_HEADER = (
    "# Client-id prefixes and the user owning them (written by `ca-bridge device`; do not edit). mosquitto's\n"
    "# ca_bridge_clientids plugin refuses a CONNECT whose client id starts with a prefix owned by another user\n"
    "# (the longest matching prefix decides). Reread on SIGHUP.\n"
)


def argon2_hash(password: str) -> str:
    """An argon2id PHC string, the format amqtt's FileAuthPlugin reads."""
    from pwdlib.hashers.argon2 import Argon2Hasher

    p = ARGON2_PARAMS
    hasher = Argon2Hasher(time_cost=p["time_cost"], memory_cost=p["memory_cost"], parallelism=p["parallelism"])
    return str(hasher.hash(password))


def argon2_verify(password: str, encoded: str) -> bool:
    """Check a password against an argon2 PHC string (its own parameters are used)."""
    from pwdlib.hashers.argon2 import Argon2Hasher

    try:
        return bool(Argon2Hasher().verify(password, encoded))
    except Exception:  # malformed hash: deny
        return False


def mosquitto_hash(password: str, *, iterations: int = MOSQUITTO_ITERATIONS, salt: bytes | None = None) -> str:
    """``$7$<iterations>$<b64 salt>$<b64 PBKDF2-SHA512>``: mosquitto 2.x's password file format."""
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def mosquitto_verify(password: str, encoded: str) -> bool:
    """Check a password against a ``$7$`` entry."""
    try:
        _, kind, iterations, salt, digest = encoded.split("$")
        if kind != "7":
            return False
        want = base64.b64decode(digest)
        got = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(got, want)


def read_passwd(path: Path) -> dict[str, str]:
    """``{user: hash}`` from a ``user:hash`` file (comments and blank lines skipped); {} if it does not exist."""
    users: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return users
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, encoded = line.partition(":")
        if sep and user and encoded:
            users[user] = encoded
    return users


def clientid_prefix(name: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The client-id prefix device ``name`` owns: the firmware client's default id is ``<prefix>-<name>-<session>``."""
    return f"{prefix}-{name}-"


def read_clientids(path: Path) -> dict[str, str]:
    """``{client-id prefix: owner}`` from a ``mosquitto.clientids`` file; {} if it does not exist."""
    owners: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return owners
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and not fields[0].startswith("#"):
            owners[fields[0]] = fields[1]
    return owners


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with a 0600 file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _render(users: dict[str, str]) -> str:
    return "".join(f"{user}:{encoded}\n" for user, encoded in sorted(users.items()))


@dataclass(frozen=True, slots=True)
class Credentials:
    """A username and its clear password. ``repr`` hides the password so it cannot end up in a log by accident."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<hidden>)"


class AuthStore:
    """An auth directory (see the module doc). Every change takes an exclusive lock on ``.lock``."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.amqtt_file = self.dir / AMQTT_FILE
        self.mosquitto_file = self.dir / MOSQUITTO_FILE
        self.bridge_secret_file = self.dir / BRIDGE_SECRET_FILE
        self.clientids_file = self.dir / CLIENTIDS_FILE

    # -- setup --------------------------------------------------------------------------------------------------

    def _ensure_dir(self) -> None:
        if self.dir.exists() and not self.dir.is_dir():
            raise ConfigError(f"{self.dir} is not a directory (the auth location is a directory of password files)")
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._ensure_dir()
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _save(self, amqtt_users: dict[str, str], mosquitto_users: dict[str, str],
              owners: dict[str, str] | None = None) -> None:
        if owners is None:
            owners = read_clientids(self.clientids_file)
        self._write_clientids(owners, set(mosquitto_users))
        _write_private(self.mosquitto_file, _render(mosquitto_users))
        _write_private(self.amqtt_file, _render(amqtt_users))  # last: the embedded broker reloads on its change

    def _set(self, amqtt_users: dict[str, str], mosq_users: dict[str, str], creds: Credentials) -> None:
        amqtt_users[creds.username] = argon2_hash(creds.password)
        mosq_users[creds.username] = mosquitto_hash(creds.password)

    def _write_clientids(self, owners: dict[str, str], users: set[str]) -> None:
        """Rewrite mosquitto.clientids: the bridge's prefix, and for every device its recorded prefixes (devices
        from before this file existed get the default ``ca-<name>-``). Prefixes of removed users are dropped."""
        owners = {p: u for p, u in owners.items() if u in users and u != BRIDGE_USER}
        owned = set(owners.values())
        for user in users - owned - {BRIDGE_USER}:
            owners.setdefault(clientid_prefix(user), user)
        owners[BRIDGE_CLIENTID_PREFIX] = BRIDGE_USER
        lines = "".join(f"{p} {u}\n" for p, u in sorted(owners.items()))
        _write_private(self.clientids_file, _CLIENTIDS_HEADER + lines)

    # -- the bridge's own credentials ---------------------------------------------------------------------------

    def bridge_credentials(self) -> Credentials:
        """The bridge's credentials, created (with both password entries) on first use."""
        with self._locked():
            amqtt_users, mosq_users = read_passwd(self.amqtt_file), read_passwd(self.mosquitto_file)
            try:
                password = self.bridge_secret_file.read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                password = ""
            creds = Credentials(BRIDGE_USER, password or token(24))
            if not password:
                _write_private(self.bridge_secret_file, creds.password + "\n")
            stale = not (argon2_verify(creds.password, amqtt_users.get(BRIDGE_USER, ""))
                         and mosquitto_verify(creds.password, mosq_users.get(BRIDGE_USER, "")))
            if stale:
                self._set(amqtt_users, mosq_users, creds)
            if stale or not self.clientids_file.exists():  # also makes the file for an auth dir from before it
                self._save(amqtt_users, mosq_users)
            return creds

    def dashboard_token(self) -> str:
        """The web dashboard's bearer token, created (0600) on first use in ``dashboard.token``."""
        path = self.dir / "dashboard.token"
        with self._locked():
            try:
                bearer = path.read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                bearer = ""
            if not bearer:
                bearer = token(24)
                _write_private(path, bearer + "\n")
            return bearer

    # -- devices ------------------------------------------------------------------------------------------------

    def add(self, name: str, *, rotate: bool = False, prefix: str = DEFAULT_PREFIX) -> Credentials:
        """Create a device (or give it a new password with ``rotate``); returns its one-time clear credentials.

        The device also gets the client ids ``<prefix>-<name>-...`` (see mosquitto.clientids in the module doc)."""
        if not valid_name(name):
            raise ConfigError(f"invalid device name {name!r}: it must be a valid CA name (see docs/PROTOCOL.md)")
        if name == BRIDGE_USER:
            raise ConfigError(f"{BRIDGE_USER!r} is the bridge's own user, not a device name")
        if not prefix or any(c.isspace() for c in prefix):
            raise ConfigError(f"invalid topic prefix {prefix!r}")
        own = clientid_prefix(name, prefix)
        if own.startswith(BRIDGE_CLIENTID_PREFIX):
            raise ConfigError(f"device name {name!r} is refused: its client ids ({own}...) would look like the "
                              f"bridge's own ({BRIDGE_CLIENTID_PREFIX}...)")
        with self._locked():
            amqtt_users, mosq_users = read_passwd(self.amqtt_file), read_passwd(self.mosquitto_file)
            exists = name in amqtt_users or name in mosq_users
            if exists and not rotate:
                raise ConfigError(f"device {name!r} exists; use --rotate to give it a new password")
            if rotate and not exists:
                raise ConfigError(f"no device named {name!r} to rotate")
            owners = read_clientids(self.clientids_file)
            other = owners.get(own, name)
            if other != name and other in mosq_users:
                raise ConfigError(f"device name {name!r} is refused: its client ids ({own}...) are device "
                                  f"{other!r}'s")
            owners[own] = name
            creds = Credentials(name, token(24))
            self._set(amqtt_users, mosq_users, creds)
            self._save(amqtt_users, mosq_users, owners)
            return creds

    def remove(self, name: str) -> bool:
        """Revoke a device; False if there was none."""
        if name == BRIDGE_USER:
            raise ConfigError(f"{BRIDGE_USER!r} is the bridge's own user, not a device")
        with self._locked():
            amqtt_users, mosq_users = read_passwd(self.amqtt_file), read_passwd(self.mosquitto_file)
            found = amqtt_users.pop(name, None) is not None
            found = mosq_users.pop(name, None) is not None or found
            if found:
                self._save(amqtt_users, mosq_users)
            return found

    def devices(self) -> list[str]:
        """Every device name (never the bridge's user, never a secret)."""
        names = set(read_passwd(self.amqtt_file)) | set(read_passwd(self.mosquitto_file))
        names.discard(BRIDGE_USER)
        return sorted(names)
