"""Types of the optional compiled hot paths of the Deferred and loop probes
(``dashboard/_accel.c``)."""

import types
from collections.abc import Callable
from typing import Any

class SiteCounts:
    created: int
    fired: int
    lost: int

class Hook:
    def __get__(self, obj: object, owner: type | None = None) -> Any: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

class Tracker:
    born_fired: int
    entries: int
    young: int
    def __init__(
        self,
        *,
        new_site: Callable[[types.CodeType, int], SiteCounts],
        other: SiteCounts,
        on_error: Callable[[BaseException], object],
        sweep: Callable[[], object],
        promoted_fired: Callable[[Any], object],
        original_init: Callable[..., object],
        original_start: Callable[..., object],
        succeed_code: types.CodeType,
        transparent: tuple[types.CodeType, ...],
        nursery_limit: int,
        inline_init: bool,
        max_entries: int,
        generator_code: types.CodeType | None,
        run_callbacks_code: types.CodeType | None,
    ) -> None: ...
    def hook(self, kind: str) -> Hook: ...
    def first_fire(self, deferred: object, /) -> None: ...
    def young_items(self) -> list[tuple[Any, Any]]: ...
    def settle(self, deferred: object, ref: object, /) -> bool: ...
    def site_of(self, deferred: object, /) -> Any: ...
    def resite(self, deferred: object, site: SiteCounts, /) -> Any: ...
    def clear_nursery(self) -> None: ...

ABI: int

def dict_materialized(obj: object) -> bool | None: ...

class Pulse:
    tick: float
    spans: int
    idle_s: float
    busy_max_s: float
    captured: tuple[float, list[str]] | None
    @property
    def generation(self) -> int: ...
    def wait_busy(
        self, threshold_s: float, looked: float, min_sleep_s: float, generation: int, /
    ) -> float | None: ...
    def interrupt(self) -> None: ...

class TimedWait:
    __wrapped__: Callable[..., Any]
    def __init__(
        self,
        *,
        wait: Callable[..., Any],
        clock: Callable[[], float],
        pulse: Pulse,
        reactor: Any,
        has_heap: bool,
        lag: Any,
        threshold_s: float,
        end_block: Callable[[float], object],
        record_error: Callable[[BaseException], object],
    ) -> None: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

class IOHook:
    def __init__(
        self,
        *,
        kind: str,
        original: Callable[..., Any],
        entries: dict[int, Any],
        clock: Callable[[], float],
        record_error: Callable[[BaseException], object],
    ) -> None: ...
    def __get__(self, obj: object, owner: type | None = None) -> Any: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

class HandlerEntry:
    """One handler's counters; reads and writes like the Python path's list
    ``[calls, busy_s, interval_max_s, max_s, counts, name, own]``."""
    def __init__(self, name: str, own: bool, buckets: int) -> None: ...
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> Any: ...
    def __setitem__(self, index: int, value: float) -> None: ...

class TimedIO:
    __wrapped__: Callable[..., Any]
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

class HandlerTimer:
    def __init__(
        self,
        *,
        clock: Callable[[], float] | None,
        name_call: Callable[[Any], tuple[Any, bool]],
        io_caches: tuple[dict[type, Any], dict[type, Any], dict[type, Any]],
        name_io: Callable[[Any, Any, int], Any],
        record_error: Callable[[BaseException], object],
        looping_call: type,
        channel_proxy: type,
        bounds: tuple[float, ...],
    ) -> None: ...
    def call(self, f: Callable[..., Any], args: Any, kwargs: Any, /) -> Any: ...
    def clear_cache(self) -> None: ...
    def io_hook(
        self,
        flavour: str,
        real: Callable[..., Any],
        *,
        poll_in: int = 0,
        poll_disconnected: int = 0,
    ) -> TimedIO: ...
    def io_flavour(self, flavour: str, *, poll_in: int = 0, poll_disconnected: int = 0) -> None: ...
    def io_start(self, selectable: Any, /) -> None: ...
    def io_done(self, kind_arg: Any, why: Any, /) -> None: ...
