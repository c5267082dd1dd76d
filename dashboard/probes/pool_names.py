"""Names a user recognises for the pools the pools probe finds.

- :func:`creation_site`: the code that made a pool, ``"path.py:LINE in function"``: the first
  frame outside Twisted, treq and klein (they make pools on their callers' behalf: treq's
  default pool is made inside ``treq/api.py``), and outside this package.
- :func:`database_of`: an ``adbapi.ConnectionPool``'s database and host, read from the
  arguments it was made with (``database``/``db``/``dbname``/``host`` keywords, a DSN string,
  a URL, or a first positional path). Only those keys are ever read: a password in a DSN or
  URL is never copied.
- :func:`host_label`: an ``HTTPConnectionPool`` key as ``scheme://host:port``. Keys carry more
  than the destination (Scrapy appends its proxy configuration, *including the proxy's
  Proxy-Authorization header*): only scheme, host and port (and a proxy's host and port)
  are ever shown, never a repr of the key.

Any thread may call them; none raises on odd input. They keep no state but
:func:`creation_site`'s two bounded memories (plain dicts: each operation holds the GIL).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from types import CodeType, FrameType
from typing import Any
from urllib.parse import urlsplit

from dashboard.probes.base import frame_site

#: Frames walked at most, looking for the code that made a pool.
MAX_FRAMES = 60
#: Characters kept of a database name or host.
MAX_NAME_CHARS = 160

_DATABASE_KEYS = ("database", "db", "dbname")
_DSN_DATABASE_KEYS = frozenset(_DATABASE_KEYS)


def package_dirs(names: Iterable[str]) -> tuple[str, ...]:
    """The directories (with a trailing separator) of the installed packages ``names``,
    found without importing them; packages not installed are left out."""
    dirs: list[str] = []
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        for location in (spec and spec.submodule_search_locations) or ():
            dirs.append(os.path.join(os.path.realpath(location), ""))
            dirs.append(os.path.join(location, ""))
    return tuple(dict.fromkeys(dirs))


#: Code that makes pools for its callers: a pool made there is named after its caller.
LIBRARY_DIRS = package_dirs(("twisted", "treq", "klein", "dashboard"))
_DEMO = os.path.join("dashboard", "demo.py")


#: Source files remembered by :func:`creation_site` (then it starts over).
MAX_FILES_REMEMBERED = 4096


def _is_library(filename: str, library_dirs: Sequence[str]) -> bool:
    if filename.endswith(_DEMO):
        return False  # the demo is a program like any other
    return filename.startswith(tuple(library_dirs))


def _file_kind(filename: str, library_dirs: Sequence[str]) -> str | None:
    """None for the program's own file; for a library file the package that makes pools for
    its callers (``"klein"``, ``"treq"``) or ``""``."""
    if not _is_library(filename, library_dirs):
        return None
    for package in ("klein", "treq"):
        if f"{os.sep}{package}{os.sep}" in filename:
            return package
    return ""


#: filename -> :func:`_file_kind` under :data:`LIBRARY_DIRS`.
_KIND_OF_FILE: dict[str, str | None] = {}
#: (id(code), instruction) -> (code, label) of the call sites that made pools. The code is
#: kept to check the id against (an id is reused once its code is gone).
_LABEL_AT: dict[tuple[int, int], tuple[CodeType, str]] = {}


def creation_site(
    frame: FrameType | None, library_dirs: Sequence[str] = LIBRARY_DIRS
) -> tuple[str | None, str | None]:
    """``(site, via)`` for a pool being made, ``frame`` being the caller of its ``__init__``.

    ``site`` is the first frame outside ``library_dirs`` (the innermost frame when the whole
    stack is library code; None without a frame); ``via`` is ``"treq"`` or ``"klein"`` when
    that package made the pool on the caller's behalf, else None. Costs one dict look-up per
    frame and one for the label (about 0.5 us in all two frames deep): what each source file
    is (for the default ``library_dirs``) and the label of each call site are remembered, up
    to :data:`MAX_FILES_REMEMBERED` of each (then that memory starts over).
    """
    kinds = _KIND_OF_FILE if library_dirs is LIBRARY_DIRS else {}
    innermost = frame
    via: str | None = None
    for _ in range(MAX_FRAMES):
        if frame is None:
            break
        filename = frame.f_code.co_filename
        try:
            kind = kinds[filename]
        except KeyError:
            kind = _file_kind(filename, library_dirs)
            if len(kinds) >= MAX_FILES_REMEMBERED:
                kinds.clear()
            kinds[filename] = kind
        if kind is None:
            return _maker_label(frame), via
        if via is None and kind:
            via = kind
        frame = frame.f_back
    return (_site_label(innermost) if innermost is not None else None), None


def _maker_label(frame: FrameType) -> str:
    """The site that made the pool; when it is a class's ``__init__`` (a client class that
    makes its own pool, as Synapse's ``SimpleHttpClient`` does for each of its seven users),
    followed by who made that object: ``"client.py:835 in SimpleHttpClient.__init__ (from
    server.py:771 in HomeServer.get_simple_http_client)"``."""
    label = _site_label(frame)
    outer = frame.f_back
    if frame.f_code.co_name == "__init__" and outer is not None:
        label = f"{label} (from {_site_label(outer)})"
    return label


