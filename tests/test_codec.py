"""A stream's codec (`rayflow/_runtime/codec.py`): the JSON text a chunk is
stored as. Strings skip pydantic on the way in (the per-token path of a
streaming run); the text must be exactly what pydantic makes."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter

from rayflow._runtime.codec import Codec
from rayflow.errors import ValidationError

STRINGS = ["plain", "", "ünïcødé 😀 中文", 'a "quote"', "back\\slash", "tab\t", "nl\n", "nul\x00"]


@pytest.mark.parametrize("type_", [str, Any], ids=["str", "Any"])
def test_strings_are_stored_as_the_json_text_pydantic_makes(type_: Any) -> None:
    codec: Codec[Any] = Codec("k", type_)
    expected = [TypeAdapter(type_).dump_json(v).decode() for v in STRINGS]
    assert [codec.encode(v) for v in STRINGS] == expected
    assert codec.encode_many(STRINGS) == expected
    assert [codec.decode(text) for text in expected] == STRINGS


def test_a_str_stream_still_refuses_what_is_not_a_string() -> None:
    codec: Codec[str] = Codec("k", str)
    with pytest.raises(ValidationError):
        codec.encode(3)
    # read back: only a JSON string is one (an outside writer may store any JSON)
    for text in ["3", '"un"closed"', '"raw\x01"', "null"]:
        with pytest.raises(Exception):  # noqa: B017, PT011  (pydantic's own error, as before)
            codec.decode(text)
    untyped: Codec[Any] = Codec("k", Any)
    assert [untyped.decode(t) for t in ["3", "null", '{"a": "b"}', '"x"']] == [
        3,
        None,
        {"a": "b"},
        "x",
    ]
