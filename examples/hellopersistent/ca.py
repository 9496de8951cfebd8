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
        return self.session.end(nonce)

    @method
    async def get_counters(self):
        return self.state["counters"]
