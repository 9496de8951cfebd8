"""Notification bookkeeping of the client, without a socket: ordering, duplicates, a full hold buffer."""

from firmware_client import Client


def make(hold=4):
    c = Client("c1", "s", port=1, hold=hold)
    got = []
    c.on_notify = got.append
    return c, got


def test_in_order_and_duplicates():
    c, got = make()
    for seq in (1, 2, 2, 1, 3):
        c._on_note(seq, [seq])
    assert got == [[1], [2], [3]] and c.last_seq == 3


def test_a_resent_gap_gets_in_although_the_hold_buffer_is_full_of_later_ones():
    """Regression (found by the chaos run): with the buffer full of later notifications, the resent missing one
    was dropped too, so delivery stalled for good."""
    c, got = make(hold=4)
    for seq in range(5, 30):  # 1..4 lost in transit; the live stream goes on
        c._on_note(seq, [seq])
    assert got == [] and len(c._held) == 4
    for seq in range(1, 30):  # the sync answer resends everything from 1
        c._on_note(seq, [seq])
    assert got == [[s] for s in range(1, 30)]
    assert c.last_seq == 29


def test_options_beyond_the_session_are_keyword_only():
    import pytest

    with pytest.raises(TypeError):
        Client("c1", "s", "127.0.0.1")  # the host must be named
    c = Client("c1", "s", host="10.0.0.5", port=1884, keepalive=7)
    assert (c.mqtt.host, c.mqtt.port, c.mqtt.keepalive) == ("10.0.0.5", 1884, 7)
