"""Who a blocking stack belongs to: the block's ``where`` and ``owner``.

* ``where``: the innermost frame the *user* owns, ``"path.py:LINE in function"`` (the form of
  every stack entry), so a block inside ``weakref.py`` or a parser library is named by the
  program's line that called it. Library frames, skipped: the standard library (``sysconfig``'s
  ``stdlib``/``platstdlib`` paths and frozen modules), Twisted, the dashboard package (except
  ``dashboard/demo.py``, a program of its own), anything under ``site-packages`` or
  ``dist-packages``, and the caller's ``library_paths``; ``user_paths`` claims code back (your
  own package installed in site-packages). An entry with a ``/`` is a path prefix (a directory
  or a file), any other a module name (``"parsel"`` covers ``parsel.selector``). When no frame
  is the user's, ``where`` is the innermost frame; with no stack, ``None``. A block of the
  dashboard's own work is named by the dashboard's frame that decided its ``owner`` (its
  ``sample`` or ``render_page``), not by the program's outer frame that happened to run it.
* ``owner``: ``"dashboard"`` when the loop was stalled by the dashboard's own work (a page
  render, a snapshot, a sweep), else ``"program"``. Walking outwards from the innermost frame,
  standard-library and framework frames (Twisted, Klein, werkzeug, Jinja templates and jinja2,
  markupsafe) are passed over; the first other frame decides: the dashboard's (``dashboard/``
  but ``demo.py``) or anyone else's. Two kinds of the dashboard's frames never decide: its
  launchers (``cli.py``, ``attach.py``, ``__main__.py``: ``reactor-dashboard run`` is the
  outermost frame of every stack of the program it runs), and a probe's hook through which the
  program's work passes (a frame of ``dashboard/probes/`` with framework frames inside it,
  such as a wrapper of ``runUntilCurrent``); a probe frame with nothing but the standard
  library inside it is the dashboard's own work.

The options never move ``owner``: they say what the user owns, not what the dashboard does.
Judged from real frames, so only when a block's stack is captured (the watchdog thread, a few
times a second at most); each code file is classified once and kept (at most
``CACHE_LIMIT`` entries). Any thread may call; nothing here raises for odd frames.
"""

from __future__ import annotations

import enum
import os
import sysconfig
from collections.abc import Iterable
from types import FrameType

from dashboard.probes.base import DEMO_FILE, OWN_DIR, frame_site

#: Frames looked at from the innermost outwards (recursion can make stacks deep).
MAX_WALK = 1_000
#: Classified (file, module) pairs kept; the table is cleared when it grows past this.
CACHE_LIMIT = 4_096
#: Top-level packages whose frames are the machinery the dashboard and programs both run on.
FRAMEWORK_PACKAGES = ("twisted", "klein", "werkzeug", "jinja2", "markupsafe")

_LAUNCHERS = frozenset(
    os.path.join(OWN_DIR, name) for name in ("cli.py", "attach.py", "__main__.py")
)
_PROBES_DIR = os.path.join(OWN_DIR, "probes") + os.sep
#: code the dashboard generates at run time (the pure-Python wait hook)
_GENERATED = frozenset({"<timed_wait>"})
_SITE_MARKERS = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")


class Role(enum.Enum):
    """What a frame is, for ``owner``."""

    STDLIB = "stdlib"
    FRAMEWORK = "framework"
    DASHBOARD = "dashboard"  # the dashboard's own work: monitor, web, figures
    HOOK = "hook"  # a probe: a hook the program's work may pass through, or a collect
    LAUNCHER = "launcher"  # reactor-dashboard run, around the program
    OTHER = "other"  # the program, its libraries, the demo


def _stdlib_dirs() -> tuple[str, ...]:
    dirs: set[str] = set()
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib"):
        path = paths.get(key)
        if path:
            dirs.update({os.path.abspath(path), os.path.realpath(path)})
    return tuple(sorted(d.rstrip(os.sep) + os.sep for d in dirs))


def path_list(value: str | Iterable[str]) -> tuple[str, ...]:
    """A ``library_paths`` / ``user_paths`` option as a tuple (one string is one entry)."""
    return (value,) if isinstance(value, str) else tuple(value)


