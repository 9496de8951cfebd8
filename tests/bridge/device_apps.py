"""A CA for the device-layer process tests (the bridge side alone: a raw MQTT publisher acts as the device)."""

from __future__ import annotations

from bridge import CA, method


class Mirror(CA):
    """Counts the syncs that changed to_cloud (in the sync's transaction) and mirrors ``n`` into from_cloud."""

    async def on_init(self):
        self.state["hooks"] = 0

    async def on_device_sync(self, changed):
        self.state["hooks"] += 1
        self.device.from_cloud["echo"] = self.device.to_cloud.get("n")

    @method
    def view(self):
        return {"hooks": self.state["hooks"], "tc": dict(self.device.to_cloud), "fc": dict(self.device.from_cloud)}
