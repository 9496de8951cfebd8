"""hellopersistent: exactly-once purchases from a device that crashes at random (the seed README's example).

    .venv/bin/ca-bridge run examples/hellopersistent/ca.py:HelloPersistent --db hellopersistent.db
    CA_NAME=cart1 .venv/bin/python examples/hellopersistent/forever.py    # its device, rerun until it succeeds
"""

from bridge import CA, AppError, method


class HelloPersistent(CA):
    async def on_init(self):
        self.state["counters"] = {}

    @method
    async def begin(self):
        return self.session.begin()

    @method
    async def buy(self, nonce, index, item):
        if not self.session.remember(nonce, index):
            raise AppError("Ignoring buy operation, bad nonce", item=item)
        self.state["counters"][item] = self.state["counters"].get(item, 0) + 1
        return self.state["counters"]

    @method
    async def end(self, nonce):
        """Ends the instance but keeps its memento (the last item bought), where the seed's end clears it.

        With the seed's end, a device that dies after its end committed but before it heard the reply (a lost
        connection, a killed bridge) would begin again with no memento and buy every item a second time. With the
        memento kept, it begins again, sees that the last item is bought, and buys nothing twice.
        """
        return self.session.remember(nonce, self.session.memento())

    @method
    async def get_counters(self):
        return self.state["counters"]
