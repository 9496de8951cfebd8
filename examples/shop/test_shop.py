import pytest
from bridge.testing import Harness
from shop import Shop

@pytest.mark.asyncio                                            # needs pytest-asyncio
async def test_buy(tmp_path):
    async with Harness(Shop, db=tmp_path / "t.db") as h:      # db=None: in memory
        nonce = (await h.call("shop1", "default", "begin"))["nonce"]
        assert await h.call("shop1", "default", "buy", nonce, 0, "apple") == {"apple": 1}
        await h.restart()                                       # reload from the store; on_resume runs
        assert h.state("shop1")["counters"] == {"apple": 1}
