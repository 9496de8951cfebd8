"""The chaos workload's CA: hellopersistent's shop, plus a notification per purchase on session "watch"."""

from bridge import CA, AppError, method


class ChaosShop(CA):
    async def on_init(self):
        self.state["counters"] = {}
        self.session.limit_queue(0, "watch")  # unbounded (up to the hard cap): the watcher must see every one

    @method
    async def begin(self):
        return self.session.begin()

    @method
    async def buy(self, nonce, index, item):
        if not self.session.remember(nonce, index):
            raise AppError("Ignoring buy operation, bad nonce", item=item)
        self.state["counters"][item] = self.state["counters"].get(item, 0) + 1
        self.session.notify([index, item], "watch")
        return self.state["counters"][item]  # small replies: the device's buffer is bounded

    @method
    async def end(self, nonce):
        return self.session.end(nonce)

    @method
    async def get_counters(self):
        return self.state["counters"]
