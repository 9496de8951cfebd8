"""The device layer's pure parts (time offset, bundle scheduler, synced maps) under CPython and MicroPython.

The unit tests live in scenarios/device_units.py so the same code runs unchanged on both interpreters.
"""

import subprocess

import pytest

from conftest import HERE, ROOT, device_env, interp_cmd

SCRIPT = HERE / "scenarios" / "device_units.py"
NAMES = [
    "bundle_runs_at_times_and_reports",
    "error_default_logs_and_goes_on",
    "from_cloud_apply",
    "index_once_per_boot",
    "late_first_arrival_whole",
    "malformed_bundle",
    "now_safe_expiry",
    "offset0_neither_cancels_nor_cancelled",
    "offset_drops_slow_and_bad",
    "offset_min_rtt",
    "offset_threshold_and_return_to_zero",
    "offset_window_of_8",
    "raising_command_reported_done_result_false",
    "resent_judged_per_command",
    "resent_now_never_twice",
    "superseding_at_new_start",
    "to_cloud_deltas_and_versions",
    "to_cloud_keys_are_strings",
    "to_cloud_resync_full",
    "unsynced_done_survives_reset",
]


@pytest.mark.parametrize("name", ["cpython", "micropython"])
def test_device_units(name):
    """Every unit test of scenarios/device_units.py passes (estimator, scheduler, maps)."""
    p = subprocess.run(
        [*interp_cmd(name), str(SCRIPT)], env=device_env(path=str(ROOT)), capture_output=True, timeout=60
    )
    out = p.stdout.decode()
    assert p.returncode == 0 and out.endswith("DONE\n"), out[-800:] + p.stderr.decode()
    assert [line[3:] for line in out.splitlines() if line.startswith("OK ")] == NAMES
