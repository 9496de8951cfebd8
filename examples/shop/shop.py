from bridge import CA, AppError, method

class Shop(CA):
    async def on_init(self):
        self.state["counters"] = {}

    @method
    async def begin(self):                     # a new nonce; the memento: where an unfinished run stopped
        return self.session.begin()

    @method
    async def buy(self, nonce, index, item):   # the memento becomes index: a rerun resumes after it
        if not self.session.remember(nonce, index):
            raise AppError("bad nonce", item=item)
        self.state["counters"][item] = self.state["counters"].get(item, 0) + 1
        return self.state["counters"]

    @method
    async def end(self, nonce):
        return self.session.end(nonce)

    @method
    async def get_counters(self):
        return self.state["counters"]
