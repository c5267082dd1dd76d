"""The ``reactor-dashboard`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be from 0 to 65535, got {port}")
    return port


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from twisted.internet import reactor

        from dashboard.demo import run_demo

        run_demo(reactor, args.port, args.duration)
        return 0
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
