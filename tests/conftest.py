"""Fixtures shared by several test modules."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.support import two_cpus

# No per-example time limit (Hypothesis's default is 200 ms): on a shared, loaded machine
# or a cold first run, a slow example says nothing about the code (one failed so on a
# fresh machine: tests/test_broadcast_wire.py, test_decode_any_json_object).
settings.register_profile("netsvc", deadline=None)
settings.load_profile("netsvc")


@pytest.fixture
def start_on_first_cpu() -> Iterator[tuple[int, int]]:
    """This thread on the first of two CPUs, free to run on all its CPUs again."""
    allowed = os.sched_getaffinity(0)
    here, there = two_cpus()
    os.sched_setaffinity(0, {here})
    os.sched_setaffinity(0, allowed)
    yield here, there
    os.sched_setaffinity(0, allowed)
