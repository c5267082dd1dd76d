"""The recording file: SQLite (standard library), one file in WAL mode.

Schema (format 1)::

    meta(key TEXT PRIMARY KEY, value TEXT)        -- "app" = "reactor-dashboard",
                                                  -- "format" = "1"
    samples(id INTEGER PRIMARY KEY,               -- insertion order
            time REAL, seq INTEGER,               -- the sample's own time and seq
            size INTEGER,                         -- bytes of the JSON before compression
            body BLOB)                            -- the sample's JSON, zlib-compressed
    index samples_time(time, seq), samples_seq(seq)   -- time: covering, so a damaged
                                                      -- sample page spoils only its row

Samples are stored as the monitor encoded them (``Sample.encoded``), compressed with zlib
level 1 (a 50 KB sample of 200 pending sites: 0.044 ms on the writer thread, 21x smaller;
level 3 0.21 ms and 21.5x, level 6 0.40 ms and 23x). zstandard might compress a little better
and faster, but it is not a dependency today and zlib's cost is off the reactor thread (with
the GIL released): it has not earned its place.

WAL with ``synchronous=NORMAL``: a commit is in the WAL file (the OS holds it) when it
returns, so a crash or ``kill -9`` of the process loses only what was not committed yet (the
writer commits what arrived every 0.2 s), never the file; a power cut may lose the last
commits.
Readers (replay, export) open the same file while a writer still writes into it. They open
it read-only and write nothing (no PRAGMA); in a folder they cannot write (no ``-shm`` file
possible) they read it ``immutable``: as it is at that moment, not following a writer.
A new file is created 0600 (owner only): samples hold stacks, URLs and names.

Bad files are refused with :class:`RecordingError`, one line naming the problem: missing,
empty or truncated, not SQLite, SQLite without this schema, or a newer format. A sample whose
bytes do not decompress or decode (a damaged page) is skipped and counted in
``RecordingStore.corrupt_total``; the others are still read.
"""

from __future__ import annotations

import json
import os
import sqlite3
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

#: The format this code writes and the newest it reads.
FORMAT_VERSION = 1
APP_NAME = "reactor-dashboard"
ZLIB_LEVEL = 1
_SQLITE_MAGIC = b"SQLite format 3\x00"
_HEADER_BYTES = 100
#: bodies fetched per query when reading a range (a damaged chunk is re-read one by one)
_CHUNK = 64

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS samples (id INTEGER PRIMARY KEY, time REAL NOT NULL,"
    " seq INTEGER NOT NULL, size INTEGER NOT NULL, body BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS samples_time ON samples (time, seq)",
    "CREATE INDEX IF NOT EXISTS samples_seq ON samples (seq)",
)


class RecordingError(Exception):
    """A recording file that cannot be used; ``str()`` is one line for the user."""


@attrs.frozen
class StoredSample:
    """One sample read back: its place in the file, time, seq and JSON bytes."""

    id: int
    time: float
    seq: int
    encoded: bytes

    @property
    def data(self) -> Any:
        return json.loads(self.encoded)


def compress(encoded: bytes) -> bytes:
    return zlib.compress(encoded, ZLIB_LEVEL)