def _split(entries: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(path prefixes, module names) of a ``library_paths`` / ``user_paths`` option."""
    paths: list[str] = []
    modules: list[str] = []
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip():
            raise ValueError(f"a path prefix or a module name, got {entry!r}")
        entry = entry.strip()
        if "/" in entry or os.sep in entry:
            paths.append(os.path.abspath(os.path.expanduser(entry)))
        else:
            modules.append(entry)
    return tuple(paths), tuple(modules)


def _under(filename: str, prefixes: tuple[str, ...]) -> bool:
    return any(
        filename == prefix or filename.startswith(prefix.rstrip(os.sep) + os.sep)
        for prefix in prefixes
    )


def _in_modules(module: str, names: tuple[str, ...]) -> bool:
    return any(module == name or module.startswith(name + ".") for name in names)


class StackOwner:
    """Judges captured stacks (see the module docstring). ``library_paths`` and ``user_paths``:
    path prefixes (containing ``/``) or module names."""

    def __init__(self, library_paths: Iterable[str] = (), user_paths: Iterable[str] = ()) -> None:
        self.library_paths, self.library_modules = _split(library_paths)
        self.user_paths, self.user_modules = _split(user_paths)
        self._stdlib = _stdlib_dirs()
        self._cache: dict[tuple[str, str], tuple[Role, bool]] = {}

    def judge(self, frame: FrameType | None) -> tuple[str | None, str]:
        """``(where, owner)`` of the stack whose innermost frame is ``frame``."""
        innermost: FrameType | None = frame
        where: FrameType | None = None
        owner: str | None = None
        inside_framework = False
        walked = 0
        while frame is not None and walked < MAX_WALK and (where is None or owner is None):
            role, library = self.classify(frame)
            if where is None and not library:
                where = frame
            if owner is None:
                if role is Role.FRAMEWORK:
                    inside_framework = True
                elif role is Role.STDLIB or role is Role.LAUNCHER:
                    pass
                elif role is Role.HOOK and inside_framework:
                    pass  # the program's work passing through a probe's hook
                elif role is Role.DASHBOARD or role is Role.HOOK:
                    owner = "dashboard"
                    where = frame  # its own work is named by its own frame, not the caller's
                else:
                    owner = "program"
            frame = frame.f_back
            walked += 1
        shown = where if where is not None else innermost
        site = None
        if shown is not None:
            code = shown.f_code
            site = frame_site(code.co_filename, shown.f_lineno, code.co_name)
        if innermost is None:  # no stack captured (stuck inside the poller's wait itself, a
            return None, "unknown"  # signal handler there, or the process not scheduled)
        return site, owner or "program"

    def classify(self, frame: FrameType) -> tuple[Role, bool]:
        """(its role for ``owner``, whether it is a library frame for ``where``)."""
        f_globals = frame.f_globals
        filename = frame.f_code.co_filename
        if "__jinja_template__" in f_globals:  # a compiled Jinja template
            return Role.FRAMEWORK, True
        module = f_globals.get("__name__")
        key = (filename, module if isinstance(module, str) else "")
        found = self._cache.get(key)
        if found is None:
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            found = self._cache[key] = self._classify(*key)
        return found

    def _classify(self, filename: str, module: str) -> tuple[Role, bool]:
        path = filename if filename.startswith("<") else os.path.abspath(filename)
        role = self._role(path, module)
        if _under(path, self.user_paths) or _in_modules(module, self.user_modules):
            return role, False
        if _under(path, self.library_paths) or _in_modules(module, self.library_modules):
            return role, True
        if path == DEMO_FILE:  # a program, even where the package sits in site-packages
            return role, False
        if role is not Role.OTHER:
            return role, True
        return role, any(marker in path for marker in _SITE_MARKERS)

    def _role(self, path: str, module: str) -> Role:
        if path in _GENERATED:
            return Role.HOOK
        if path.startswith(OWN_DIR + os.sep):
            if path == DEMO_FILE:
                return Role.OTHER
            if path in _LAUNCHERS:
                return Role.LAUNCHER
            return Role.HOOK if path.startswith(_PROBES_DIR) else Role.DASHBOARD
        if _in_modules(module, FRAMEWORK_PACKAGES):
            return Role.FRAMEWORK
        if path.startswith("<frozen "):
            return Role.STDLIB
        if any(marker in path for marker in _SITE_MARKERS):
            return Role.OTHER  # platstdlib may hold site-packages: a library, not the stdlib
        if any(path.startswith(prefix) for prefix in self._stdlib):
            return Role.STDLIB
        return Role.OTHER
