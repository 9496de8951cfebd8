"""The device layer (docs/DEVICES.md): a CA's mirror of its gadget's state, timed command bundles, time sync.

    model      the device record (maps, versions, tombstones, commands, boot, bundles, results) and its encoding
    api        ``self.device`` of a running method (a working copy per transaction) and Bundle
    handlers   what dstart and dsync do to a record, and their answers (run by bridge.actor)
"""

from bridge.device.api import Bundle, DeviceAPI, wall_ms
from bridge.device.model import DeviceLimits, DeviceRecord, StoredBundle, device_view

__all__ = ["Bundle", "DeviceAPI", "DeviceLimits", "DeviceRecord", "StoredBundle", "device_view", "wall_ms"]
