"""A stream's codec: validates chunks against the stream's type and turns
them into JSON text, once, where they are written; str and untyped streams
skip pydantic when nothing in the string needs escaping, both ways."""

from __future__ import annotations

import re
from typing import Any, Generic, TypeVar

from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from rayflow._runtime.adapters import adapter_for
from rayflow.errors import ValidationError

T = TypeVar("T")


#: characters a JSON string cannot hold as they are (and lone surrogates)
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f\ud800-\udfff]')


class Codec(Generic[T]):
    """Validates chunks against the stream's type and turns them to JSON."""

    def __init__(self, key: str, type_: Any) -> None:
        self.key, self.type = key, type_
        self.adapter: TypeAdapter[Any] = adapter_for(type_)
        #: str and untyped streams take strings without pydantic when nothing
        #: in them needs escaping (same JSON text, a fraction of the cost)
        self._strings = type_ is str or type_ is Any
        self._list_adapter: TypeAdapter[list[Any]] | None = None

    def encode_many(self, values: list[Any]) -> list[str]:
        """`encode` for a batch: plain strings directly, the rest validated
        as one list by pydantic. Raises ValidationError naming the first bad one."""
        if self._strings:
            out: list[str] = []
            for v in values:
                if type(v) is str and _NEEDS_ESCAPE.search(v) is None:
                    out.append('"' + v + '"')
                else:
                    out.append(self.encode(v))
            return out
        if self.type is Any:
            return [self.encode(v) for v in values]
        if self._list_adapter is None:
            self._list_adapter = adapter_for(list[self.type])  # type: ignore[name-defined]
        try:
            typed = self._list_adapter.validate_python(values)
        except PydanticValidationError as e:
            raise self._invalid(e) from None
        return [self.adapter.dump_json(t).decode() for t in typed]

    def encode(self, value: Any) -> str:
        if self._strings and type(value) is str and _NEEDS_ESCAPE.search(value) is None:
            return '"' + value + '"'  # what pydantic makes of it (`encode_many`)
        try:
            typed = self.adapter.validate_python(value)
        except PydanticValidationError as e:
            raise self._invalid(e) from None
        return self.adapter.dump_json(typed).decode()

    def _invalid(self, e: PydanticValidationError) -> ValidationError:
        return ValidationError(
            f"chunk for stream {self.key!r} is not a valid {type_name(self.type)}: {e}",
            stream=self.key,
        )

    def decode(self, data: str) -> T:
        if self._strings and len(data) > 1 and data[0] == '"' and data[-1] == '"':
            inner = data[1:-1]
            if _NEEDS_ESCAPE.search(inner) is None:
                # a JSON string with nothing escaped is its text (`encode`'s inverse)
                return inner  # type: ignore[return-value]
        value: T = self.adapter.validate_json(data)
        return value


def type_name(type_: Any) -> str:
    return getattr(type_, "__name__", None) or repr(type_)
