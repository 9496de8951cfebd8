"""The `ca-bridge` command line: run an app, inspect a store."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from bridge.app import CA
from bridge.device import DeviceLimits
from bridge.errors import BridgeError, ConfigError
from bridge.logs import configure as configure_logging
from bridge.service import Bridge, Settings
from bridge.session import SessionLimits
from bridge.store import Store

__all__ = ["load_app", "main"]

log = logging.getLogger("bridge")


def load_app(spec: str) -> type[CA]:
    """Load ``path/to/file.py:Class`` or ``package.module:Class``.

    The file form imports its neighbours as ``python path/to/file.py`` would (the file's folder goes first on
    sys.path); the package form finds packages in the current directory as ``python -m`` does, so that
    ``ca-bridge run`` and ``python -m bridge run`` load the same app.
    """
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ConfigError(f"APP must be path/to/file.py:Class or package.module:Class, not {spec!r}")
    if target.endswith(".py") or "/" in target:
        path = Path(target).resolve()
        if not path.is_file():
            raise ConfigError(f"no such file: {target}")
        _on_path(path.parent)
        module_spec = importlib.util.spec_from_file_location(f"ca_app_{path.stem}", path)
        if module_spec is None or module_spec.loader is None:
            raise ConfigError(f"cannot load {target}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_spec.name]
            raise ConfigError(_import_failure(target, path, exc)) from None
    else:
        _on_path(Path.cwd())
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ConfigError(f"cannot import {target}: {exc}") from None
        except Exception as exc:
            raise ConfigError(_import_failure(target, None, exc)) from None
    app = getattr(module, attr, None)
    if app is None:
        classes = sorted(k for k, v in vars(module).items()
                         if isinstance(v, type) and issubclass(v, CA) and v is not CA)
        found = f"its CA classes: {', '.join(classes)}" if classes else "it defines no CA class"
        raise ConfigError(f"{target} has no {attr!r} ({found})")
    if not (isinstance(app, type) and issubclass(app, CA)):
        raise ConfigError(f"{spec} is not a subclass of bridge.CA")
    return app


def _on_path(folder: Path) -> None:
    """Put ``folder`` first on sys.path, unless it is there already (``python -m bridge`` puts the current one)."""
    if not any(Path(p or ".").resolve() == folder for p in sys.path):
        sys.path.insert(0, str(folder))


def _import_failure(target: str, path: Path | None, exc: Exception) -> str:
    """One line for an app that fails to load, ``file:line: Error: message``, without the traceback."""
    def shown(filename: str | None) -> str:
        return target if filename is None or (path is not None and filename == str(path)) else filename

    if isinstance(exc, SyntaxError):
        return f"{shown(exc.filename)}{f':{exc.lineno}' if exc.lineno else ''}: {type(exc).__name__}: {exc.msg}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if f.filename != __file__ and "importlib" not in f.filename]
    where = f"{shown(frames[-1].filename)}:{frames[-1].lineno}" if frames else target
    return f"{where}: {type(exc).__name__}: {exc}"


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host or "127.0.0.1", int(port)


def _max_resident(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a count of CAs (0: no bound), got {value!r}")
    return int(value)


def _count(least: int, what: str) -> Callable[[str], int]:
    def parse(value: str) -> int:
        if not value.isdigit() or int(value) < least:
            raise argparse.ArgumentTypeError(f"expected {what} (an int >= {least}), got {value!r}")
        return int(value)

    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ca-bridge", description="Run Cloud Assistants for gadgets over MQTT.")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-format", default="text", choices=["text", "json"],
                   help="json: one object per line with ts, level, logger, msg, and ca/session/request when known")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a CA app (starts the embedded amqtt broker unless --broker is given)")
    run.add_argument("app", metavar="APP", help="path/to/file.py:Class or package.module:Class")
    run.add_argument("--broker", metavar="URL", help="external broker, e.g. mqtt://127.0.0.1:1883 (no embedded one)")
    run.add_argument("--listen", type=_host_port, default=("127.0.0.1", 1883), metavar="HOST:PORT",
                     help="embedded broker address (default 127.0.0.1:1883)")
    run.add_argument("--broker-config", type=Path, metavar="FILE", help="amqtt YAML config for the embedded broker")
    run.add_argument("--db", default="bridge.db", metavar="PATH|URL",
                     help="SQLite file (default ./bridge.db) or postgresql://user@host/db (several bridges may share "
                          "one database: see docs/SCALING.md)")
    run.add_argument("--node", help="PostgreSQL: this bridge's name in the cluster, unique and stable across "
                                    "restarts (default host-pid)")
    run.add_argument("--share-group", default="ca-bridge", metavar="NAME",
                     help="PostgreSQL with an external broker: subscribe as $share/NAME/... so each request reaches "
                          "one bridge ('' for a plain subscription)")
    run.add_argument("--node-ttl", type=float, default=5.0, metavar="SECONDS",
                     help="PostgreSQL: a bridge silent this long is presumed dead and its CAs are taken over")
    run.add_argument("--db-pool", type=int, default=4, metavar="N", help="PostgreSQL connections per bridge")
    run.add_argument("--metrics", type=_host_port, metavar="HOST:PORT",
                     help="serve Prometheus metrics at http://HOST:PORT/metrics (off by default)")
    run.add_argument("--http", type=_host_port, metavar="HOST:PORT",
                     help="serve the read-only web dashboard (off by default; needs a token when --auth is on)")
    run.add_argument("--http-token", metavar="TOKEN",
                     help="dashboard token (default with --auth: generated once into DIR/dashboard.token)")
    run.add_argument("--prefix", default="ca", help="topic prefix (default ca)")
    run.add_argument("--pulse", type=float, default=2.0, metavar="SECONDS", help="pulse interval; 0 disables")
    run.add_argument("--max-payload", type=int, default=65536, metavar="BYTES")
    run.add_argument("--mailbox", type=int, default=256, help="per-CA mailbox bound (answers busy beyond it)")
    run.add_argument("--max-resident", type=_max_resident, default=10_000, metavar="N",
                     help="CAs kept in memory: beyond N the least recently used idle ones are evicted and loaded "
                          "again when asked for (0: no bound; default 10000)")
    run.add_argument("--call-timeout", type=float, default=30.0, metavar="SECONDS", help="per-call deadline")
    run.add_argument("--max-sessions", type=int, default=10)
    run.add_argument("--queue-limit", type=int, default=5, help="default per-session queue limit")
    run.add_argument("--dedup-window", type=int, default=8,
                     help="replies remembered per session: a retry of one of its last N calls is not run again "
                          "(and the CA's last 8 x N calls; default 8)")
    run.add_argument("--bundle-margin", type=_count(0, "milliseconds"), default=2000, metavar="MS",
                     help="devices: added to a command bundle's start when a CA sends it (default 2000)")
    run.add_argument("--device-map-max", type=_count(64, "bytes"), default=16384, metavar="BYTES",
                     help="devices: the largest to_cloud or from_cloud map, encoded (default 16384)")
    run.add_argument("--max-bundles", type=_count(1, "a count"), default=8, metavar="N",
                     help="devices: unfinished bundles kept per CA; beyond N the oldest is dropped with result "
                          "false (default 8)")
    run.add_argument("--max-queue", type=int, default=10_000,
                     help="hard cap of any session queue, even an 'unlimited' one (oldest dropped)")
    run.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL", "EXTRA"], help="SQLite durability")
    run.add_argument("--client-id", help="the bridge's MQTT client id (default ca-bridge-PREFIX)")
    run.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="auto",
                     help="event loop: uvloop when installed (auto), or the standard one")
    run.add_argument("--no-autocreate", dest="autocreate", action="store_false",
                     help="only CAs already in the store or made with `ca-bridge create` exist; others: not_found")
    run.add_argument("--rate", type=float, default=0.0, metavar="CALLS_PER_S",
                     help="per-CA call rate limit (0: none); beyond it calls answer busy (RateLimited)")
    run.add_argument("--burst", type=int, default=20, help="calls a CA may take at once under --rate")
    run.add_argument("--auth", type=Path, metavar="DIR",
                     help="auth directory (see `device add`): the embedded broker requires passwords and applies the "
                          "per-device ACL; the bridge connects as user ca-bridge with its password from DIR")
    run.add_argument("--ca-file", type=Path, metavar="FILE", help="CA certificate to verify an mqtts:// broker")
    run.add_argument("--tls-cert", type=Path, metavar="FILE", help="embedded broker: TLS certificate (chain), PEM")
    run.add_argument("--tls-key", type=Path, metavar="FILE", help="embedded broker: TLS private key, PEM")
    run.add_argument("--tls-listen", type=_host_port, default=("127.0.0.1", 8883), metavar="HOST:PORT",
                     help="embedded broker TLS listener address (default 127.0.0.1:8883)")

    dev = sub.add_parser("device", help="manage device credentials (add, remove, list)")
    dev_sub = dev.add_subparsers(dest="device_command", required=True)
    auth_help = "auth directory (default ./devices.auth)"
    add = dev_sub.add_parser("add", help="create a device and print its settings (the password is shown only once)")
    add.add_argument("name", metavar="NAME", help="the device's CA name (also its MQTT username)")
    add.add_argument("--rotate", action="store_true", help="give an existing device a new password")
    add.add_argument("--host", default="127.0.0.1", help="broker host to print in the settings")
    add.add_argument("--port", type=int, default=1883, help="broker port to print in the settings")
    add.add_argument("--tls", action="store_true", help="print mqtts settings")
    add.add_argument("--prefix", default="ca",
                     help="topic prefix to print in the settings; the device owns the client ids PREFIX-NAME-...")
    add.add_argument("--json", action="store_true", help="print the settings as JSON")
    rm = dev_sub.add_parser("remove", help="revoke a device")
    rm.add_argument("name", metavar="NAME")
    ls = dev_sub.add_parser("list", help="list device names (never secrets)")
    ls.add_argument("--json", action="store_true")
    for p_ in (add, rm, ls):
        p_.add_argument("--auth", type=Path, default=Path("devices.auth"), metavar="DIR", help=auth_help)

    create = sub.add_parser("create", help="create CAs (needed when the bridge runs with --no-autocreate)")
    create.add_argument("names", nargs="+", metavar="NAME")
    create.add_argument("--db", default="bridge.db", metavar="PATH|URL", help="SQLite file or postgresql:// URL")

    insp = sub.add_parser("inspect", help="list CAs, or show one CA's state and sessions")
    insp.add_argument("ca", nargs="?", metavar="CA")
    insp.add_argument("--db", default="bridge.db", metavar="PATH|URL", help="SQLite file or postgresql:// URL")
    insp.add_argument("--json", action="store_true", help="machine-readable output")

    mig = sub.add_parser("migrate", help="copy a SQLite store into PostgreSQL (stop the bridge on it first)")
    mig.add_argument("source", metavar="SQLITE_FILE")
    mig.add_argument("target", metavar="POSTGRESQL_URL")
    mig.add_argument("--batch", type=int, default=500, help="CAs per transaction (default 500)")
    mig.add_argument("--replace", action="store_true",
                     help="overwrite CAs that exist in the target already (default: refuse to start)")
    return p


async def _run(args: argparse.Namespace) -> None:
    app = load_app(args.app)
    settings = Settings(
        db=args.db, broker=args.broker, listen=args.listen, broker_config=args.broker_config, prefix=args.prefix,
        pulse=args.pulse or None, max_payload=args.max_payload, mailbox=args.mailbox, call_timeout=args.call_timeout,
        max_resident=args.max_resident,
        synchronous=args.synchronous, client_id=args.client_id,
        limits=SessionLimits(args.max_sessions, args.queue_limit, args.max_queue, args.dedup_window),
        auth=args.auth, ca_file=args.ca_file, tls_cert=args.tls_cert, tls_key=args.tls_key,
        tls_listen=args.tls_listen, autocreate=args.autocreate, rate=args.rate, burst=args.burst,
        node=args.node, share_group=args.share_group or None, node_ttl=args.node_ttl, db_pool=args.db_pool,
        metrics=args.metrics, http=args.http, http_token=args.http_token,
        device=DeviceLimits(args.bundle_margin, args.device_map_max, args.max_bundles),
    )
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.auth is not None and args.broker is None:
        from bridge.amqtt_plugins import reload_all

        loop.add_signal_handler(signal.SIGHUP, reload_all)  # reread the password file now (it is also watched)
    async with Bridge(app, settings) as bridge:  # a failure to start is one line of stderr, nothing before it
        log.info("event loop: %s (--loop %s)", type(loop).__module__.split(".")[0], args.loop)
        where = f"embedded broker listening on {args.listen[0]}:{args.listen[1]}" if args.broker is None \
            else f"broker {bridge.broker_url.host}:{bridge.broker_url.port}"
        assert bridge.link is not None
        if not bridge.link.connected.is_set():  # "listening" only once it is true: scripts/run waits for that word
            print(f"ca-bridge: {app.__name__} waiting for broker {bridge.broker_url.host}:{bridge.broker_url.port} "
                  "(not reachable yet; retrying)", flush=True)
            await _first(stop.wait(), bridge.link.connected.wait())
        if not stop.is_set():
            print(f"ca-bridge: {app.__name__} listening on {bridge.topics.inbound_filter} via {where}, "
                  f"store {_redact(args.db)}"
                  f"{f', cluster node {bridge.cluster.node}' if bridge.cluster is not None else ''}", flush=True)
            await stop.wait()
        log.info("shutting down")


async def _first(*aws: Coroutine[Any, Any, Any]) -> None:
    """Wait until one of ``aws`` is done; cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _redact(db: str) -> str:
    from bridge.store import redact_url

    return redact_url(db)


