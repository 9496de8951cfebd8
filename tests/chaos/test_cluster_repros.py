"""The three cluster bugs the chaos work found, each replayed deterministically (requests steered to a chosen
bridge through its forward topic, bridges frozen and killed at chosen moments). Each script's main() returns 1
when its bug shows; see their docstrings for the exact sequences."""

from __future__ import annotations


import pytest

from tests import pgserver
from tests.chaos import repro_adopt_stale_actor, repro_stale_sync, repro_sync_before_init


@pytest.fixture(autouse=True)
def _needs_postgres():
    pgserver.require()


def test_a_sync_before_the_first_call_does_not_skip_on_init():
    assert repro_sync_before_init.main() == 0


def test_a_bridge_that_adopts_a_ca_again_does_not_commit_on_its_stale_copy():
    assert repro_adopt_stale_actor.main() == 0


def test_a_bridge_that_lost_a_ca_does_not_answer_its_syncs():
    assert repro_stale_sync.main() == 0
