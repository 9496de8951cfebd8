"""Command line (CPython): call a CA method, or listen to a session's notifications.

    python -m firmware_client call --ca NAME [--session S] METHOD [ARGS...]
    python -m firmware_client listen --ca NAME --session S [--count N]

ARGS are parsed as JSON when possible, else taken as strings. Results and notifications are
printed as JSON (bytes as {"$bytes": base64}). Host, port, user and password come from flags or
CA_HOST, CA_PORT, CA_USER, CA_PASSWORD. --timeout: call waits that long to connect and again for
the reply (default 10 s); listen stops after that long (default 0: never). A broker that refuses
the connection is reported at once with its host:port, not retried. The connection options (--host
--port --user --password --prefix --codec --tls-ca --timeout) go before or after the subcommand. listen
--count N prints exactly N notifications and acks only those: the rest stay queued for the next listener.
"""

import argparse
import base64
import json
import os
import sys
import time

from firmware_client import CAError, Client


def _arg(text):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _json(value):
    def default(o):
        if isinstance(o, (bytes, bytearray)):
            return {"$bytes": base64.b64encode(bytes(o)).decode()}
        raise TypeError(type(o).__name__)

    return json.dumps(value, default=default, ensure_ascii=False)


def _connection_options(p, defaults):
    """The connection options; given before or after the subcommand (``defaults=False``: the subcommand's copy,
    whose options default to nothing so that they never overwrite a value given before the subcommand)."""

    def d(value):
        return value if defaults else argparse.SUPPRESS

    p.add_argument("--host", default=d(os.getenv("CA_HOST", "127.0.0.1")))
    p.add_argument("--port", type=int, default=d(int(os.getenv("CA_PORT", "0")) or None))
    p.add_argument("--user", default=d(os.getenv("CA_USER")))
    p.add_argument("--password", default=d(os.getenv("CA_PASSWORD")))
    p.add_argument("--prefix", default=d("ca"))
    p.add_argument("--codec", choices=["cbor", "json"], default=d("cbor"))
    p.add_argument("--tls-ca", default=d(None), help="CA certificate file: connect with TLS")
    p.add_argument("--timeout", type=float, default=d(None),
                   help="seconds: call: to connect, then for the reply (default 10); listen: stop after this long "
                   "(default 0 = never)")


def _parser():
    p = argparse.ArgumentParser(prog="python -m firmware_client", description=__doc__.split("\n")[0])
    _connection_options(p, True)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("call", help="call METHOD with ARGS, print the result as JSON")
    _connection_options(c, False)
    c.add_argument("--ca", required=True)
    c.add_argument("--session", default="default")
    c.add_argument("method")
    c.add_argument("args", nargs="*")
    li = sub.add_parser("listen", help="print notifications as JSON lines")
    _connection_options(li, False)
    li.add_argument("--ca", required=True)
    li.add_argument("--session", required=True)
    li.add_argument("--count", type=int, default=0, help="exit after this many notifications")
    return p


class _Enough(Exception):
    """Raised by listen's on_notify for a notification past --count: it stays unacked (not an OSError, which the
    client would take for a lost connection)."""


class _NoConnection(Exception):
    """The broker could not be reached or refused us; the message names host:port and why."""


def _client(a, session, clean, timeout):
    ssl = {"cafile": a.tls_ca} if a.tls_ca else None
    kw = {}
    if clean:  # a one-shot CLI call must not kick a device using the stable client id
        kw["client_id"] = "cli-%s" % os.urandom(6).hex()
        kw["clean"] = True
        kw["presence"] = False  # nor announce its session online/offline
    c = Client(a.ca, session, host=a.host, port=a.port, user=a.user, password=a.password, codec=a.codec, ssl=ssl,
               prefix=a.prefix, **kw)
    try:
        c.connect(timeout=timeout, retry=False)  # a person is waiting: say what is wrong at once
    except OSError as e:
        why = e.strerror or str(e) or type(e).__name__  # Timeout and OSError: strerror; MQTTError: the text
        raise _NoConnection("cannot connect to %s:%d: %s" % (a.host, c.mqtt.port, why)) from None
    return c


def _listen(a):
    limit = a.timeout or 0
    end = time.monotonic() + limit if limit > 0 else None
    c = _client(a, a.session, False, limit if limit > 0 else None)
    seen = [0]

    def show(args):
        if a.count and seen[0] >= a.count:
            # one poll can bring the whole backlog: refuse the one past --count, so that it (and every later
            # one) is neither printed nor acked and stays queued for the next listener
            raise _Enough
        print(_json(args), flush=True)
        seen[0] += 1

    c.on_notify = show
    try:
        while not a.count or seen[0] < a.count:
            left = 0.5 if end is None else min(0.5, end - time.monotonic())
            if left <= 0:
                break
            c.poll(left)
    except _Enough:
        pass
    finally:
        c.close()
    if a.count and seen[0] < a.count:
        print("error: %d of %d notifications within %g s" % (seen[0], a.count, limit), file=sys.stderr)
        return 2
    return 0


def main(argv=None):
    a = _parser().parse_args(argv)
    try:
        if a.cmd == "call":
            t = 10.0 if a.timeout is None else a.timeout
            c = _client(a, a.session, True, t)
            try:
                result = c.call(a.method, *[_arg(x) for x in a.args], timeout=t)
            finally:
                c.close()
            print(_json(result))
            return 0
        return _listen(a)
    except _NoConnection as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    except CAError as e:
        data = (" " + _json(e.data)) if e.data else ""
        print("error: %s %s: %s%s" % (e.kind, e.name, e.message, data), file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print("error: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
