"""``reactor-dashboard run``: run an unmodified Twisted program with the monitor installed.

The order matters and is the whole trick: the reactor is installed first (the default one, or
``--reactor NAME``), then a :class:`~dashboard.monitor.Monitor` is started on it and the
dashboard is served on 127.0.0.1, and only then does the program's own code run, through
:mod:`runpy` exactly as ``python script.py`` / ``python -m module`` would run it
(``__name__ == "__main__"``, ``sys.argv`` as the program expects). So every Deferred,
connection and pool the program makes is seen from its first line.

A program that installs its own reactor gets it when it did not use the default one yet: the
dashboard moves to it (:mod:`dashboard.reactor_choice`). Under trial, the janitor that cleans
the reactor after each test leaves the dashboard's timers and port alone
(:mod:`dashboard.janitor_shield`).

Everything here runs on the main thread, before and around the program's ``reactor.run()``.
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import sys
import traceback
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import attrs

from dashboard.attachment import PROG, Attachment
from dashboard.attachment import RunUsageError as RunUsageError  # part of this module's API
from dashboard.reactor_choice import ReactorChoice

DEFAULT_PORT = 8089
#: Environment variables read when ``--token`` / ``--metrics-token`` are not given.
TOKEN_ENV = "REACTOR_DASHBOARD_TOKEN"
METRICS_TOKEN_ENV = "REACTOR_DASHBOARD_METRICS_TOKEN"

USAGE = f"""\
usage: {PROG} [--port P] [--reactor NAME] [--token T] script.py [args ...]
       {PROG} [--port P] [--reactor NAME] [--token T] -m module [args ...]

Run a Twisted program, unmodified, with the Reactor Dashboard installed before its code runs
and served on http://127.0.0.1:P/ (the program's own output is left alone; the dashboard's
address is printed on stderr).

