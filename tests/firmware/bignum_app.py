"""A CA for the firmware client's bignum test: integers beyond 64 bits in results, notifications and arguments."""

from bridge import CA, method


class Numbers(CA):
    @method
    async def power(self, base, exp):
        """``base ** exp``: beyond 64 bits it leaves as a CBOR bignum; beyond 1024 bits the bridge refuses it."""
        return base**exp

    @method
    async def echo(self, *args):
        """Store ``args``, notify the calling session with them and return them."""
        self.state["last"] = list(args)
        self.session.notify(list(args))
        return list(args)
