"""``reactor-dashboard export PATH [--from T] [--to T] [--out FILE]``: a recording's samples
as JSON lines (each line one sample exactly as the monitor encoded it), oldest first, for
other tools (``jq``, pandas' ``read_json(lines=True)``). Times are unix seconds or ISO 8601
(UTC when no offset is given). Damaged samples are skipped and counted on stderr."""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import sys
from typing import BinaryIO

from dashboard.recorder.store import RecordingError, RecordingStore, open_for_reading

PAGE = 1000


def parse_time(text: str | None, name: str) -> float | None:
    """Unix seconds from ``text`` (a number or ISO 8601); RecordingError names a bad one."""
    if text is None:
        return None
    problem = f"--{name}: not a unix time or an ISO 8601 time: {text!r}"
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):  # nan, inf: no moment of a recording
            raise RecordingError(problem)
        return number
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise RecordingError(problem) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def export(path: str, start_text: str | None, end_text: str | None, out: str | None) -> int:
    """Write the samples of [from, to] as JSON lines to ``out`` (stdout by default)."""
    start = parse_time(start_text, "from")
    end = parse_time(end_text, "to")
    store = open_for_reading(path)
    try:
        return _write_lines(store, start, end, out)
    except BrokenPipeError:  # `export ... | head`: the reader has had enough
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
        return 0
    finally:
        store.close()


def _write_lines(
    store: RecordingStore, start: float | None, end: float | None, out: str | None
) -> int:
    """Write the lines; the exit status."""
    low = -1.0 if start is None else start
    high = float("inf") if end is None else end
    written = 0
    with contextlib.ExitStack() as stack:
        target: BinaryIO = (
            stack.enter_context(open(out, "wb")) if out is not None else sys.stdout.buffer
        )
        after_id = -1
        while True:
            refs = store.times_after(low, after_id, high, PAGE)
            if not refs:
                break
            for sample in store.read(refs):
                target.write(sample.encoded + b"\n")
                written += 1
            low, after_id = refs[-1][1], refs[-1][0]
        target.flush()
    if store.corrupt_total:
        print(
            f"reactor-dashboard export: {written} samples written,"
            f" {store.corrupt_total} damaged ones skipped",
            file=sys.stderr,
        )
    return 0
