"""The sampler itself (dashboard/probes/profiler.py), on threads of the test's own: stacks
merged by function, the depth and distinct-stack bounds with what they cut counted, idle told
by the innermost frame when no pulse is given (and by the pulse when one is), one run at a
time, and a cancelled run ends its thread and says so (``finish(None)``)."""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dashboard.probes.profiler import (
    CUT_FRAME,
    OTHER_FRAME,
    SWITCH_INTERVAL_S,
    THREAD_NAME,
    Profile,
    ProfileRun,
    frame_name,
)
from dashboard.probes.watchdog import ReactorPulse


class Subject:
    """A thread that runs ``body(stop)`` until stopped."""

    def __init__(self, body: Callable[[threading.Event], None]) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=body, args=(self.stop,), daemon=True)
        self.thread.start()

    @property
    def ident(self) -> int:
        assert self.thread.ident is not None
        return self.thread.ident

    def end(self) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.fixture
def subjects() -> Iterator[list[Subject]]:
    made: list[Subject] = []
    yield made
    for subject in made:
        subject.end()


def run_profile(ident: int, seconds: float = 0.4, **kwargs: Any) -> Profile:
    results: list[Profile | None] = []
    errors: list[BaseException] = []
    run = ProfileRun(
        thread_ident=ident,
        seconds=seconds,
        finish=results.append,
        on_error=errors.append,
        **kwargs,
    )
    run.start()
    assert run.thread is not None and run.thread.name == THREAD_NAME
    run.thread.join(10)
    assert not run.thread.is_alive() and run.done.is_set()
    assert errors == []
    [profile] = results
    assert profile is not None
    return profile


def deep(n: int, stop: threading.Event) -> None:
    if n:
        deep(n - 1, stop)
    else:
        while not stop.is_set():
            pass


def spin_a(stop: threading.Event) -> None:
    end = time.perf_counter() + 0.002
    while time.perf_counter() < end:
        pass


def spin_b(stop: threading.Event) -> None:
    end = time.perf_counter() + 0.002
    while time.perf_counter() < end:
        pass


def test_a_deep_stack_keeps_its_innermost_frames_and_counts_the_cut(
    subjects: list[Subject],
) -> None:
    subject = Subject(lambda stop: deep(100, stop))
    subjects.append(subject)
    profile = run_profile(subject.ident, max_depth=20)
    assert profile.samples > 5
    assert profile.deep_samples == profile.samples == profile.busy_samples
    # merged: one stack inside deep(), and one inside Event.is_set() beneath it
    assert 1 <= len(profile.stacks) <= 2
    assert sum(count for _, count in profile.stacks) == profile.samples
    name = frame_name(deep.__code__)
    assert name.startswith("deep (") and name.endswith(f":{deep.__code__.co_firstlineno})")
    for frames, _ in profile.stacks:
        assert len(frames) == 21 and frames[0] == CUT_FRAME
        assert frames[1:20] == (name,) * 19
        assert frames[20] in {name, frame_name(threading.Event.is_set.__code__)}
    assert profile.as_json()["truncated"]["deep_samples"] == profile.samples


def test_distinct_stacks_are_bounded_and_the_rest_counted(subjects: list[Subject]) -> None:
    def alternate(stop: threading.Event) -> None:
        while not stop.is_set():
            spin_a(stop)
            spin_b(stop)

    subject = Subject(alternate)
    subjects.append(subject)
    profile = run_profile(subject.ident, seconds=0.6, max_stacks=1)
    kept = [frames for frames, _ in profile.stacks if frames != (OTHER_FRAME,)]
    assert len(kept) == 1
    other = dict(profile.stacks).get((OTHER_FRAME,), 0)
    assert other == profile.other_samples > 0
    assert sum(count for _, count in profile.stacks) == profile.busy_samples == profile.samples


def test_same_function_on_other_lines_is_one_box(subjects: list[Subject]) -> None:
    def two_lines(stop: threading.Event) -> None:
        while not stop.is_set():
            x = sum(range(50))  # one line
            y = [i for i in range(50)]  # another
            del x, y

    subject = Subject(two_lines)
    subjects.append(subject)
    profile = run_profile(subject.ident)
    innermost = {frames[-1] for frames, _ in profile.stacks}
    name = frame_name(two_lines.__code__)
    assert name in innermost
    assert sum(1 for frames, _ in profile.stacks if frames[-1] == name) == 1


def test_idle_is_told_by_the_innermost_frame_without_a_pulse(subjects: list[Subject]) -> None:
    def waits(stop: threading.Event) -> None:
        stop.wait()

    subject = Subject(waits)
    subjects.append(subject)
    waiting = frozenset({threading.Condition.wait.__code__})
    profile = run_profile(subject.ident, idle_codes=waiting)
    assert profile.idle_by == "stack"
    assert profile.samples > 5
    assert profile.idle_samples == profile.samples and profile.stacks == ()
    # without the idle codes the same wait is drawn as a stack
    drawn = run_profile(subject.ident, seconds=0.2)
    assert drawn.idle_samples == 0 and drawn.stacks


def test_idle_is_told_by_the_pulse(subjects: list[Subject]) -> None:
    subject = Subject(lambda stop: deep(3, stop))
    subjects.append(subject)
    pulse = ReactorPulse()
    pulse.tick = math.inf  # inside the wait, as the loop hook says
    idle = run_profile(subject.ident, seconds=0.3, pulse=pulse)
    assert idle.idle_by == "pulse"
    assert idle.samples > 5 and idle.idle_samples == idle.samples
    pulse.tick = time.time()  # a busy span
    busy = run_profile(subject.ident, seconds=0.3, pulse=pulse)
    assert busy.idle_samples == 0 and busy.busy_samples == busy.samples > 5


def test_cancel_ends_the_thread_with_no_profile_and_puts_the_switch_back(
    subjects: list[Subject],
) -> None:
    subject = Subject(lambda stop: deep(3, stop))
    subjects.append(subject)
    before = sys.getswitchinterval()
    results: list[Profile | None] = []
    run = ProfileRun(thread_ident=subject.ident, seconds=30, finish=results.append, on_error=print)
    run.start()
    deadline = time.monotonic() + 5
    while sys.getswitchinterval() != SWITCH_INTERVAL_S:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert 29 < run.seconds_left <= 30
    started = time.monotonic()
    run.cancel(timeout_s=5)
    assert time.monotonic() - started < 1.0
    assert run.thread is not None and not run.thread.is_alive()
    assert results == [None]
    assert sys.getswitchinterval() == before


def test_a_thread_that_is_gone_is_counted_missing() -> None:
    idents = {t.ident for t in threading.enumerate()}
    gone = next(i for i in range(12345, 12400) if i not in idents)
    profile = run_profile(gone, seconds=0.2)
    assert profile.samples == 0 and profile.missing_samples > 5
    assert profile.as_json()["idle_share"] is None


def test_rate_must_be_sane() -> None:
    with pytest.raises(ValueError, match="hz"):
        ProfileRun(thread_ident=1, seconds=1, finish=print, on_error=print, hz=0)