def check_header(path: Path) -> None:
    """Refuse, from its first bytes and size, a file that is missing, empty, not SQLite or
    shorter than its header says (truncated)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            header = file.read(_HEADER_BYTES)
    except FileNotFoundError:
        raise RecordingError(f"no such recording: {path}") from None
    except IsADirectoryError:
        raise RecordingError(f"{path} is a directory, not a recording") from None
    except OSError as exc:
        raise RecordingError(f"cannot read {path}: {exc.strerror or exc}") from None
    if size == 0:
        raise RecordingError(f"{path} is empty (not a recording, or truncated to nothing)")
    if not header.startswith(_SQLITE_MAGIC[:15]):
        raise RecordingError(f"{path} is not a recording (not an SQLite file)")
    if len(header) < _HEADER_BYTES:
        raise RecordingError(f"{path} is truncated ({size} bytes, shorter than its header)")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    page_count = int.from_bytes(header[28:32], "big")
    # The in-header page count is valid when the "version-valid-for" number matches the
    # change counter (SQLite >= 3.7.0 files).
    valid = header[24:28] == header[92:96]
    if valid and page_count and size < page_count * page_size:
        raise RecordingError(
            f"{path} is truncated ({size} bytes, its header says {page_count * page_size})"
        )


class RecordingStore:
    """One open recording file. A writer (``create=True``) makes the schema when the file is
    new; a reader refuses anything but a recording of a format it knows.

    The connection may be used by one thread at a time (the writer thread, or the reactor
    thread of a replay); it is opened with ``check_same_thread=False`` so the thread that
    opens it need not be the one that uses it.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False) -> None:
        self.path = Path(path)
        #: samples skipped because their bytes were damaged
        self.corrupt_total = 0
        #: a reader opened with ``immutable=1`` (a folder it cannot write: no ``-shm``):
        #: it reads the file as it was and does not see what a writer adds later
        self.immutable = False
        exists = self.path.exists()
        if exists or not create:
            check_header(self.path)
        if create and not exists:
            _create_private(self.path)
        self.db = self._connect("rwc" if create else "ro")
        try:
            try:
                self._prepare(create=create and not exists, writable=create)
            except sqlite3.OperationalError as exc:
                name = getattr(exc, "sqlite_errorname", "")
                if create or not name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")):
                    raise
                # read-only and no -shm possible (a folder this user cannot write): read the
                # file as it is, without WAL's shared memory
                self.db.close()
                self.db = self._connect("ro", immutable=True)
                self.immutable = True
                self._prepare(create=False, writable=False)
        except RecordingError:
            self.db.close()
            raise
        except sqlite3.Error as exc:  # DatabaseError included ("disk image is malformed")
            self.db.close()
            raise RecordingError(f"{self.path} is not a readable recording: {exc}") from None

    def _connect(self, mode: str, *, immutable: bool = False) -> sqlite3.Connection:
        """A connection in ``mode`` (``rwc`` for the writer, ``ro`` for readers: a reader
        never writes, not even a PRAGMA)."""
        uri = f"file:{_quote(self.path)}?mode={mode}" + ("&immutable=1" if immutable else "")
        try:
            return sqlite3.connect(
                uri, uri=True, check_same_thread=False, isolation_level=None, timeout=5.0
            )
        except sqlite3.Error as exc:
            raise RecordingError(f"cannot open {self.path}: {exc}") from None

    def _prepare(self, *, create: bool, writable: bool) -> None:
        db = self.db
        if create:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("BEGIN")
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('app', ?)", (APP_NAME,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('format', ?)", (str(FORMAT_VERSION),))
            db.execute("COMMIT")
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        if "meta" not in tables or "samples" not in tables:
            raise RecordingError(f"{self.path} is an SQLite file but not a recording")
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("app") != APP_NAME:
            raise RecordingError(f"{self.path} is an SQLite file but not a recording")
        try:
            version = int(meta.get("format", ""))
        except ValueError:
            raise RecordingError(f"{self.path}: unknown recording format") from None
        if version > FORMAT_VERSION:
            raise RecordingError(
                f"{self.path} was recorded in format {version}, newer than this"
                f" reactor-dashboard reads ({FORMAT_VERSION}): upgrade it to replay"
            )
        if writable:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA journal_size_limit=4194304")

    def close(self) -> None:
        self.db.close()

    # writing ------------------------------------------------------------------------------

    def append(self, rows: list[tuple[float, int, int, bytes]]) -> None:
        """Store ``(time, seq, size, compressed body)`` rows in one transaction."""
        db = self.db
        db.execute("BEGIN")
        try:
            db.executemany("INSERT INTO samples (time, seq, size, body) VALUES (?,?,?,?)", rows)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def stored_bytes(self) -> int:
        """Compressed bytes of every sample kept."""
        row = self.db.execute("SELECT COALESCE(SUM(LENGTH(body)), 0) FROM samples").fetchone()
        return int(row[0])

    def drop_before(self, horizon: float) -> int:
        """Delete the samples taken before ``horizon`` (unix seconds); how many went."""
        cursor = self.db.execute("DELETE FROM samples WHERE time < ?", (horizon,))
        return cursor.rowcount

    def drop_oldest(self, nbytes: int) -> int:
        """Delete the oldest samples holding at least ``nbytes`` compressed bytes; the bytes
        freed. Their pages go to SQLite's free list and are reused by the next samples, so
        the file stops growing at about the size limit."""
        freed = 0
        last_id = None
        for row_id, length in self.db.execute("SELECT id, LENGTH(body) FROM samples ORDER BY id"):
            freed += int(length)
            last_id = int(row_id)
            if freed >= nbytes:
                break
        if last_id is not None:
            self.db.execute("DELETE FROM samples WHERE id <= ?", (last_id,))
        return freed

    # reading ------------------------------------------------------------------------------

    def span(self) -> tuple[float, float] | None:
        """(first, last) sample time, or None when the recording holds no sample."""
        row = self.db.execute("SELECT MIN(time), MAX(time) FROM samples").fetchone()
        if row is None or row[0] is None:
            return None
        return float(row[0]), float(row[1])

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def times(self, start: float, end: float, limit: int) -> list[tuple[int, float, int]]:
        """(id, time, seq) of the samples in [start, end], oldest first, at most ``limit``,
        from the time index alone (no sample body is read)."""
        rows = self.db.execute(
            "SELECT id, time, seq FROM samples WHERE time >= ? AND time <= ?"
            " ORDER BY time, id LIMIT ?",
            (start, end, limit),
        ).fetchall()
        return [(int(i), float(t), int(s)) for i, t, s in rows]

    def count_between(self, start: float, end: float) -> int:
        """How many samples were taken in [start, end] (from the time index)."""
        row = self.db.execute(
            "SELECT COUNT(*) FROM samples WHERE time >= ? AND time <= ?", (start, end)
        ).fetchone()
        return int(row[0])

    def every_nth(
        self, start: float, end: float, nth: int, limit: int
    ) -> list[tuple[int, float, int]]:
        """(id, time, seq) of every ``nth`` sample (by id) in [start, end], oldest first, at
        most ``limit``: an even thinning of a long range without listing all of it."""
        rows = self.db.execute(
            "SELECT id, time, seq FROM samples WHERE time >= ? AND time <= ? AND id % ? = 0"
            " ORDER BY time, id LIMIT ?",
            (start, end, nth, limit),
        ).fetchall()
        return [(int(i), float(t), int(s)) for i, t, s in rows]

    def times_after(
        self, start: float, after_id: int, end: float, limit: int
    ) -> list[tuple[int, float, int]]:
        """As :meth:`times` from ``start``, leaving out the samples at ``start`` whose id is
        not above ``after_id``: the next page after the last (time, id) read."""
        rows = self.db.execute(
            "SELECT id, time, seq FROM samples WHERE (time > ? OR (time = ? AND id > ?))"
            " AND time <= ? ORDER BY time, id LIMIT ?",
            (start, start, after_id, end, limit),
        ).fetchall()
        return [(int(i), float(t), int(s)) for i, t, s in rows]

    def at(self, moment: float) -> StoredSample | None:
        """The sample in force at ``moment``: the last one taken at or before it (the first
        one when ``moment`` is before the recording), skipping damaged ones."""
        for sql in (
            "SELECT id, time, seq FROM samples WHERE time <= ? ORDER BY time DESC, id DESC LIMIT 8",
            "SELECT id, time, seq FROM samples WHERE time > ? ORDER BY time, id LIMIT 8",
        ):
            rows = self.db.execute(sql, (moment,)).fetchall()
            for row_id, t, seq in rows:
                found = self._body(int(row_id), float(t), int(seq))
                if found is not None:
                    return found
        return None

    def read(self, refs: list[tuple[int, float, int]]) -> Iterator[StoredSample]:
        """The samples of ``refs`` (from :meth:`times`), damaged ones skipped and counted."""
        for index in range(0, len(refs), _CHUNK):
            chunk = refs[index : index + _CHUNK]
            ids = [ref[0] for ref in chunk]
            try:  # by id: time order need not be id order (two writers, a clock set back)
                rows = self.db.execute(
                    f"SELECT id, body FROM samples WHERE id IN ({','.join('?' * len(ids))})",
                    ids,
                ).fetchall()
            except sqlite3.DatabaseError:  # a damaged page: one by one, to keep the rest
                for row_id, t, seq in chunk:
                    sample = self._body(row_id, t, seq)
                    if sample is not None:
                        yield sample
                continue
            bodies = {int(row_id): body for row_id, body in rows}
            for row_id, t, seq in chunk:
                sample = self._decode(row_id, t, seq, bodies.get(row_id))
                if sample is not None:
                    yield sample

    def _body(self, row_id: int, t: float, seq: int) -> StoredSample | None:
        try:
            row = self.db.execute("SELECT body FROM samples WHERE id = ?", (row_id,)).fetchone()
        except sqlite3.DatabaseError:
            self.corrupt_total += 1
            return None
        return self._decode(row_id, t, seq, None if row is None else row[0])

    def _decode(self, row_id: int, t: float, seq: int, body: Any) -> StoredSample | None:
        """The sample, or None (counted) when its bytes are damaged."""
        if not isinstance(body, bytes):
            self.corrupt_total += 1
            return None
        try:
            encoded = zlib.decompress(body)
            if not encoded.startswith(b"{") or not encoded.endswith(b"}"):
                raise ValueError("not a JSON object")
        except (zlib.error, ValueError):
            self.corrupt_total += 1
            return None
        return StoredSample(row_id, t, seq, encoded)


