"""The ``reactor-dashboard`` command: ``demo``, ``run``, and the flight recorder's
``replay``, ``record`` and ``export`` (see dashboard/recorder/)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dashboard.attach import (
    METRICS_TOKEN_ENV,
    TOKEN_ENV,
    access_options,
    parse_port,
    take_token_variables,
)
from dashboard.attach import USAGE as RUN_USAGE


def port_number(text: str) -> int:
    try:
        return parse_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reactor-dashboard",
        description="Live health dashboard for a running Twisted reactor.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="run a demo service under load with the dashboard on 127.0.0.1"
    )
    demo.add_argument("--port", type=port_number, default=8089, help="dashboard port (8089)")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.add_argument(
        "--token",
        default=None,
        help=f"require this token for the dashboard (default: ${TOKEN_ENV}; prefer the variable:"
        " a command line is visible to every user of the machine)",
    )
    demo.add_argument(
        "--metrics-token",
        default=None,
        help=f"a token for /metrics alone, for scrapers (default: ${METRICS_TOKEN_ENV})",
    )
    demo.add_argument(
        "--record", default=None, metavar="PATH", help="record every sample into PATH"
    )
    # ``run`` parses its own arguments (everything after the program is the program's), see
    # dashboard.attach; it is declared here for ``--help``.
    commands.add_parser(
        "run",
        help="run a Twisted program (script.py or -m module) with the dashboard attached",
        description=RUN_USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    from dashboard.recorder.commands import add_commands

    add_commands(commands, port_number)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["run"]:
        from dashboard.attach import main as run_main

        return run_main(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command == "demo":
        try:
            access = access_options(args.token, args.metrics_token, take_token_variables())
        except ValueError as exc:
            parser.error(str(exc))
        from twisted.internet import reactor

        from dashboard.demo import run_demo
        from dashboard.recorder.store import RecordingError, check_for_recording

        try:
            if args.record is not None:  # damaged: one line, before the demo starts
                check_for_recording(args.record)
            run_demo(reactor, args.port, args.duration, record=args.record, **access)
        except RecordingError as exc:
            print(f"reactor-dashboard demo: --record: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command in ("replay", "record", "export"):
        from dashboard.recorder.commands import run_command

        return run_command(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
