# Codec and packet checks printed for the pytest side to compare (CPython and MicroPython).
# usage: units.py VECTORS_FILE   (lines "<hex>" of cbor2-encoded values)
import sys
from binascii import unhexlify

from firmware_client import cbor, jsoncodec, packet
from firmware_client.compat import hexlify
from wire_values import VALUES


def out(tag, text):
    print(tag + " " + text)


for v in VALUES:
    out("ENC", hexlify(cbor.dumps(v)))

with open(sys.argv[1]) as f:
    for line in f:
        h = line.strip()
        if not h:
            continue
        try:
            v = cbor.loads(unhexlify(h))
            out("RE", hexlify(cbor.dumps(v)))
        except cbor.CBORError as e:
            out("RE", "error " + str(e))

for h in ["18", "450102", "9f01ff", "c11a514b67b0", "0102", "62c328", "5bffffffffffffffff", "81" * 200 + "01",
          "c201", "c24a0102", "c25881" + "01" * 129]:
    try:
        cbor.loads(unhexlify(h))
        out("BAD", "accepted " + h[:20])
    except cbor.CBORError:
        out("BAD", "rejected")

out("JSON", jsoncodec.dumps(["a", b"\x00\xff", 1, None]).decode())
out("JSONBACK", repr(jsoncodec.loads(b'{"$bytes": "AP8="}')))

buf = bytearray(300)
out("PKT", hexlify(buf[: packet.connect(buf, "cid", 30)]))
out("PKT", hexlify(buf[: packet.connect(buf, "c", 60, True, "u", "p", ("w/t", b"bye", 1, True))]))
out("PKT", hexlify(buf[: packet.publish_header(buf, "a/b", 5, 1, 7, True)]))
out("PKT", hexlify(buf[: packet.publish_header(buf, "t", 200, 1, 65535)]))
out("PKT", hexlify(buf[: packet.subscribe(buf, 1, [("a/b", 1)])]))
out("PKT", hexlify(buf[: packet.puback(buf, 0x1234)]))
out("PKT", "%d %d %d" % (packet.next_pid(65535), packet.next_pid(0), packet.next_pid(7)))
print("DONE")