def _store(db: str, *, must_exist: bool, read_only: bool = False) -> Store:
    """The store ``--db`` names: PostgreSQL for a postgresql:// URL, else a SQLite file (``read_only``: opened
    as it is, no schema created or upgraded, and any write refused). Not exclusive: a tool works beside a running
    bridge (SQLite's own locking keeps a tool's single transaction safe)."""
    from bridge.store import is_postgres_url, open_store

    store = open_store(db, application_name="ca-bridge-tool", read_only=read_only, exclusive=False)
    if must_exist and not is_postgres_url(db) and not Path(db).exists():
        raise ConfigError(f"no store at {db}")
    return store


async def _inspect(args: argparse.Namespace) -> int:
    from bridge.inspect import describe, render

    store = _store(args.db, must_exist=True, read_only=True)  # inspecting never writes
    await store.open()
    try:
        if args.ca:
            record = await store.load(args.ca)
            if record is None:
                print(f"no CA named {args.ca!r} in {_redact(args.db)}", file=sys.stderr)
                return 1
            print(render(describe(record), args.json))
        else:
            print(render([describe(r) for r in await store.load_all()], args.json))
    finally:
        await store.close()
    return 0


async def _create(args: argparse.Namespace) -> int:
    from bridge.protocol import check_name

    for name in args.names:
        check_name(name, "CA name")
    store = _store(args.db, must_exist=False)
    await store.open()
    try:
        for name in args.names:
            made = await store.register(name)
            print(f"{'created' if made else 'exists already:'} {name}")
    finally:
        await store.close()
    return 0


