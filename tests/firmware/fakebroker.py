"""A scripted fake MQTT broker that also plays the bridge, for firmware client tests.

It speaks just enough MQTT 3.1.1 (parsed here independently of firmware_client.packet) to
serve one device at a time on 127.0.0.1, and answers on the session topic like the bridge
(calls with dedup by id, acks, syncs with a queue of notifications). Knobs on the instance
script the misbehaviour under test; ``events`` records everything the device sent.
"""

import json
import socket
import struct
import threading
import time

import cbor2
import contextlib


def _enc_len(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish_bytes(topic, payload, pid=None, dup=False):
    t = topic.encode()
    body = struct.pack(">H", len(t)) + t + (struct.pack(">H", pid) if pid else b"") + payload
    first = 0x30 | (0x02 if pid else 0) | (0x08 if dup else 0)
    return bytes([first]) + _enc_len(len(body)) + body


class Conn:
    def __init__(self, broker, sock):
        self.broker = broker
        self.sock = sock
        self.alive = True
        self.pid = 0
        self.client_id = None
        self.subs = []

    def send(self, data):
        with self.broker.lock:
            if not self.alive:
                return
            try:
                self.sock.sendall(data)
            except OSError:
                self.alive = False

    def close(self):
        self.alive = False
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def publish(self, topic, payload):
        self.pid = self.pid % 65535 + 1
        self.send(publish_bytes(topic, payload, self.pid))

    def read_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def read_packet(self):
        first = self.read_exact(1)[0]
        n = shift = 0
        while True:
            b = self.read_exact(1)[0]
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        return first, self.read_exact(n)


class FakeBroker:
    def __init__(self, ca="dev", session="s1", prefix="ca"):
        self.topic_in = f"{prefix}/{ca}/in"
        self.topic_session = f"{prefix}/{ca}/session/{session}"
        self.lock = threading.RLock()
        self.events = []
        self.conns = []
        # scripting knobs
        self.connack = True  # False: accept TCP, never answer CONNACK
        self.connack_code = 0
        self.drop_first_puback = False  # first PUBLISH of connection 1: no PUBACK, then close
        self.close_mid_reply = False  # first reply: send half of the packet, then close
        self.trickle_replies = False  # send replies one byte at a time
        self.silent_methods = ()  # calls to these methods get no reply at all
        self.busy_first = 0  # answer this many calls with a busy error first
        self.drop_calls = 0  # lose this many call messages (no run, no reply): a bridge killed with them in flight
        self.drop_replies = 0  # run this many calls but lose their replies: killed after the commit
        self.note_on_drop = False  # each lost call or reply queues and pushes a notification
        self.raw_calls = []  # the payload bytes of every call message, in arrival order
        self.ping_reply = True
        # bridge model
        self.replies = {}  # request id -> reply map
        self.runs = {}  # request id -> times executed
        self.queue = []  # [(seq, args)] not yet acked
        self.next_seq = 1
        self.json = False
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self._threads = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    # -------------------------------------------------------------- lifecycle

    def stop(self):
        self._stop = True
        self.sock.close()
        for c in list(self.conns):
            c.close()

    def kick(self):
        """Close every device connection (a broker restart as the device sees it)."""
        for c in list(self.conns):
            c.close()

    def log(self, *ev):
        with self.lock:
            self.events.append(ev)

    def count(self, kind):
        return sum(1 for e in self.events if e[0] == kind)

    def wait_for(self, pred, timeout=10):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return True
            time.sleep(0.01)
        return False

    @property
    def conn(self):
        live = [c for c in self.conns if c.alive]
        return live[-1] if live else None

    # -------------------------------------------------------------- bridge model

    def encode(self, msg):
        return json.dumps(msg).encode() if self.json else cbor2.dumps(msg)

    def notify(self, args, send=True):
        """Queue a notification (like the bridge) and push it to the device if connected."""
        with self.lock:
            seq = self.next_seq
            self.next_seq += 1
            self.queue.append((seq, args))
        if send and self.conn:
            self.conn.publish(self.topic_session, self.encode({"t": "note", "seq": seq, "args": args}))
        return seq

    def push_raw_note(self, seq, args):
        if self.conn:
            self.conn.publish(self.topic_session, self.encode({"t": "note", "seq": seq, "args": args}))

    def _on_in(self, conn, payload):
        self.json = payload[:1] == b"{"
        msg = json.loads(payload) if self.json else cbor2.loads(payload)
        t = msg.get("t")
        self.log(t, msg)
        if t == "call":
            self.raw_calls.append(bytes(payload))
        if t == "call":
            self._on_call(conn, msg)
        elif t in ("ack", "sync"):
            with self.lock:
                self.queue = [q for q in self.queue if q[0] > msg["seq"]]
                first = self.queue[0][0] if self.queue else self.next_seq
                pending = list(self.queue)
            if t == "sync":
                conn.publish(self.topic_session, self.encode({"t": "sync", "first": first, "next": self.next_seq}))
                for seq, args in pending:
                    conn.publish(self.topic_session, self.encode({"t": "note", "seq": seq, "args": args}))

    def _on_call(self, conn, msg):
        rid = msg["id"]
        if msg["method"] in self.silent_methods:
            return
        if self.drop_calls > 0:
            self.drop_calls -= 1
            if self.note_on_drop:
                self.notify(["lost call"])
            return
        if rid not in self.replies:
            if self.busy_first > 0:
                self.busy_first -= 1
                err = {"kind": "busy", "name": "Busy", "message": "mailbox full", "data": {}}
                conn.publish(self.topic_session, self.encode({"t": "reply", "id": rid, "err": err}))
                return
            self.runs[rid] = self.runs.get(rid, 0) + 1
            self.replies[rid] = self._execute(msg)
        if self.drop_replies > 0:  # ran (or ran before: a dedup hit), but the reply is lost
            self.drop_replies -= 1
            if self.note_on_drop:
                self.notify(["lost reply"])
            return
        payload = self.encode(self.replies[rid])
        if self.close_mid_reply:
            self.close_mid_reply = False
            data = publish_bytes(self.topic_session, payload, 1)
            conn.send(data[: len(data) // 2])
            time.sleep(0.05)
            conn.close()
        elif self.trickle_replies:
            conn.pid += 1
            for b in publish_bytes(self.topic_session, payload, conn.pid):
                conn.send(bytes([b]))
                time.sleep(0.002)
        else:
            conn.publish(self.topic_session, payload)

    def _execute(self, msg):
        rid, method, args = msg["id"], msg["method"], msg.get("args", [])
        if method == "echo":
            return {"t": "reply", "id": rid, "ok": args}
        if method == "fail":
            err = {"kind": "app", "name": "AppError", "message": "bad nonce", "data": {"item": "apple"}}
            return {"t": "reply", "id": rid, "err": err}
        if method == "notify":
            for a in args:
                self.notify([a])
            return {"t": "reply", "id": rid, "ok": self.next_seq - 1}
        err = {"kind": "bad_request", "name": "BadRequest", "message": "unknown method", "data": {}}
        return {"t": "reply", "id": rid, "err": err}

    # -------------------------------------------------------------- MQTT side

    def _accept(self):
        while not self._stop:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            c = Conn(self, s)
            with self.lock:
                self.conns.append(c)
            t = threading.Thread(target=self._serve, args=(c,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, c):
        try:
            self._serve_inner(c)
        except (EOFError, OSError, ValueError):
            pass
        finally:
            self.log("closed", c.client_id)
            c.close()

    def _serve_inner(self, c):
        npub = 0
        while c.alive:
            first, body = c.read_packet()
            kind = first & 0xF0
            if kind == 0x10:
                cid_len = struct.unpack(">H", body[10:12])[0]
                c.client_id = body[12 : 12 + cid_len].decode()
                self.log("connect", c.client_id, body[7], struct.unpack(">H", body[8:10])[0])
                if body[7] & 0x04:  # will flag: topic and message follow the client id
                    off = 12 + cid_len
                    wtl = struct.unpack(">H", body[off : off + 2])[0]
                    wtopic = body[off + 2 : off + 2 + wtl].decode()
                    off += 2 + wtl
                    wml = struct.unpack(">H", body[off : off + 2])[0]
                    wmsg = bytes(body[off + 2 : off + 2 + wml])
                    self.log("will", wtopic, wmsg, (body[7] >> 3) & 3, bool(body[7] & 0x20))
                if not self.connack:
                    time.sleep(30)
                    return
                c.send(bytes([0x20, 2, 0, self.connack_code]))
            elif kind == 0x80:
                pid = struct.unpack(">H", body[:2])[0]
                tl = struct.unpack(">H", body[2:4])[0]
                topic = body[4 : 4 + tl].decode()
                c.subs.append(topic)
                self.log("subscribe", topic, body[4 + tl])
                c.send(bytes([0x90, 3]) + struct.pack(">H", pid) + b"\x01")
            elif kind == 0x30:
                qos = (first >> 1) & 3
                dup = bool(first & 0x08)
                tl = struct.unpack(">H", body[:2])[0]
                topic = body[2 : 2 + tl].decode()
                off = 2 + tl
                pid = struct.unpack(">H", body[off : off + 2])[0] if qos else 0
                payload = body[off + 2 :] if qos else body[off:]
                self.log("publish", topic, pid, dup, qos)
                npub += 1
                if self.drop_first_puback and npub == 1:
                    self.drop_first_puback = False
                    time.sleep(0.1)
                    return  # close without PUBACK (and without answering)
                if qos:
                    c.send(bytes([0x40, 2]) + struct.pack(">H", pid))
                if topic == self.topic_in:
                    self._on_in(c, payload)
            elif kind == 0x40:
                self.log("puback", struct.unpack(">H", body)[0])
            elif kind == 0xC0:
                self.log("ping")
                if self.ping_reply:
                    c.send(b"\xd0\x00")
            elif kind == 0xE0:
                self.log("disconnect")
                return
