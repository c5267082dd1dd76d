"""The recorder's writer thread: samples in through a bounded queue, out to the file.

The reactor thread does one thing per sample: ``offer(sample)`` appends the sample's
already-encoded bytes, its time and seq to a bounded deque (about 10 us whatever the sample's
size; see benchmarks/bench_recorder.py). It wakes no thread: a ``queue.Queue`` would notify
the writer at every sample, which then wants the GIL back at once (a 2 ms p99 on the reactor
thread, measured); the writer instead looks every :data:`POLL_S` seconds. It compresses
what has arrived and commits it in small transactions (at most :data:`BATCH_MAX` samples
each), and enforces
retention as it runs: samples older than ``max_age_s`` and, past ``max_bytes`` of compressed
samples, the oldest ones are deleted (their pages are reused, so the file stops growing at
about that size).

A write that fails (a full disk, a file size limit, a file removed from under it) stops the
recording: one warning on stderr and in Twisted's log, ``failed`` set, every later sample
dropped (counted). The program goes on. ``close()`` (called by ``Monitor.stop()``) writes what
is queued and joins the thread, waiting :data:`CLOSE_TIMEOUT_S` at most: past it, one warning
says how many samples are still queued, and the thread writes them and closes the file alone.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections import deque
from typing import Any

from twisted.python import log

from dashboard.recorder.store import RecordingStore, compress

#: samples waiting for the writer; beyond, new samples are dropped (counted)
QUEUE_MAX = 256
#: how often the writer thread looks for new samples, in seconds
POLL_S = 0.2
#: samples committed in one transaction at most
BATCH_MAX = 32
#: how often retention is checked, in seconds
RETENTION_EVERY_S = 5.0
#: how long ``close()`` waits for the thread to write what is queued (it may run on the
#: reactor thread, from ``Monitor.stop()``); past it the thread finishes and closes alone
CLOSE_TIMEOUT_S = 5.0
#: how often ``put`` looks for room in a full queue, in seconds
PUT_POLL_S = 0.01


class RecordingWriter:
    """Writes samples into ``store`` from a thread of its own.

    ``offer`` is called from the reactor thread (the Monitor's subscriber); ``close`` from
    the thread that stops the monitor; everything else runs on the writer thread.
    """

    def __init__(
        self,
        store: RecordingStore,
        *,
        max_age_s: float,
        max_bytes: int,
        queue_max: int = QUEUE_MAX,
        clock: Any = time.time,
    ) -> None:
        self.store = store
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self._clock = clock
        self._queue: deque[tuple[float, int, bytes]] = deque()
        self._queue_max = queue_max
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="reactor-dashboard recorder", daemon=True
        )
        #: samples committed; dropped by ``offer`` (queue full, recording stopped); deleted
        #: by retention
        self.written_total = 0
        self.offer_dropped_total = 0
        self.expired_total = 0
        #: the error that stopped the recording, or None while it records
        self.failed: str | None = None
        self._stored_bytes = 0
        self._closed = False
        #: dropped on the writer thread (after a failure): counted apart from ``offer``'s,
        #: so that no count is lost between the two threads
        self._lost_total = 0
        #: samples still queued when ``close()`` stopped waiting (written later, or lost)
        self.unwritten_at_close = 0
        # the store is closed by ``close()`` once the thread ended, or by the thread itself
        # when ``close()`` gave up waiting: whichever comes second, under this lock
        self._close_lock = threading.Lock()
        self._thread_done = True
        self._abandoned = False

    def start(self) -> None:
        """Start the writer thread. The size of what the file holds is read there (a pass
        over a big file): a damaged file stops the recording with one warning."""
        self._thread_done = False
        try:
            self._thread.start()
        except BaseException:
            self._thread_done = True
            raise

    def put(self, sample: Any) -> None:
        """Queue ``sample``, waiting for room while the queue is full (never on the reactor
        thread: the ``record`` command's reader). Dropped (counted) only once the recording
        has stopped."""
        while len(self._queue) >= self._queue_max and self.failed is None and not self._closed:
            time.sleep(PUT_POLL_S)
        self.offer(sample)

    def offer(self, sample: Any) -> None:
        """Queue ``sample`` (a ``dashboard.monitor.Sample``) for writing. Reactor thread;
        never blocks and never raises."""
        if self.failed is not None or self._closed or len(self._queue) >= self._queue_max:
            self.offer_dropped_total += 1
            return
        self._queue.append((sample.time, sample.seq, sample.encoded))  # atomic, lock-free

    def close(self) -> None:
        """Write what is queued, stop the thread and close the file. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(CLOSE_TIMEOUT_S)
        with self._close_lock:
            if not self._thread_done:
                self._abandoned = True  # the thread closes the store when it is done
                self.unwritten_at_close = len(self._queue)
            else:
                self._lost_total += len(self._queue)  # offered after the thread ended
                self._queue.clear()
                with contextlib.suppress(Exception):
                    self.store.close()
                return
        self._warn(
            f"reactor-dashboard: the recorder still had {self.unwritten_at_close} samples"
            f" to write into {self.store.path} after {CLOSE_TIMEOUT_S:g} s; it goes on"
            " writing them in the background (lost if the process exits first)"
        )

    @property
    def dropped_total(self) -> int:
        """Samples never written: refused by ``offer`` or lost with a failed write."""
        return self.offer_dropped_total + self._lost_total

    def as_json(self) -> dict[str, Any]:
        """The recorder's state for the snapshot (``recorder``)."""
        return {
            "path": str(self.store.path),
            "recording": self.failed is None and not self._closed,
            "written_total": self.written_total,
            "dropped_total": self.dropped_total,
            "expired_total": self.expired_total,
            "stored_bytes": self._stored_bytes,
            "queued": len(self._queue),
            "failed": self.failed,
        }

    # writer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            if self._measure():
                self._loop()
        finally:
            with self._close_lock:
                self._thread_done = True
                if self._abandoned:
                    with contextlib.suppress(Exception):
                        self.store.close()

    def _measure(self) -> bool:
        """Read the size of the samples the file holds already; False (recording stopped)
        when the file is damaged."""
        try:
            self._stored_bytes = self.store.stored_bytes()
        except Exception as exc:
            self._fail(exc, 0)
            self._lost_total += len(self._queue)
            self._queue.clear()
            return False
        return True

    def _loop(self) -> None:
        next_retention = 0.0
        while True:
            stopping = self._stopping.is_set()  # read before draining: nothing is left behind
            if not self._queue:
                if stopping:
                    break
                self._stopping.wait(POLL_S)
                continue
            batch: list[tuple[float, int, bytes]] = []
            while self._queue and len(batch) < BATCH_MAX:
                batch.append(self._queue.popleft())
            if self.failed is not None:
                self._lost_total += len(batch)
                continue
            try:
                self._write(batch)
                now = self._clock()
                if now >= next_retention:
                    next_retention = now + RETENTION_EVERY_S
                    self._retain(now)
            except Exception as exc:
                self._fail(exc, len(batch))
        if self.failed is None:  # leave the file within its limits
            try:
                self._retain(self._clock())
            except Exception as exc:
                self._fail(exc, 0)

    def _write(self, batch: list[tuple[float, int, bytes]]) -> None:
        """Compress and commit ``batch``, first deleting the oldest samples when it would
        take the samples past the size budget (so the batch reuses their pages)."""
        if not batch:
            return
        rows = [(t, seq, len(encoded), compress(encoded)) for t, seq, encoded in batch]
        incoming = sum(len(row[3]) for row in rows)
        budget = self._budget()
        if self._stored_bytes + incoming > budget:
            self._drop_oldest(self._stored_bytes + incoming - int(budget * 0.9))
        self.store.append(rows)
        self._stored_bytes += incoming
        self.written_total += len(rows)

    def _budget(self) -> int:
        """Compressed sample bytes kept at most: 80% of ``max_bytes`` (the rest is room for
        SQLite's own pages, the indexes and the WAL)."""
        return int(self.max_bytes * 0.8)

    def _drop_oldest(self, nbytes: int) -> None:
        before = self.store.count()
        self._stored_bytes -= self.store.drop_oldest(nbytes)
        self.expired_total += before - self.store.count()

    def _retain(self, now: float) -> None:
        """Delete what is older than ``max_age_s``, then the oldest past the size budget."""
        expired = self.store.drop_before(now - self.max_age_s)
        if expired:
            self.expired_total += expired
            self._stored_bytes = self.store.stored_bytes()
        budget = self._budget()
        if self._stored_bytes > budget:
            self._drop_oldest(self._stored_bytes - int(budget * 0.9))

    def _fail(self, exc: Exception, lost: int) -> None:
        """Stop recording after a write error: one warning, the program goes on."""
        self.failed = f"{type(exc).__name__}: {exc}"
        self._lost_total += lost
        message = (
            f"reactor-dashboard: recording to {self.store.path} stopped: {self.failed}"
            " (the program goes on; samples are no longer recorded)"
        )
        self._warn(message)

    @staticmethod
    def _warn(message: str) -> None:
        """One line on stderr and in Twisted's log; never raises."""
        with contextlib.suppress(Exception):
            print(message, file=sys.stderr, flush=True)
        with contextlib.suppress(Exception):
            log.msg(message)
