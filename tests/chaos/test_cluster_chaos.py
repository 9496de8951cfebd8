"""The short cluster chaos run: three bridges on PostgreSQL, killed, frozen, armed at fault points and cut from the
database at random, under the hellopersistent devices (CPython and MicroPython). The long form is
run_cluster_chaos.py."""

from __future__ import annotations


import pytest

from tests import pgserver
from tests.chaos.run_cluster_chaos import run

pytestmark = [pytest.mark.slow, pytest.mark.mosquitto]


@pytest.fixture(autouse=True)
def _needs_postgres():
    pgserver.require()


# Enough items that the devices are still buying when the chaos ends, and the first three chaos events kill a
# bridge: with 200 items and every event drawn, a run whose first events were mild finished its load in 11 of the
# 25 s, the chaos stopped with it, and only 2 bridges had been killed. A device buys about 18 items a second here
# without chaos, 8 with it.
ITEMS = 450


def test_short_cluster_chaos_run_has_no_anomalies(tmp_path):
    report = run(seed=21, duration=25, devices=4, items=ITEMS, workdir=tmp_path, finish_timeout=40, fsync=False,
                 first_bridge_kills=3)
    print(report.line())
    assert report.anomalies == []
    assert report.purchases == 4 * ITEMS and report.notifications == 4 * ITEMS
    assert report.device_self_crashes >= 30
    assert report.bridge_kills + report.bridge_fault_points >= 3
    assert report.db_cuts >= 1
    assert report.forwarded > 0  # the $share subscription spreads requests: the bridges did forward to owners
