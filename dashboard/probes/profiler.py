"""A profile on demand: the reactor thread's stack, sampled from a thread of its own about 100
times a second for a few seconds, merged by function.

Nothing runs until a profile is asked for: :meth:`Profiler.begin` starts one sampler thread
(``reactor-dashboard-profiler``) for one :class:`ProfileRun`; the thread ends when the time is
up, when the run is cancelled (the client went away) or at :meth:`Profiler.stop` (the
monitor's ``stop()``). One run at a time (:class:`ProfileBusy` otherwise).

Each sample reads the watched thread's innermost frame with ``sys._current_frames()`` and walks
it outwards. A sample taken while the reactor waits in its poller is *idle*: counted apart,
never merged as a stack of the loop's own code. The loop probe's pulse says which it is (its
``tick`` is +inf inside the wait, and ``spans`` counts waits; both are read before and after
the frame, so a sample whose state changed meanwhile is judged by its innermost frame
instead: a reactor loop method, or the selector's ``select``, is idle). Without the loop
probe's hook the innermost frame alone decides.

Stacks are merged by *function*: each frame is named ``qualname (path.py:FIRSTLINE)``, the line
where the function is defined, not the line it runs. A function then reads as one box however
many lines of it were sampled (a flame graph split by line is hard to read and merges badly),
while two functions of the same name in one file (lambdas, closures, a ``wrapper`` per
decorator) stay apart. Bounds: the innermost :data:`MAX_STACK_DEPTH` frames of a stack are kept
(the rest is one ``[outer frames cut]`` frame, ``deep_samples`` counts them) and at most
:data:`MAX_STACKS` distinct stacks (later new ones are counted in ``other_samples`` under one
``[other stacks]`` frame).

Sampling times are jittered (see ``_sample_until_done``) so periodic work is not aliased,
and the interpreter's switch interval is 1 ms while a profile runs (see ``_run``): a look
waits for the GIL at most that long, so busy spans are not under-counted by 5 ms each.
The hot part costs a dictionary of frames and a walk of up to 64 frames per sample, on the
sampler thread; the reactor thread pays the GIL hand-overs (see benchmarks/bench_profile.py).
Merging and naming happen once, on the sampler thread, when the time is up.
"""

from __future__ import annotations

import math
import random
import sys
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any

import attrs

from dashboard.probes.base import JSONDict, shorten_path
from dashboard.probes.loop import LoopProbe, between_work_codes
from dashboard.probes.watchdog import Pulse

#: The sampler thread's name.
THREAD_NAME = "reactor-dashboard-profiler"
#: Samples a second asked for.
DEFAULT_HZ = 100.0
#: Innermost frames kept per sample.
MAX_STACK_DEPTH = 64
#: Distinct stacks kept per profile.
MAX_STACKS = 1000
#: The interpreter's thread switch interval while a profile runs, s (when it was longer).
SWITCH_INTERVAL_S = 0.001
#: The frame that stands for the outer frames of a stack cut at MAX_STACK_DEPTH.
CUT_FRAME = "[outer frames cut]"
#: The one frame of the stacks counted beyond MAX_STACKS.
OTHER_FRAME = "[other stacks]"

_Key = tuple[int, ...]


class ProfileBusy(Exception):
    """A profile is already running; ``seconds_left`` until it ends."""

    def __init__(self, seconds_left: float) -> None:
        super().__init__(f"a profile is already running ({seconds_left:.1f} s left)")
        self.seconds_left = seconds_left


