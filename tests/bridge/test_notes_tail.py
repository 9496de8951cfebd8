"""A call's new notifications are the tail of each session's queue (bridge.actor.Actor._apply): what is sent and
what is stored must be exactly the notifications the queue kept, also when the call notified past the queue's
limit (trim dropped some of its own notifications), when it notified a session it created, and never again for a
session written without a new notification."""

from __future__ import annotations

from bridge.testing import Harness
from tests.apps import Counter


async def test_notifications_past_the_limit_are_sent_and_stored_as_the_queue_keeps_them(tmp_path):
    db = tmp_path / "tail.db"
    async with Harness(Counter, db=db) as h:
        await h.call("t", "w", "incr")  # session w, default limit 5
        for i in range(3):
            await h.call("t", "default", "notify_to", "w", "early", i)  # seqs 1-3
        assert await h.call("t", "default", "spam", "w", 7, 1, False) == 5  # seqs 4-10; the queue keeps 6-10
        sent = [m for m in h.sent("t", "w") if m.get("t") == "note"]
        assert [m["seq"] for m in sent] == [1, 2, 3, 6, 7, 8, 9, 10]  # 4 and 5 were dropped in the call itself
        assert [m["args"] for m in sent[3:]] == [[i, "x"] for i in range(2, 7)]
        await h.ack("t", "w", 6)  # writes w's queue, no new notification: nothing is sent
        assert await h.call("t", "default", "spam", "w", 0, 1, True) == 4  # w unlimited now: written, not notified
        assert [m["seq"] for m in h.sent("t", "w") if m.get("t") == "note"] == [1, 2, 3, 6, 7, 8, 9, 10]
        assert await h.call("t", "default", "spam", "fresh", 2, 1, False) == 2  # a session the call created
        assert [m["seq"] for m in h.sent("t", "fresh") if m.get("t") == "note"] == [1, 2]
        memory = (h.outq("t", "w"), h.outq("t", "fresh"))
    async with Harness(Counter, db=db) as h:  # what was stored is what the queues held
        assert (h.outq("t", "w"), h.outq("t", "fresh")) == memory
        assert h.outq("t", "w") == [[i, "x"] for i in range(3, 7)]
        answer, *notes = await h.sync("t", "w", 0)
        assert (answer["first"], answer["next"]) == (7, 11) and [n["seq"] for n in notes] == [7, 8, 9, 10]
