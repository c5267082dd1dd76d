"""The process itself: pid, uptime, resident memory, CPU, file descriptors, threads, GC.

No psutil: on Linux everything comes from ``/proc/self`` (a few small reads per collect,
tens of microseconds). Where ``/proc`` is missing (macOS, Windows) the figures that need it
are ``None``; ``open_fds`` falls back to ``/dev/fd`` and ``threads`` to the Python count.
Nothing is patched: ``install()`` only resets the CPU baseline.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from typing import Any

from dashboard.probes.base import JSONDict, ProbeErrors

_PROC_SELF = "/proc/self"
#: Above this many open descriptors the count is refreshed at most every FD_RECOUNT_EVERY_S.
FD_RECOUNT_ABOVE = 1_000
FD_RECOUNT_EVERY_S = 10.0


def _read_text(path: str) -> str | None:
    """The whole of a small file, or ``None`` when it cannot be read."""
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def _page_size() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _process_start_unix(proc: str = _PROC_SELF) -> float | None:
    """When this process started, unix seconds: boot time (``/proc/stat`` ``btime``) plus
    ``starttime`` (field 22 of ``/proc/self/stat``, clock ticks after boot). ``None``
    without ``/proc``."""
    stat = _read_text(f"{proc}/stat")
    boot = _read_text("/proc/stat")
    if stat is None or boot is None:
        return None
    try:
        # The command name (field 2) may hold spaces and parentheses: split after the last ")".
        fields = stat[stat.rindex(")") + 2 :].split()
        start_ticks = int(fields[19])  # field 22 overall; fields[0] is field 3
        btime = next(int(line.split()[1]) for line in boot.splitlines() if line.startswith("btime"))
        return btime + start_ticks / os.sysconf("SC_CLK_TCK")
    except (ValueError, IndexError, StopIteration, OSError):
        return None


class ProcessProbe:
    """Process-wide resource figures, read when collected.

    ``collect()`` returns::

        {pid, uptime_s, started_at, rss_bytes, cpu_percent, cpu_user_s, cpu_system_s,
         open_fds, threads, threads_source, python_threads,
         gc: {collections: [g0, g1, g2], collected_total, uncollectable_total,
              counts: [c0, c1, c2], thresholds: [t0, t1, t2]}}

    - ``uptime_s``: since the process started (from ``/proc``); without ``/proc``, since the
      probe was first installed (``started_at`` says which instant was used).
    - ``cpu_percent``: user+system CPU time over wall time between this collect and the
      previous one, in percent of one core (above 100 with busy threads); 0.0 on the first
      collect after ``install()``. ``peek()`` returns the same section over the time since the
      latest ``collect()`` without moving that baseline (a snapshot between samples).
    - ``open_fds``: entries of ``/proc/self/fd`` (or ``/dev/fd``), minus the one the listing
      itself opens.
    - ``threads``: native threads of the process from ``/proc/self/task`` (it counts threads
      that C libraries start too; ``threads_source`` is ``"os"``), else
      ``threading.active_count()`` (``"python"``). ``python_threads`` is always the latter.
    - ``gc.counts`` is ``gc.get_count()``: for generation 0 the net number of tracked
      allocations since its last collection, for 1 and 2 the number of collections of the
      younger generation since their own last one. True per-generation object counts would
      cost a walk over the heap, so they are not taken.

    All methods run on the reactor thread.
    """

    name = "process"

    def __init__(self, errors: ProbeErrors) -> None:
        self._errors = errors
        self._pid = os.getpid()
        self._page_size = _page_size()
        self._started_at: float | None = None
        self._proc = os.path.isdir(f"{_PROC_SELF}/fd")
        self._last_cpu: tuple[float, float] | None = None  # (monotonic s, cpu s)
        self._fds_cache: tuple[int, float] | None = None  # (count, monotonic s)

    def install(self) -> None:
        if self._started_at is None:
            self._started_at = _process_start_unix() if self._proc else None
            if self._started_at is None:
                self._started_at = time.time()
        self._last_cpu = None

    def uninstall(self) -> None:
        self._last_cpu = None
        self._fds_cache = None

    def collect(self) -> JSONDict:
        """The ``process`` section; ``cpu_percent`` covers the time since the previous
        ``collect()``, which this one closes (the sampler's read)."""
        return self._section(close=True)

    def peek(self) -> JSONDict:
        """The ``process`` section as of now; ``cpu_percent`` covers the time since the latest
        ``collect()``, and no baseline moves."""
        return self._section(close=False)

    def _section(self, *, close: bool) -> JSONDict:
        pid = os.getpid()
        if pid != self._pid:  # forked: our start time and CPU baseline belong to the parent
            self._pid, self._started_at, self._last_cpu = pid, None, None
            self.install()
        started_at = self._started_at if self._started_at is not None else time.time()
        times = os.times()
        data: JSONDict = {
            "pid": pid,
            "uptime_s": round(max(0.0, time.time() - started_at), 3),
            "started_at": started_at,
            "rss_bytes": self._guard(self._rss_bytes),
            "cpu_percent": self._cpu_percent(times.user + times.system, close=close),
            "cpu_user_s": round(times.user, 3),
            "cpu_system_s": round(times.system, 3),
            "open_fds": self._guard(self._open_fds),
            "open_fds_age_s": self._open_fds_age_s(),
            "python_threads": threading.active_count(),
            "gc": self._guard(_gc_stats),
        }
        tasks = self._guard(self._native_threads)
        data["threads"] = tasks if tasks is not None else data["python_threads"]
        data["threads_source"] = "os" if tasks is not None else "python"
        return data

    def _guard(self, read: Any) -> Any:
        """One figure: a failure reading it is counted and shown as ``None``."""
        try:
            return read()
        except Exception as exc:
            self._errors.record(self.name, exc)
            return None

    def _rss_bytes(self) -> int | None:
        if not self._proc or self._page_size is None:
            return None
        statm = _read_text(f"{_PROC_SELF}/statm")
        return None if statm is None else int(statm.split()[1]) * self._page_size

    def _open_fds(self) -> int | None:
        """Open descriptors. Listing ``/proc/self/fd`` costs about 0.5 us per descriptor
        (5.5 ms for 10,000): above ``FD_RECOUNT_ABOVE`` it is recounted at most every
        ``FD_RECOUNT_EVERY_S`` seconds, and ``open_fds_age_s`` says how old the count is."""
        now = time.monotonic()
        cached = self._fds_cache
        if (
            cached is not None
            and cached[0] > FD_RECOUNT_ABOVE
            and now - cached[1] < FD_RECOUNT_EVERY_S
        ):
            return cached[0]
        count = self._count_fds()
        self._fds_cache = None if count is None else (count, now)
        return count

    def _open_fds_age_s(self) -> float:
        cached = self._fds_cache
        return 0.0 if cached is None else round(time.monotonic() - cached[1], 3)

    def _count_fds(self) -> int | None:
        for directory in (f"{_PROC_SELF}/fd", "/dev/fd"):
            try:
                # Listing the directory opens one descriptor, and it shows in the listing.
                return len(os.listdir(directory)) - 1
            except OSError:
                continue
        return None

    def _native_threads(self) -> int | None:
        if not self._proc:
            return None
        try:
            return len(os.listdir(f"{_PROC_SELF}/task"))
        except OSError:
            return None

    def _cpu_percent(self, cpu_s: float, *, close: bool) -> float:
        now = time.monotonic()
        last = self._last_cpu
        if close:
            self._last_cpu = (now, cpu_s)
        if last is None or now <= last[0]:
            return 0.0
        return round(max(0.0, (cpu_s - last[1]) / (now - last[0]) * 100.0), 1)


def _gc_stats() -> JSONDict:
    stats = gc.get_stats()
    return {
        "collections": [int(s.get("collections", 0)) for s in stats],
        "collected_total": sum(int(s.get("collected", 0)) for s in stats),
        "uncollectable_total": sum(int(s.get("uncollectable", 0)) for s in stats),
        "counts": list(gc.get_count()),
        "thresholds": list(gc.get_threshold()),
    }
