"""Name checks are remembered (the same CA names, session ids and topics come back on every message), within a
bound that names made up by a peer cannot grow; the answers are the same as the check's."""

from __future__ import annotations

import cbor2
import pytest

import bridge.protocol as protocol
from bridge.errors import BadRequest
from bridge.protocol import Topics, parse_request, valid_name


@pytest.mark.parametrize("name,ok", [("dev-1", True), ("a" * 64, True), ("a" * 65, False), ("-x", False),
                                     ("x/y", False), ("", False), ("caf\u00e9", False)])
def test_the_remembered_answer_is_the_checks_answer(name, ok):
    assert valid_name(name) is ok
    assert valid_name(name) is ok  # again, from memory
    assert protocol._CHECKED[name] is ok
    assert valid_name(1) is False and valid_name(None) is False


def test_made_up_names_cannot_grow_the_memory(monkeypatch):
    monkeypatch.setattr(protocol, "_CHECKED_MAX", 100)
    protocol._CHECKED.clear()
    topics = Topics("ca")
    for i in range(1000):
        assert valid_name(f"n{i}")
        assert topics.ca_of(f"ca/c{i}/in") == f"c{i}"
        assert topics.ca_of(f"ca/c{i}/out") is None
        assert len(protocol._CHECKED) <= 100 and len(topics.cas) <= 100


def test_topics_are_parsed_the_same_from_memory():
    topics = Topics("ca")
    for _ in range(2):
        assert topics.ca_of("ca/dev1/in") == "dev1"
        assert topics.ca_of("ca/dev1/x/in") is None
        assert topics.ca_of("other/dev1/in") is None
        assert topics.ca_of("ca/-bad/in") is None


def test_a_cbor_request_id_is_strict_utf8():
    payload = cbor2.dumps({"t": "call", "id": "x", "method": "m"}).replace(b"\x61x", b"\x63\xed\xa0\x80")
    with pytest.raises(BadRequest):
        parse_request(payload, 1000)
    assert parse_request(cbor2.dumps({"t": "call", "id": "caf\u00e9", "method": "m"}), 1000).id == "caf\u00e9"
