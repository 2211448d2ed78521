"""One keyed cache for the explorer's derived outputs, and object identity in its keys."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

_CACHE_SIZE = 6


class Ref:
    """An object in a cache key, by identity. The key holds the object, so while the key is cached
    the object cannot be freed and its ``id`` handed to another (a bare ``id()`` could be)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ref) and other.obj is self.obj


class KeyedCache:
    """Computed values by (output, key): a small LRU per output, counting the computations."""

    def __init__(self, size: int = _CACHE_SIZE):
        self.size = size
        self.values: dict[str, OrderedDict[Hashable, Any]] = {}
        self.computed: dict[str, int] = {}

    def get(self, output: str, key: Hashable, compute: Callable[[], Any]) -> Any:
        values = self.values.setdefault(output, OrderedDict())
        if key in values:
            values.move_to_end(key)
            return values[key]
        value = compute()
        self.computed[output] = self.computed.get(output, 0) + 1
        values[key] = value
        while len(values) > self.size:
            values.popitem(last=False)
        return value