def _site_label(frame: FrameType) -> str:
    """:func:`_label`, remembered by call site (``frame.f_lineno`` alone costs about 0.3 us:
    CPython finds the line by scanning the code's line table)."""
    code = frame.f_code
    key = (id(code), frame.f_lasti)
    known = _LABEL_AT.get(key)
    if known is not None and known[0] is code:
        return known[1]
    label = _label(frame)
    if len(_LABEL_AT) >= MAX_FILES_REMEMBERED:
        _LABEL_AT.clear()
    _LABEL_AT[key] = (code, label)
    return label


def _label(frame: FrameType) -> str:
    code = frame.f_code
    return frame_site(code.co_filename, frame.f_lineno, getattr(code, "co_qualname", code.co_name))


def caller_frame(depth: int) -> FrameType | None:
    """``sys._getframe(depth + 1)``, or None when the stack is shallower."""
    try:
        return sys._getframe(depth + 1)
    except ValueError:
        return None


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
    if isinstance(value, str) and value:
        return value[:MAX_NAME_CHARS]
    return None


def _from_dsn(dsn: str) -> tuple[str | None, str | None]:
    """``"dbname=app host=db password=x"`` -> ``("app", "db")``; reads no other key."""
    database = host = None
    for part in dsn.split():
        key, sep, value = part.partition("=")
        if not sep:
            continue
        value = value.strip("'\"")
        if key in _DSN_DATABASE_KEYS and database is None:
            database = _text(value)
        elif key == "host" and host is None:
            host = _text(value)
    return database, host


def _from_url(url: str) -> tuple[str | None, str | None]:
    """``"postgresql://user:pw@db:5432/app"`` -> ``("app", "db:5432")``; never the user info."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        if host and parts.port:
            host = f"{host}:{parts.port}"
    except ValueError:
        return None, None
    return _text(parts.path.lstrip("/")), _text(host)


def database_of(connargs: object, connkw: object) -> tuple[str | None, str | None]:
    """``(database, host)`` of an adbapi pool from its ``connargs`` and ``connkw``; either may
    be None. Keywords first, then the first positional argument (a DSN, a URL or a path)."""
    database = host = None
    if isinstance(connkw, Mapping):
        for key in _DATABASE_KEYS:
            database = database or _text(connkw.get(key))
        host = _text(connkw.get("host"))
        dsn = _text(connkw.get("dsn"))
        if dsn is not None and database is None:
            database, dsn_host = _from_url(dsn) if "://" in dsn else _from_dsn(dsn)
            host = host or dsn_host
    if database is None and isinstance(connargs, tuple | list) and connargs:
        first = _text(connargs[0])
        if first is not None:
            if "://" in first:
                database, url_host = _from_url(first)
                host = host or url_host
            elif "=" in first:
                database, dsn_host = _from_dsn(first)
                host = host or dsn_host
            else:
                database = first  # sqlite3's path, or a bare database name
    return database, host


def adbapi_name(driver: str, database: str | None, host: str | None) -> str:
    """``"sqlite3 /tmp/app.db"``, ``"psycopg2 app@db"``, or the driver alone."""
    if database is None:
        return driver if host is None else f"{driver} @{host}"
    return f"{driver} {database}" if host is None else f"{driver} {database}@{host}"


def _hostish(value: object) -> str | None:
    text = _text(value)
    if text is None:
        return None
    return text if all(c.isalnum() or c in ".-_:[]%" for c in text) else None


def host_label(key: object) -> str:
    """An ``HTTPConnectionPool`` key as ``"http://host:port"`` (plus ``" via proxy h:p"``
    when a proxy's host and port follow). Reads only those parts of the key."""
    if isinstance(key, tuple) and len(key) >= 3:
        scheme, host, port = _hostish(key[0]), _hostish(key[1]), key[2]
        if scheme and host and isinstance(port, int) and not isinstance(port, bool):
            label = f"{scheme}://{host}:{port}"
            rest = key[3:]
            if len(rest) >= 2 and isinstance(rest[1], int) and not isinstance(rest[1], bool):
                proxy = _hostish(rest[0])
                if proxy:
                    label += f" via proxy {proxy}:{rest[1]}"
            return label
    if isinstance(key, tuple) and len(key) == 2 and _hostish(key[0]):
        # Twisted's ProxyAgent: ("http-proxy", endpoint)
        endpoint = key[1]
        proxy_host: Any = getattr(endpoint, "_host", None)
        proxy_port: Any = getattr(endpoint, "_port", None)
        if _hostish(proxy_host) and isinstance(proxy_port, int):
            return f"{_hostish(key[0])} {_hostish(proxy_host)}:{proxy_port}"
        return f"{_hostish(key[0])} ({type(endpoint).__name__})"
    return f"<{type(key).__name__} key>"
