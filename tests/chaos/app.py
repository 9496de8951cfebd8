"""The chaos workload's CA: hellopersistent's shop, plus a notification per purchase on session "watch"."""

from pathlib import Path

from bridge import AppError, method
from bridge.cli import load_app

HelloPersistent = load_app(f"{Path(__file__).resolve().parents[2]}/examples/hellopersistent/ca.py:HelloPersistent")


class ChaosShop(HelloPersistent):
    async def on_init(self):
        await super().on_init()
        self.session.limit_queue(0, "watch")  # unbounded (up to the hard cap): the watcher must see every one

    @method
    async def buy(self, nonce, index, item):
        if not self.session.remember(nonce, index):
            raise AppError("Ignoring buy operation, bad nonce", item=item)
        self.state["counters"][item] = self.state["counters"].get(item, 0) + 1
        self.session.notify([index, item], "watch")
        return self.state["counters"][item]  # small replies: the device's buffer is bounded

    @method
    async def end(self, nonce):
        """Ends the instance but keeps its memento (the last item bought), as the example's ``end`` does: a chaos
        device is rerun until it sees this reply, and one killed (or whose bridge died at a fault point) after
        ``end`` committed would otherwise begin again with no memento and buy every item a second time."""
        return self.session.remember(nonce, self.session.memento())
