"""Device.arun(): the device runtime inside asyncio (CPython asyncio, MicroPython asyncio)."""

import asyncio

from firmware_client.compat import deadline_in, remaining


async def arun(dev, interval_ms=1000, once=False, wake_ms=1000):
    """``dev.run()`` for asyncio: yields to other tasks while waiting (in steps of at most 10 ms)."""
    dev._begin(interval_ms)
    give_up = deadline_in(dev.client.timeout * 1000)
    try:
        while not dev._stop:
            w = dev._step()
            if once and dev._once_done(give_up, wake_ms):
                break
            dev._tidy()
            end = deadline_in(w)
            while True:
                dev._pump(0)
                if dev._woken() or dev._stop:
                    break
                left = remaining(end)
                if left <= 0:
                    break
                await asyncio.sleep(min(left, 10) / 1000)
            await asyncio.sleep(0)
    finally:
        dev.client.close()
    return dev._sleep_ms(wake_ms) if once else dev._next_ms()
