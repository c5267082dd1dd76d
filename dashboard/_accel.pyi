"""Types of the optional compiled hot path of the Deferred probe (``dashboard/_accel.c``)."""

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
    def __init__(
        self,
        *,
        nursery: dict[Any, Any],
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
    ) -> None: ...
    def hook(self, kind: str) -> Hook: ...

ABI: int

def dict_materialized(obj: object) -> bool | None: ...
