"""The chaos shop with a (no-op) pulse: a cluster then adopts orphaned CAs in its membership loop (bridge.cluster
adopt), which the plain shop never triggers. For run_cluster_chaos.py --pulse and repro_adopt_stale_actor.py."""

from tests.chaos.app import ChaosShop


class PulsingChaosShop(ChaosShop):
    async def on_pulse(self):
        pass  # changes nothing: only makes the runtime keep every CA owned (adopting orphans)