@attrs.frozen
class Profile:
    """A finished profile. ``stacks``: ``(frames outermost..innermost, samples)``, most
    sampled first; idle samples are not among them."""

    seconds: float
    duration_s: float
    hz_requested: float
    samples: int
    idle_samples: int
    busy_samples: int
    stacks: tuple[tuple[tuple[str, ...], int], ...]
    #: how idle samples were told apart: "pulse" (the loop probe's) or "stack"
    idle_by: str
    #: samples with more than MAX_STACK_DEPTH frames (their outer frames cut)
    deep_samples: int
    #: samples of new stacks once MAX_STACKS distinct stacks were kept
    other_samples: int
    #: sampling times that passed while the sampler could not run (skipped, not made up)
    missed_ticks: int
    #: looks that found no frame for the watched thread
    missing_samples: int
    max_depth: int = MAX_STACK_DEPTH
    max_stacks: int = MAX_STACKS

    def as_json(self) -> JSONDict:
        """The ``GET /api/v1/profile`` answer."""
        return {
            "seconds": self.seconds,
            "duration_s": round(self.duration_s, 4),
            "hz_requested": self.hz_requested,
            "hz": round(self.samples / self.duration_s, 2) if self.duration_s > 0 else 0.0,
            "samples": self.samples,
            "idle_samples": self.idle_samples,
            "busy_samples": self.busy_samples,
            "idle_share": round(self.idle_samples / self.samples, 4) if self.samples else None,
            "idle_by": self.idle_by,
            "stacks": [{"frames": list(frames), "count": count} for frames, count in self.stacks],
            "truncated": {
                "deep_samples": self.deep_samples,
                "other_samples": self.other_samples,
                "max_depth": self.max_depth,
                "max_stacks": self.max_stacks,
            },
            "missed_ticks": self.missed_ticks,
            "missing_samples": self.missing_samples,
        }


def frame_name(code: CodeType) -> str:
    """``qualname (path.py:FIRSTLINE)``: a function, named by where it is defined."""
    name = getattr(code, "co_qualname", code.co_name)
    return f"{name} ({shorten_path(code.co_filename)}:{code.co_firstlineno})"


