"""helloworld: a pulse that notifies two logical sessions, and session introspection (the seed README's example).

    scripts/run          # runs it: ca-bridge run examples/helloworld/ca.py:HelloWorld --db helloworld.db, and
                         # examples/helloworld/client1.py on its CA foo-ca1
"""

from bridge import CA, method


class HelloWorld(CA):
    async def on_init(self):
        self.state["counter"] = 0
        self.session.limit_queue(10, "client1")
        self.session.limit_queue(10, "client2")

    async def on_pulse(self):
        self.state["counter"] += 1
        if self.state["counter"] % 2 == 0:
            self.session.notify([self.state["counter"]], "client1")
        if self.state["counter"] % 3 == 0:
            self.session.notify([self.state["counter"]], "client2")

    @method
    async def session_info(self):
        info = {"current": self.session.get_session_id()}
        for sid in self.session.get_all_session_ids():
            info[sid] = self.session.outq(sid)
        return info

    @method
    async def notify_all(self, msg):
        for sid in self.session.get_all_session_ids():
            self.session.notify([msg], sid)
        return await self.session_info()

    @method
    async def get_counter(self):
        return self.state["counter"]