async def _migrate(args: argparse.Namespace) -> int:
    from bridge.migrate import migrate

    copied = await migrate(Path(args.source), args.target, batch=args.batch, replace=args.replace,
                           progress=lambda n, total: print(f"copied {n}/{total} CAs", flush=True))
    print(f"migrated {copied} CAs from {args.source} to {_redact(args.target)}")
    return 0


def _device(args: argparse.Namespace) -> int:
    import json

    from bridge.auth import AuthStore

    store = AuthStore(args.auth)
    if args.device_command == "list":
        names = store.devices() if args.auth.exists() else []
        print(json.dumps(names) if args.json else "\n".join(names) or f"no devices in {args.auth}")
        return 0
    if args.device_command == "remove":
        if not store.remove(args.name):
            print(f"no device named {args.name!r} in {args.auth}", file=sys.stderr)
            return 1
        print(f"removed device {args.name!r} from {args.auth}; it is refused on its next connect "
              "(the embedded broker rereads the file; send mosquitto a SIGHUP)")
        return 0
    store.bridge_credentials()  # the bridge's own entry exists before any device's
    creds = store.add(args.name, rotate=args.rotate, prefix=args.prefix)
    prefix = args.prefix
    settings = {
        "host": args.host, "port": args.port, "tls": args.tls, "username": creds.username,
        "password": creds.password, "ca": creds.username,
        "publish": f"{prefix}/{creds.username}/in",
        "subscribe": [f"{prefix}/{creds.username}/session/+", f"{prefix}/{creds.username}/errors"],
    }
    if args.json:
        print(json.dumps(settings))
    else:
        print(f"{'rotated' if args.rotate else 'added'} device {creds.username!r} in {args.auth}")
        for key in ("host", "port", "tls", "username", "password", "publish", "subscribe"):
            value = settings[key]
            print(f"  {key:9} {', '.join(value) if isinstance(value, list) else value}")
        print("The password is shown only now: store it on the device.")
    return 0


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when asked for, or by default when installed (it speeds up the embedded broker most)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("--loop uvloop: uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    """Entry point of `ca-bridge` and `python -m bridge`."""
    args = _parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        return _command(args)
    except BridgeError as exc:
        print(f"ca-bridge: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `ca-bridge inspect --json | head`: the reader is gone, which is not an error here
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not fail again
        return 141  # what a shell reports for a writer stopped by SIGPIPE


def _command(args: argparse.Namespace) -> int:
    if args.command == "run":
        with asyncio.Runner(loop_factory=_loop_factory(args.loop)) as runner:
            runner.run(_run(args))
        return 0
    if args.command == "device":
        code = _device(args)
    elif args.command == "create":
        code = asyncio.run(_create(args))
    elif args.command == "migrate":
        code = asyncio.run(_migrate(args))
    else:
        code = asyncio.run(_inspect(args))
    sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
    return code
