"""PersistentSession (imported on first use: a Device does not pay its heap)."""


class PersistentSession:
    """Exactly-once helper: ``begin()`` on creation, ``end()`` when done.

    ``nonce`` identifies this session instance (pass it to methods that call ``remember``);
    ``memento`` is what the last instance remembered, or None when it ended cleanly.
    """

    def __init__(self, client, timeout=None):
        self.client = client
        self.timeout = timeout
        r = client.call("begin", timeout=timeout)
        self.nonce = r.get("nonce")
        self.memento = r.get("memento")

    def end(self, timeout=None):
        """Close the instance; returns the CA's answer (True when the nonce was current)."""
        t = self.timeout if timeout is None else timeout
        return self.client.call("end", self.nonce, timeout=t)