class ProfileRun:
    """One profile: a thread that samples ``thread_ident``'s stack ``hz`` times a second for
    ``seconds`` (``clock`` seconds, monotonic), then calls ``finish`` once, on that thread,
    with the :class:`Profile`, or with None when the run was cancelled before its end.

    ``pulse``: the loop probe's (None when its wait hook is not installed): idle samples are
    told by it. ``idle_codes``: code objects whose frame, innermost, is the reactor waiting.
    ``on_error`` is told of any failure of a look (from the sampler thread).
    """

    def __init__(
        self,
        *,
        thread_ident: int,
        seconds: float,
        finish: Callable[[Profile | None], None],
        on_error: Callable[[BaseException], None],
        pulse: Pulse | None = None,
        idle_codes: frozenset[CodeType] = frozenset(),
        hz: float = DEFAULT_HZ,
        clock: Callable[[], float] = time.monotonic,
        max_depth: int = MAX_STACK_DEPTH,
        max_stacks: int = MAX_STACKS,
    ) -> None:
        if not 0 < hz <= 1000:
            raise ValueError(f"hz must be in (0, 1000], got {hz!r}")
        self.thread_ident = thread_ident
        self.seconds = seconds
        self.hz = hz
        self._finish = finish
        self._on_error = on_error
        self._pulse = pulse
        self._idle_codes = idle_codes
        self._clock = clock
        self._max_depth = max_depth
        self._max_stacks = max_stacks
        self._stopping = threading.Event()
        #: set when sampling is over (time up or cancelled), before ``finish`` is called
        self.done = threading.Event()
        self.thread: threading.Thread | None = None
        self.started_at = math.nan
        # what the samples gather (sampler thread only)
        self._counts: dict[_Key, int] = {}
        self._codes: dict[_Key, tuple[CodeType, ...]] = {}
        self._cut: set[_Key] = set()
        self.samples = 0
        self.idle_samples = 0
        self.deep_samples = 0
        self.other_samples = 0
        self.missed_ticks = 0
        self.missing_samples = 0

    @property
    def seconds_left(self) -> float:
        if math.isnan(self.started_at):
            return self.seconds
        return max(0.0, self.started_at + self.seconds - self._clock())

    def start(self) -> None:
        """Start the sampler thread (once)."""
        if self.thread is not None:
            return
        self.started_at = self._clock()
        thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self.thread = thread
        thread.start()

    def cancel(self, timeout_s: float = 1.0) -> None:
        """End the run early (``finish(None)``) and join its thread, at most ``timeout_s``.
        Any thread but the sampler's."""
        self._stopping.set()
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    # the sampler thread -----------------------------------------------------------------

    def _run(self) -> None:
        profile: Profile | None = None
        # A look needs the GIL, and a busy reactor thread hands it over only after the switch
        # interval (5 ms by default): a look asked for in the last 5 ms of a busy span found
        # the loop idle, and 10 ms callbacks that held it half the time read 14-30%. So the
        # interval is 1 ms while a profile runs (the same callbacks read 33-43%, 30 ms ones
        # 43-48%: benchmarks/README.md), then put back. Only threads that contend for the
        # GIL switch more often meanwhile; the reactor alone is not slowed.
        previous = sys.getswitchinterval()
        if previous > SWITCH_INTERVAL_S:
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        try:
            if self._sample_until_done():
                profile = self._merge()
        except Exception as exc:
            self._on_error(exc)
        finally:
            if previous > SWITCH_INTERVAL_S and sys.getswitchinterval() == SWITCH_INTERVAL_S:
                sys.setswitchinterval(previous)  # unless someone else changed it meanwhile
            self.done.set()
            try:
                self._finish(profile)
            except Exception as exc:
                self._on_error(exc)

    def _sample_until_done(self) -> bool:
        """Sample until the time is up (True) or the run is cancelled (False)."""
        clock = self._clock
        period = 1.0 / self.hz
        # Each gap is drawn from 0.5-1.5 periods (the mean rate stays ``hz``): a fixed rate
        # locks in step with periodic work (a 50 Hz LoopingCall sampled at 100 Hz read
        # anywhere from 18% to 53% busy for a true 50%), a jittered one does not.
        jitter = random.Random().uniform
        end = self.started_at + self.seconds
        next_at = self.started_at
        while True:
            now = clock()
            if now >= end:
                return True
            if self._stopping.wait(max(0.0, min(next_at, end) - now)):
                return False
            if clock() >= end:
                return True
            try:
                self._sample()
            except Exception as exc:
                self._on_error(exc)
            next_at += period * jitter(0.5, 1.5)
            now = clock()
            if next_at <= now:  # the sampler was held up: skip the times it missed
                behind = int((now - next_at) / period) + 1
                self.missed_ticks += behind
                next_at += behind * period

    def _sample(self) -> None:
        """One look at the watched thread's stack."""
        pulse = self._pulse
        if pulse is not None:
            tick, spans = pulse.tick, pulse.spans
        frame: FrameType | None = sys._current_frames().get(self.thread_ident)
        if frame is None:
            self.missing_samples += 1
            return
        try:
            if pulse is not None and pulse.tick == tick and pulse.spans == spans:
                idle = tick == math.inf  # the same state all along: inside the wait, or not
            else:
                idle = frame.f_code in self._idle_codes
            self.samples += 1
            if idle:
                self.idle_samples += 1
                return
            codes: list[CodeType] = []
            depth = self._max_depth
            walked: FrameType | None = frame
            while walked is not None and len(codes) < depth:
                codes.append(walked.f_code)
                walked = walked.f_back
            key = tuple(map(id, codes))
            if walked is not None:
                self.deep_samples += 1
                self._cut.add(key)
        finally:
            del frame  # never keep the reactor thread's frames alive
        counts = self._counts
        if key in counts:
            counts[key] += 1
        elif len(counts) < self._max_stacks:
            counts[key] = 1
            self._codes[key] = tuple(codes)  # keeps the ids valid: codes live while held
        else:
            self.other_samples += 1

    def _merge(self) -> Profile:
        """Name each kept stack's frames and merge stacks that name the same."""
        names: dict[int, str] = {}
        merged: dict[tuple[str, ...], int] = {}
        for key, count in self._counts.items():
            frames: list[str] = []
            for code in self._codes[key]:
                name = names.get(id(code))
                if name is None:
                    name = names[id(code)] = frame_name(code)
                frames.append(name)
            if key in self._cut:
                frames.append(CUT_FRAME)
            frames.reverse()
            stack = tuple(frames)
            merged[stack] = merged.get(stack, 0) + count
        if self.other_samples:
            merged[(OTHER_FRAME,)] = merged.get((OTHER_FRAME,), 0) + self.other_samples
        stacks = tuple(sorted(merged.items(), key=lambda item: (-item[1], item[0])))
        self._codes.clear()
        return Profile(
            seconds=self.seconds,
            duration_s=max(0.0, self._clock() - self.started_at),
            hz_requested=self.hz,
            samples=self.samples,
            idle_samples=self.idle_samples,
            busy_samples=self.samples - self.idle_samples,
            stacks=stacks,
            idle_by="pulse" if self._pulse is not None else "stack",
            deep_samples=self.deep_samples,
            other_samples=self.other_samples,
            missed_ticks=self.missed_ticks,
            missing_samples=self.missing_samples,
            max_depth=self._max_depth,
            max_stacks=self._max_stacks,
        )


