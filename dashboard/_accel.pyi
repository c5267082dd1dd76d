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
