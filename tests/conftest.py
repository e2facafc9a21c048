"""Fixtures shared by several test modules."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support import two_cpus


@pytest.fixture
def start_on_first_cpu() -> Iterator[tuple[int, int]]:
    """This thread on the first of two CPUs, free to run on all its CPUs again."""
    allowed = os.sched_getaffinity(0)
    here, there = two_cpus()
    os.sched_setaffinity(0, {here})
    os.sched_setaffinity(0, allowed)
    yield here, there
    os.sched_setaffinity(0, allowed)