options (before the program; everything after it is the program's own):
  --port P         dashboard port on 127.0.0.1 (default {DEFAULT_PORT}; 0 picks a free one)
  --reactor NAME   install this reactor instead of the default one (e.g. asyncio, select,
                   poll, epoll). Without it, a program that installs its own reactor
                   (Scrapy, twist --reactor) gets it and the dashboard moves to it, as long
                   as the program has not used the default one yet.
  --token T        require this token (16+ characters) for the dashboard: the page takes
                   ?token=T once, the API and the stream "Authorization: Bearer T".
                   Default: ${TOKEN_ENV} (prefer it: a command line is visible to
                   every user of the machine)
  --metrics-token T  a token for /metrics alone, for scrapers (${METRICS_TOKEN_ENV})
                   Both variables are removed from the environment before the program
                   runs: its subprocesses do not inherit them.
  --record PATH    record every sample into PATH (an SQLite file, kept 24 hours and at
                   most 512 MB), for `reactor-dashboard replay PATH` later
  --handlers       measure busy time by handler ("Where the loop's time goes") where it
                   is off by default: Python 3.13 (a small HTTP request ~1.5% slower) and
                   the pure-Python path (a reactor iteration ~1.33x); on by default where
                   the accelerator is built on Python 3.11 and 3.12 (~0.4%)
  --no-handlers    do not measure it
  -m module        run a module as ``python -m module`` does (e.g. -m twisted web --path .)
  -h, --help       show this help
"""


@attrs.frozen
class RunOptions:
    """What ``run`` was asked to do: the program is a script path or a module name."""

    port: int = DEFAULT_PORT
    reactor_name: str | None = None
    script: str | None = None
    module: str | None = None
    args: tuple[str, ...] = ()
    token: str | None = attrs.field(default=None, repr=False)
    metrics_token: str | None = attrs.field(default=None, repr=False)
    record: str | None = None
    handlers: bool | None = None

    @property
    def target(self) -> str:
        return self.module if self.module is not None else str(self.script)


def parse_port(text: str) -> int:
    """A TCP port number 0..65535 from ``text``; ``ValueError`` naming the problem otherwise."""
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be from 0 to 65535, got {port}")
    return port


def take_token_variables(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Remove :data:`TOKEN_ENV` and :data:`METRICS_TOKEN_ENV` from ``environ`` (default
    ``os.environ``, where removing also unsets them for the C library) and return what they
    held, for :func:`access_options`. Called before the program runs, so that no subprocess
    it starts inherits a token (a ``--token`` given on the command line still wins over a
    variable taken here). Main thread only."""
    env = os.environ if environ is None else environ
    taken: dict[str, str] = {}
    for variable in (TOKEN_ENV, METRICS_TOKEN_ENV):
        value = env.pop(variable, None)
        if value is not None:
            taken[variable] = value
    return taken


def access_options(
    token: str | None,
    metrics_token: str | None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``Monitor`` keyword arguments for the tokens given, else those of the environment
    (:data:`TOKEN_ENV`, :data:`METRICS_TOKEN_ENV`; empty means unset). Only the ones set are
    returned. A malformed token raises ``ValueError`` naming the problem."""
    from dashboard.web.guard import check_token

    env = os.environ if environ is None else environ
    options: dict[str, Any] = {}
    for name, given, variable in (
        ("token", token, TOKEN_ENV),
        ("metrics_token", metrics_token, METRICS_TOKEN_ENV),
    ):
        value = given if given is not None else (env.get(variable) or None)
        if value is None:
            continue
        source = f"--{name.replace('_', '-')}" if given is not None else variable
        try:
            check_token(value, source)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        options[name] = value
    return options


def parse_run_args(argv: Sequence[str]) -> RunOptions | None:
    """Parse ``run``'s own options up to the program; the rest belongs to the program.

    Like the ``python`` command, options are only read before the target, so
    ``run -m twisted web --port 80`` hands ``--port 80`` to twist. Returns ``None`` for
    ``--help``; raises :class:`RunUsageError` on bad usage.
    """
    port = DEFAULT_PORT
    reactor_name: str | None = None
    tokens: dict[str, str] = {}
    handlers: bool | None = None
    index = 0

    def value_of(option: str, inline: str | None) -> str:
        nonlocal index
        if inline is not None:
            return inline
        index += 1
        if index >= len(argv):
            raise RunUsageError(f"{option} needs a value")
        return argv[index]

    while index < len(argv):
        arg = argv[index]
        name, has_inline, inline_value = arg.partition("=")
        inline = inline_value if has_inline else None
        if arg in ("-h", "--help"):
            return None
        if name == "--port":
            try:
                port = parse_port(value_of("--port", inline))
            except ValueError as exc:
                raise RunUsageError(f"--port: {exc}") from None
        elif name == "--reactor":
            reactor_name = value_of("--reactor", inline).strip()
            if not reactor_name:
                raise RunUsageError("--reactor needs a reactor name")
        elif name in ("--token", "--metrics-token", "--record"):
            tokens[name[2:].replace("-", "_")] = value_of(name, inline)
        elif arg in ("--handlers", "--no-handlers"):
            handlers = arg == "--handlers"
        elif arg.startswith("-m"):
            module = arg[2:] or value_of("-m", None)
            if not module or module.startswith("-"):
                raise RunUsageError(f"-m needs a module name, got {module!r}")
            rest = tuple(argv[index + 1 :])
            return RunOptions(
                port, reactor_name, module=module, args=rest, **tokens, handlers=handlers
            )
        elif arg == "--":
            index += 1
            break
        elif arg.startswith("-") and arg != "-":
            raise RunUsageError(f"unknown option {arg!r} (options go before the program)")
        else:
            break
        index += 1
    if index >= len(argv):
        raise RunUsageError("missing the program to run: give script.py or -m module")
    script = argv[index]
    return RunOptions(
        port,
        reactor_name,
        script=script,
        args=tuple(argv[index + 1 :]),
        **tokens,
        handlers=handlers,
    )


def program_package(module: str | None) -> str | None:
    """The package ``run -m`` runs, claimed as the user's code when a block is labelled
    (``synapse`` for ``-m synapse.app.homeserver``: installed in site-packages, it would
    count as a library's and no frame of it would name a block); None for a script, and for
    Twisted's own entry points (``-m twisted web``, ``-m twisted.trial``), which stay library."""
    if module is None:
        return None
    package = module.split(".", 1)[0]
    return None if package in ("twisted", "dashboard") else package


def check_script(path: str) -> None:
    """Refuse, before anything is installed, a script that ``python`` could not run."""
    if not os.path.exists(path):
        raise RunUsageError(f"no such script: {path!r}")
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "__main__.py")):
        raise RunUsageError(f"{path!r} is a directory without a __main__.py")


def check_module(name: str) -> None:
    """Refuse a module that ``python -m`` could not run. Imports its parent packages."""
    try:
        spec = importlib.util.find_spec(name)
        is_package = spec is not None and spec.submodule_search_locations is not None
        if is_package and importlib.util.find_spec(f"{name}.__main__") is None:
            raise RunUsageError(f"{name!r} is a package without a __main__ module")
    except (ImportError, ValueError) as exc:
        raise RunUsageError(f"cannot find module {name!r}: {exc}") from None
    if spec is None:
        raise RunUsageError(f"no module named {name!r}")


def install_reactor(name: str | None) -> Any:
    """Install and return the global reactor: the default one, or the one called ``name``
    (a ``twisted.application.reactors`` short name, as ``twist --reactor`` takes)."""
    if "twisted.internet.reactor" in sys.modules:
        # Only possible when called in-process after something else installed one.
        raise RunUsageError("a reactor is already installed in this process", show_help=False)
    if name is None or name == "default":
        from twisted.internet import reactor

        return reactor
    from twisted.application.reactors import NoSuchReactor, getReactorTypes, installReactor

    try:
        return installReactor(name)
    except NoSuchReactor:
        names = ", ".join(r.shortName for r in getReactorTypes())
        raise RunUsageError(f"--reactor: no reactor called {name!r} (known: {names})") from None
    except Exception as exc:  # ImportError, or whatever the reactor's own install() raises
        raise RunUsageError(f"--reactor: {name!r} is not available here: {exc}") from None


@contextmanager
def program_environment(argv: list[str], path_entry: str | None) -> Iterator[None]:
    """``sys.argv`` and ``sys.path[0]`` as ``python`` would give the program; restored after."""
    saved_argv = sys.argv[:]
    saved_path = sys.path[:]
    sys.argv[:] = argv
    if path_entry is not None:
        sys.path.insert(0, path_entry)
    try:
        yield
    finally:
        sys.argv[:] = saved_argv
        sys.path[:] = saved_path


def execute(options: RunOptions) -> None:
    """Run the program's code in this process, as ``__main__``. Its exceptions and
    ``SystemExit`` propagate."""
    if options.module is not None:
        # ``python -m`` puts the current directory first on sys.path; run_module's
        # alter_sys sets sys.argv[0] to the module's file, as ``python -m`` does.
        with program_environment(["-m", *options.args], os.getcwd()):
            runpy.run_module(options.module, run_name="__main__", alter_sys=True)
        return
    script = str(options.script)
    is_plain_file = os.path.isfile(script) and not _is_zip(script)
    # ``python script.py`` puts the script's directory first; run_path adds a directory or
    # zip file itself.
    entry = os.path.dirname(os.path.realpath(script)) if is_plain_file else None
    with program_environment([script, *options.args], entry):
        runpy.run_path(script, run_name="__main__")


def run(options: RunOptions) -> int:
    """Install the reactor and the monitor, serve the dashboard, run the program.

    Returns the exit status (0 when the program returns normally, 1 after an uncaught
    exception, whose traceback is printed from the program's first frame); the program's
    ``SystemExit`` propagates unchanged. A program that installs its own reactor gets it, or
    is told in one line which ``--reactor`` to pass (:mod:`dashboard.reactor_choice`). The
    monitor stops at reactor shutdown, or when the program ends without running the reactor.
    """
    if options.script is not None:
        check_script(options.script)
    # Taken out of the environment before the program runs: its subprocesses must not
    # inherit a token (only this process's own startup record, /proc/<pid>/environ, keeps it).
    variables = take_token_variables()
    try:
        access = access_options(options.token, options.metrics_token, variables)
    except ValueError as exc:
        raise RunUsageError(str(exc)) from None
    claimed = program_package(options.module)
    if claimed is not None:
        access["user_paths"] = (claimed,)
    if options.record is not None:
        access["record"] = options.record
    if options.handlers is not None:
        access["handlers"] = options.handlers
    reactor = install_reactor(options.reactor_name)
    attachment = Attachment(access)
    attachment.start(reactor)  # a file --record cannot use: RunUsageError, one line
    choice = ReactorChoice(attachment, may_follow=options.reactor_name is None)
    try:
        if options.module is not None:
            check_module(options.module)
        port = attachment.serve(options.port)
        choice.install()
        reactor_kind = type(reactor).__name__
        print(
            f"reactor-dashboard: dashboard on http://127.0.0.1:{port}/"
            f" ({reactor_kind}; running {options.target})",
            file=sys.stderr,
            flush=True,
        )
        if "token" in access:
            print(
                f"reactor-dashboard: a token is required: open"
                f" http://127.0.0.1:{port}/?token=<the token> once",
                file=sys.stderr,
                flush=True,
            )
        try:
            execute(options)
        except Exception as exc:
            return report_program_failure(exc, attachment.reactor, choice.refused)
        return 0
    finally:
        choice.uninstall()
        attachment.stop()  # already done at reactor shutdown, unless the reactor never ran


def report_program_failure(exc: Exception, reactor: Any, refused: str | None = None) -> int:
    """Print an uncaught exception of the program as ``python`` would (without this
    wrapper's frames) and return the status ``python`` exits with. A failed reactor install
    is one line (``refused``, already printed, when the choice refused it)."""
    from twisted.internet.error import ReactorAlreadyInstalledError

    if isinstance(exc, ReactorAlreadyInstalledError):
        if refused is not None:
            return 2
        print(
            f"{PROG}: the program installs its own reactor, but {type(reactor).__name__} was"
            " installed before it ran: give the reactor to reactor-dashboard instead"
            " (run --reactor NAME ...) and drop the program's own choice",
            file=sys.stderr,
        )
        return 2
    traceback.print_exception(type(exc), exc, _program_frames(exc.__traceback__))
    return 1


def _program_frames(tb: TracebackType | None) -> TracebackType | None:
    """``tb`` without the leading frames of this module and :mod:`runpy`."""
    ours = {os.path.realpath(__file__), os.path.realpath(runpy.__file__), "<frozen runpy>"}
    while tb is not None and _frame_file(tb) in ours:
        tb = tb.tb_next
    return tb


def _frame_file(tb: TracebackType) -> str:
    name = tb.tb_frame.f_code.co_filename
    return name if name.startswith("<") else os.path.realpath(name)


def _is_zip(path: str) -> bool:
    with open(path, "rb") as file:
        return file.read(4) == b"PK\x03\x04"


def main(argv: Sequence[str]) -> int:
    """``reactor-dashboard run ARGS``: the exit status; bad usage prints one line, status 2."""
    try:
        options = parse_run_args(argv)
        if options is None:
            print(USAGE, end="")
            return 0
        return run(options)
    except RunUsageError as exc:
        pointer = f" (see {PROG} --help)" if exc.show_help else ""
        print(f"{PROG}: {exc}{pointer}", file=sys.stderr)
        return 2
