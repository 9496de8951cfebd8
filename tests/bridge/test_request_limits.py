"""Request ids and sequence numbers every store can hold: NUL, unpaired surrogates and 64-bit overflows are
refused at the door instead of failing a whole group commit later."""

from __future__ import annotations

import json

import cbor2
import pytest

from bridge.errors import BadRequest
from bridge.protocol import MAX_SEQ, parse_request


@pytest.mark.parametrize("rid", ["a\x00b", "\x00"])
def test_a_request_id_with_nul_is_refused(rid):
    with pytest.raises(BadRequest, match="NUL"):
        parse_request(cbor2.dumps({"t": "call", "id": rid, "method": "m"}), 1000)


def test_a_request_id_with_an_unpaired_surrogate_is_refused():
    payload = b'{"t": "call", "id": "x\\ud800", "method": "m"}'  # valid JSON, not encodable text
    with pytest.raises(BadRequest, match="surrogates"):
        parse_request(payload, 1000)


def test_ordinary_unicode_ids_pass():
    req = parse_request(json.dumps({"t": "call", "id": "caf\u00e9-\U0001f600", "method": "m"}).encode(), 1000)
    assert req.id == "caf\u00e9-\U0001f600"


@pytest.mark.parametrize("seq,ok", [(0, True), (MAX_SEQ, True), (MAX_SEQ + 1, False), (-1, False)])
def test_sequence_numbers_fit_64_bits(seq, ok):
    payload = cbor2.dumps({"t": "ack", "seq": seq})
    if ok:
        assert parse_request(payload, 1000).seq == seq
    else:
        with pytest.raises(BadRequest, match="seq"):
            parse_request(payload, 1000)


async def test_a_sync_before_the_first_durable_call_does_not_skip_on_init():
    """Found by the cluster chaos run: the first commit of a new CA fails, a sync arrives, and the sync used to
    commit the empty state, so the CA counted as initialized and on_init never ran."""
    from bridge.errors import CallError, StoreError
    from bridge.testing import Harness
    from tests.apps import Counter

    async with Harness(Counter) as h:
        h.store.fail_next = StoreError("disk full (simulated)")
        with pytest.raises(CallError) as failed:
            await h.call("fresh", "default", "incr")
        assert failed.value.kind == "unavailable"
        await h.sync("fresh", "default", 0)
        assert await h.call("fresh", "default", "incr") == 1
        state = h.state("fresh")
        assert state["n"] == 1 and "seen" in state  # on_init's fields exist
