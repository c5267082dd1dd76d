"""Users' own pools: what a pool shows to be listed (:class:`TrackablePool`) and the pools
registered by name.

They are held *strongly* until :meth:`UserPools.untrack`: the user named them on purpose,
and a weak reference would silently lose an adapter object created inline
(``track(PoolStats(db), "db")``). Reactor thread only.
"""

from __future__ import annotations

import inspect
from math import isfinite
from typing import Protocol

from dashboard.probes.base import JSONDict, ProbeErrors, safe_repr

#: Users' pools that may be tracked at once.
MAX_USER_POOLS = 100
_USER_FIELDS = ("max", "in_use", "idle", "waiting")


class TrackablePool(Protocol):
    """What a user's own pool shows to be listed with kind ``user``.

    Four read-only figures, as plain attributes or properties, read on the reactor thread
    each time a snapshot is taken (so keep them cheap):

    - ``max``: the most resources the pool will hand out at once, ``None`` if unbounded;
    - ``in_use``: handed out now;
    - ``idle``: ready and not handed out;
    - ``waiting``: callers queued for one.

    A Protocol of attributes rather than a callable returning a dict: mypy checks it at the
    ``track()`` call, a pool class can satisfy it directly, and there are no key names to
    misspell. Numbers must be ints (finite floats are truncated).
    """

    @property
    def max(self) -> int | None: ...

    @property
    def in_use(self) -> int: ...

    @property
    def idle(self) -> int: ...

    @property
    def waiting(self) -> int: ...


def _has_attribute(obj: object, field: str) -> bool:
    """Whether ``obj.field`` exists, without running a property when it can be helped."""
    try:
        inspect.getattr_static(obj, field)
        return True
    except AttributeError:
        pass
    try:
        return hasattr(obj, field)  # a __getattr__ proxy
    except Exception:
        return True  # there, but it raised: a failure collect() will show


def _user_number(value: object, field: str) -> int | None:
    if value is None and field == "max":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and isfinite(value):
        return int(value)
    raise TypeError(f"{field} must be an int, got {type(value).__name__}")


class UserPools:
    """The users' pools, by name, listed with kind ``user``."""

    def __init__(self) -> None:
        self._pools: dict[str, TrackablePool] = {}
        self._failed: set[str] = set()

    def track(self, pool: TrackablePool, name: str) -> None:
        """List ``pool`` under ``name`` (kind ``user``) until :meth:`untrack`; held strongly."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a tracked pool needs a non-empty str name, got {name!r}")
        if name in self._pools:
            raise ValueError(
                f"a pool named {name!r} is already tracked; untrack({name!r}) first "
                "or choose another name"
            )
        missing = [field for field in _USER_FIELDS if not _has_attribute(pool, field)]
        if missing:
            raise TypeError(
                f"{safe_repr(pool)} is not a TrackablePool: missing {', '.join(missing)}"
            )
        if len(self._pools) >= MAX_USER_POOLS:
            raise ValueError(f"at most {MAX_USER_POOLS} pools can be tracked")
        self._pools[name] = pool

    def untrack(self, name: str) -> None:
        """Stop listing the user's pool ``name``. ``KeyError`` if no pool has that name."""
        try:
            del self._pools[name]
        except KeyError:
            raise KeyError(f"no tracked pool is named {name!r}") from None
        self._failed.discard(name)

    def entries(self, errors: ProbeErrors, probe: str) -> list[JSONDict]:
        """Each pool's figures, read now; a pool whose figures fail is shown with its error
        and counted in ``errors`` once."""
        return [self._entry(name, pool, errors, probe) for name, pool in list(self._pools.items())]

    def _entry(self, name: str, pool: TrackablePool, errors: ProbeErrors, probe: str) -> JSONDict:
        entry: JSONDict = {"name": name, "kind": "user"}
        try:
            for field in _USER_FIELDS:
                entry[field] = _user_number(getattr(pool, field), field)
        except Exception as exc:
            # The user's code failed, not ours: shown on the entry, counted once per pool.
            entry.update(dict.fromkeys(_USER_FIELDS), error=f"{type(exc).__name__}: {exc}"[:300])
            if name not in self._failed:
                self._failed.add(name)
                errors.record(probe, exc)
        return entry
