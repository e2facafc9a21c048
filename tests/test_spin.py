"""netsvc.spin: when a wait may poll (the Spinner's own rule is tested with the blocking
client, tests/test_tftp_blocking.py); here, polling only while a CPU is free."""

from __future__ import annotations

from pathlib import Path

import pytest

import netsvc.spin as spin
from netsvc.spin import IdleCpuCheck, Spinner, running_tasks

#: /proc/loadavg texts and the running-task count in each (None: not such a text).
LOADAVG_TEXTS = [
    ("0.52 0.58 0.59 3/467 12345\n", 3),
    ("1.00 2.00 3.00 12/4 1", 12),
    ("  0.5\t0.6 0.7   9/10\n", 9),
    ("0.5 0.6 0.7 7/", 7),
    ("0.5 0.6 0.7 123456789/1000000000 5", 123456789),
    ("0.5 0.6 0.7 1234567890/1 5", None),  # more digits than any machine has tasks
    ("0.5 0.6 0.7 /467 1", None),
    ("0.5 0.6 0.7 x/467 1", None),
    ("0.5 0.6 0.7 \u00b2/467 1", None),  # a digit to isdigit(), not to int()
    ("0.5 0.6 0.7 3 467", None),
    ("0.5 0.6", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "running"), LOADAVG_TEXTS)
def test_the_running_task_count_is_read_from_loadavg(text: str, running: int | None) -> None:
    assert running_tasks(text) == running


def test_the_machine_s_own_loadavg_can_be_read() -> None:
    with open(spin.LOADAVG) as f:
        running = running_tasks(f.read())
    assert running is not None and running >= 1  # this process is running


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_cpu_is_free_while_running_tasks_are_at_most_the_cpus(tmp_path: Path) -> None:
    loadavg = tmp_path / "loadavg"
    clock = _Clock()
    check = IdleCpuCheck(str(loadavg), cpus=2, clock=clock)
    for running, free in [(1, True), (2, True), (3, False), (50, False), (2, True)]:
        loadavg.write_text(f"0.1 0.2 0.3 {running}/300 999\n")
        clock.now += spin.IDLE_CPU_INTERVAL
        assert check() is free, running


def test_the_file_is_read_at_most_once_per_interval(tmp_path: Path) -> None:
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("0.1 0.2 0.3 9/300 999\n")
    clock = _Clock()
    check = IdleCpuCheck(str(loadavg), cpus=2, clock=clock)
    assert not check()
    loadavg.write_text("0.1 0.2 0.3 1/300 999\n")
    clock.now += spin.IDLE_CPU_INTERVAL / 2
    assert not check()  # the answer still holds
    clock.now += spin.IDLE_CPU_INTERVAL
    assert check()


@pytest.mark.parametrize("content", [None, "garbage\n"])
def test_without_a_readable_count_polling_goes_on_as_before(
    tmp_path: Path, content: str | None
) -> None:
    loadavg = tmp_path / "loadavg"
    if content is not None:
        loadavg.write_text(content)
    assert IdleCpuCheck(str(loadavg), cpus=2, clock=_Clock())()


def test_a_spinner_polls_only_while_its_check_says_a_cpu_is_free() -> None:
    free = [False]
    spinner = Spinner(limit=0.5, idle_cpu=_Answers(free))
    polls: list[int] = []

    def poll() -> bool:
        polls.append(1)
        return True

    assert spinner.budget() == 0.0
    assert spinner.spin(poll) is None and polls == []  # no CPU to spare: sleep at once
    free[0] = True
    assert spinner.budget() == 0.5
    assert spinner.spin(poll) is True and polls == [1]


class _Answers(IdleCpuCheck):
    """An IdleCpuCheck whose answer the test sets."""

    def __init__(self, free: list[bool]) -> None:
        super().__init__(cpus=2)
        self.free = free

    def __call__(self) -> bool:
        return self.free[0]


def test_the_spinner_that_netsvc_uses_checks_for_a_free_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(spin, "usable_cpus", lambda: 4)
    spinner = spin.useful_spinner()
    assert spinner is not None and isinstance(spinner.idle_cpu, IdleCpuCheck)
    assert spinner.idle_cpu.cpus == 4 and spinner.idle_cpu.path == spin.LOADAVG
