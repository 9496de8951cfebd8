"""firmware_client.packet: exact MQTT 3.1.1 bytes."""

import pytest

from firmware_client import packet


def enc(fn, *args, size=512):
    buf = bytearray(size)
    n = fn(buf, *args)
    return bytes(buf[:n])


def test_packet_connect_minimal():
    """CONNECT with clean_session False and keepalive 30."""
    assert enc(packet.connect, "cid", 30) == bytes.fromhex("100f00044d5154540400001e0003636964")


def test_packet_connect_all_fields():
    """CONNECT with clean session, will (QoS 1, retain), user and password: flags 0xEE."""
    got = enc(packet.connect, "c", 60, True, "u", "p", ("w/t", b"bye", 1, True))
    want = (
        b"\x10\x1d\x00\x04MQTT\x04\xee\x00\x3c"
        + b"\x00\x01c"
        + b"\x00\x03w/t"
        + b"\x00\x03bye"
        + b"\x00\x01u"
        + b"\x00\x01p"
    )
    assert got == want


def test_packet_publish_header_qos1_dup():
    """PUBLISH header: DUP + QoS 1 flags, topic, packet id; remaining length counts the payload."""
    assert enc(packet.publish_header, "a/b", 5, 1, 7, True) == bytes.fromhex("3a0c0003612f620007")
    assert enc(packet.publish_header, "a/b", 0, 0) == bytes.fromhex("30050003612f62")


@pytest.mark.parametrize(
    "n,head",
    [(127, "7f"), (128, "8001"), (16383, "ff7f"), (16384, "808001"), (2097152, "80808001")],
)
def test_packet_remaining_length_boundaries(n, head):
    """Variable-length remaining length at the 1/2/3/4-byte boundaries."""
    buf = bytearray(16)
    size = packet.publish_header(buf, "", n - 2, 0)
    assert bytes(buf[1 : 1 + len(head) // 2]).hex() == head
    assert size == 1 + len(head) // 2 + 2
    got = packet.parse_header(bytes([0x30]) + bytes.fromhex(head) + b"\x00" * n, 0, 1 + len(head) // 2 + n)
    assert got == (0x30, 1 + len(head) // 2, 1 + len(head) // 2 + n)


def test_packet_subscribe_puback_ping_disconnect():
    """SUBSCRIBE (0x82 with QoS), PUBACK, PINGREQ and DISCONNECT bytes."""
    assert enc(packet.subscribe, 1, [("a/b", 1)]) == bytes.fromhex("820800010003612f6201")
    assert enc(packet.puback, 0x1234) == bytes.fromhex("40021234")
    assert enc(packet.simple, packet.PINGREQ) == b"\xc0\x00"
    assert enc(packet.simple, packet.DISCONNECT) == b"\xe0\x00"


def test_packet_buffer_too_small_raises():
    """Encoders never write past the preallocated buffer."""
    with pytest.raises(ValueError):
        enc(packet.connect, "x" * 100, 30, size=50)
    with pytest.raises(ValueError):
        enc(packet.publish_header, "t" * 100, 1, 1, 1, size=50)


def test_packet_parse_header_incomplete_and_malformed():
    """Incomplete packets ask for more bytes; a 5-byte remaining length is malformed."""
    data = bytes.fromhex("3005000161")
    assert packet.parse_header(data, 0, 5) is None
    assert packet.parse_header(data, 0, 1) is None
    assert packet.parse_header(b"\x30\x80", 0, 2) is None
    with pytest.raises(packet.MQTTError):
        packet.parse_header(b"\x30\xff\xff\xff\xff\x01", 0, 6)


def test_packet_parse_publish():
    """Topic, packet id and payload offset of a QoS 1 PUBLISH."""
    data = bytes.fromhex("3209") + b"\x00\x03a/b\x00\x2ahi"
    first, body, end = packet.parse_header(data, 0, len(data))
    assert packet.parse_publish(data, first, body, end) == ("a/b", 42, 9)
    with pytest.raises(packet.MQTTError):
        packet.parse_publish(b"\x32\x03\x00\x05a", 0x32, 2, 5)


def test_packet_ids_wrap_and_skip_zero():
    """Packet ids run 1..65535 and wrap to 1, never 0."""
    assert packet.next_pid(0) == 1
    assert packet.next_pid(65534) == 65535
    assert packet.next_pid(65535) == 1