class Profiler:
    """Profiles of one reactor's thread, one at a time. ``begin``/``stop`` from the reactor
    thread. ``loop``: the loop probe, whose pulse tells idle samples while its wait hook is
    installed. Failures of a run are counted in ``errors`` under ``"profile"``."""

    def __init__(self, reactor: Any, loop: LoopProbe, on_error: Callable[[BaseException], None]):
        self._reactor = reactor
        self._loop = loop
        self._on_error = on_error
        self._active: ProfileRun | None = None
        #: profiles begun, and those cancelled (client gone, or stop()) since creation
        self.runs_total = 0
        self.cancelled_total = 0

    @property
    def active(self) -> ProfileRun | None:
        """The run still sampling, if any."""
        run = self._active
        return run if run is not None and not run.done.is_set() else None

    def begin(
        self,
        seconds: float,
        *,
        finish: Callable[[Profile | None], None],
        thread_ident: int | None = None,
        hz: float = DEFAULT_HZ,
    ) -> ProfileRun:
        """Start sampling for ``seconds``; ``finish`` is called on the sampler thread (see
        :class:`ProfileRun`). ``thread_ident``: the thread to sample; by default the one the
        loop probe watches (the reactor's), else the calling thread. Raises
        :class:`ProfileBusy` while one runs."""
        running = self.active
        if running is not None:
            raise ProfileBusy(running.seconds_left)
        if thread_ident is None:
            watchdog = self._loop.watchdog
            thread_ident = watchdog.thread_ident if watchdog else threading.get_ident()
        hooked = self._loop.wait_hook is not None
        run = ProfileRun(
            thread_ident=thread_ident,
            seconds=seconds,
            finish=finish,
            on_error=self._on_error,
            pulse=self._loop.pulse if hooked else None,
            idle_codes=idle_codes(self._reactor),
            hz=hz,
        )
        self._active = run
        self.runs_total += 1
        run.start()
        return run

    def cancel(self, run: ProfileRun, timeout_s: float = 1.0) -> None:
        """End ``run`` early (its client went away)."""
        if not run.done.is_set():
            self.cancelled_total += 1
        run.cancel(timeout_s)

    def stop(self, timeout_s: float = 2.0) -> None:
        """End the running profile, if any, and join its thread (``Monitor.stop()``)."""
        run, self._active = self._active, None
        if run is not None:
            self.cancel(run, timeout_s)


def idle_codes(reactor: Any) -> frozenset[CodeType]:
    """Code objects whose frame, innermost on the reactor thread, means it waits: its loop's
    own methods (:func:`~dashboard.probes.loop.between_work_codes`) and the asyncio
    selector's ``select`` (a Python method that the poll runs under)."""
    codes = set(between_work_codes(reactor))
    selector = getattr(getattr(reactor, "_asyncioEventloop", None), "_selector", None)
    select = getattr(type(selector), "select", None) if selector is not None else None
    code = getattr(select, "__code__", None)
    if isinstance(code, CodeType):
        codes.add(code)
    return frozenset(codes)
