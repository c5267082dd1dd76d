"""The recorder's commands: ``replay``, ``record`` and ``export`` (declared in
dashboard/cli.py's parser by :func:`add_commands`, run by :func:`run_command`).

A file that is not a usable recording (missing, empty, truncated, foreign, newer) is one
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import sqlite3
import sys
from collections.abc import Callable
from typing import Any

from dashboard.recorder.store import RecordingError

PROG = "reactor-dashboard"


def positive_number(text: str) -> float:
    """A finite number above 0 (hours, megabytes): argparse's type."""
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text!r}")
    return number


def retry_count(text: str) -> int:
    """A whole number, 0 or more: argparse's type."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return number


def add_commands(commands: Any, port_number: Callable[[str], int]) -> None:
    """Add ``replay``, ``record`` and ``export`` to the ``reactor-dashboard`` subparsers."""
    replay = commands.add_parser(
        "replay",
        help="serve a recording (--record) read-only in the same page, on 127.0.0.1",
    )
    replay.add_argument("path", help="the recording file")
    replay.add_argument("--port", type=port_number, default=8089, help="port (8089; 0: any)")
    replay.add_argument("--duration", type=float, default=None, help=argparse.SUPPRESS)

    record = commands.add_parser(
        "record",
        help="record a running dashboard's samples from its event stream into a file",
    )
    record.add_argument("url", help="the dashboard's address, e.g. http://127.0.0.1:8089/")
    record.add_argument("--out", required=True, metavar="PATH", help="the recording file")
    record.add_argument(
        "--token",
        default=None,
        help="the dashboard's token (default: $REACTOR_DASHBOARD_TOKEN; prefer the variable)",
    )
    record.add_argument(
        "--record-hours", type=positive_number, default=24.0, help="kept hours (24)"
    )
    record.add_argument(
        "--record-max-mb", type=positive_number, default=512.0, help="size limit (512)"
    )
    record.add_argument(
        "--retries",
        type=retry_count,
        default=10,
        help="reconnections in a row before giving up (10)",
    )

    export = commands.add_parser(
        "export", help="write a recording's samples as JSON lines (one sample a line)"
    )
    export.add_argument("path", help="the recording file")
    export.add_argument("--from", dest="start", default=None, help="unix time or ISO 8601")
    export.add_argument("--to", dest="end", default=None, help="unix time or ISO 8601")
    export.add_argument("--out", default=None, metavar="PATH", help="a file instead of stdout")


def run_command(args: argparse.Namespace) -> int:
    """Run ``replay``, ``record`` or ``export``; the exit status."""
    try:
        if args.command == "replay":
            from dashboard.recorder.serve import serve_replay

            return serve_replay(args.path, args.port, args.duration)
        if args.command == "export":
            from dashboard.recorder.export import export

            return export(args.path, args.start, args.end, args.out)
        from dashboard.recorder.follow import follow_command

        return follow_command(args)
    except RecordingError as exc:
        print(f"{PROG} {args.command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # --out in a folder that does not exist, a disk full
        print(f"{PROG} {args.command}: {exc}", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as exc:  # damaged where no sample can be skipped (an index)
        print(f"{PROG} {args.command}: the recording is damaged: {exc}", file=sys.stderr)
        return 2
