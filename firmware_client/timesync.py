"""Cloud time offset estimation from request/reply time samples (DEVICE_SPEC.md, Time).

A sample comes from one request sent once: t1 (local send) and t4 (local receive) from the
device's clock, rx and tx (bridge receive and send, Unix epoch ms) from the reply. The estimate
is the offset of the sample with the smallest round trip among the last ``window``.
"""

THRESHOLD = 50  # ms: a smaller estimated offset is taken as 0 (the local clock is trusted)
MAX_RTT = 2000  # ms: slower samples are dropped


class Offset:
    """``offset`` is added to the local clock to get cloud time.

    ``absolute=False`` (a clock without an epoch base, e.g. ticks since boot): the offset carries
    the whole epoch, so the threshold does not apply.
    """

    def __init__(self, window=8, threshold=THRESHOLD, absolute=True):
        self.window = window
        self.threshold = threshold
        self.absolute = absolute
        self.samples = []  # [(rtt, offset)], oldest first, at most ``window``
        self.offset = 0
        self.estimate = None  # the raw best offset, before the threshold

    def add(self, t1, t4, rx, tx):
        """Take one sample; returns True if it was kept."""
        for v in (t1, t4, rx, tx):
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                return False
        rtt = (t4 - t1) - (tx - rx)
        if rtt > MAX_RTT or t4 < t1 or tx < rx:
            return False
        if rtt < 0:
            rtt = 0
        off = ((rx - t1) + (tx - t4)) // 2
        self.samples.append((rtt, int(off)))
        if len(self.samples) > self.window:
            self.samples.pop(0)
        best = self.samples[0]
        for s in self.samples:
            if s[0] <= best[0]:  # ties: the newest
                best = s
        self.estimate = best[1]
        if self.absolute and -self.threshold <= best[1] <= self.threshold:
            self.offset = 0
        else:
            self.offset = best[1]
        return True
