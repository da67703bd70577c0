"""pydantic TypeAdapters, built once per type and process.

Building one costs ~0.1–1 ms; a recycled RunActor unpickles every run's
task (and its stream handles) afresh, and a replay revalidates each step's
result, so the same types come back again and again. The cache is bounded:
a class pickled by value is a new object for every run that loads it.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import TypeAdapter


@functools.lru_cache(maxsize=256)
def _cached(type_: Any) -> TypeAdapter[Any]:
    return TypeAdapter(type_)


def adapter_for(type_: Any) -> TypeAdapter[Any]:
    """The TypeAdapter of `type_` (shared; TypeAdapters are immutable)."""
    try:
        return _cached(type_)
    except TypeError:  # an unhashable type expression
        return TypeAdapter(type_)