def _create_private(path: Path) -> None:
    """Create ``path`` empty, readable by its owner only (0600), before SQLite opens it:
    samples hold stacks, URLs and names. SQLite gives its ``-wal`` and ``-shm`` files the
    same mode."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # created meanwhile (another recorder): SQLite opens that one
        return
    except OSError as exc:
        raise RecordingError(f"cannot create {path}: {exc.strerror or exc}") from None
    os.close(descriptor)


def _quote(path: Path) -> str:
    """``path`` for an SQLite ``file:`` URI (``?`` and ``#`` would end the path)."""
    from urllib.parse import quote

    return quote(str(path.absolute()), safe="/")


def open_for_reading(path: str | os.PathLike[str]) -> RecordingStore:
    """The recording at ``path``, checked (see :class:`RecordingError`)."""
    store = RecordingStore(path, create=False)
    try:
        store.count()
    except sqlite3.DatabaseError as exc:
        store.close()
        raise RecordingError(f"{store.path} is damaged: {exc}") from None
    return store


def check_for_recording(path: str | os.PathLike[str]) -> None:
    """Open ``path`` as a recorder would and read every sample's size (a pass over the whole
    file): :class:`RecordingError` for a file it cannot record into, a damaged one included.
    For the command line before the program runs, never on a running reactor."""
    store = RecordingStore(path, create=True)
    try:
        store.stored_bytes()
    except sqlite3.DatabaseError as exc:
        raise RecordingError(f"{store.path} is damaged, record into another file: {exc}") from None
    finally:
        store.close()
