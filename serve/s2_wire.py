"""S2's append wire, as `@s2-dev/streamstore` (the S2 client in
`@trigger.dev/sdk`) sends it: `POST …/streams/{stream}/records` with a JSON
`AppendInput` (string records: `writeControl`) or a protobuf one (any bytes
record: `trimTo`'s trim command), answered with an `AppendAck` in the same
format (docs/wire.md, "Sessions").

Only what a unary append needs is here: `s2.v1.AppendInput` (records = 1,
match_seq_num = 2, fencing_token = 3), `AppendRecord` (timestamp = 1,
headers = 2, body = 3), `Header` (name = 1, value = 2), and the
`AppendAck` (start = 1, end = 2, tail = 3) of `StreamPosition` (seq_num = 1,
timestamp = 2) — field numbers from S2's `s2.proto`.
"""

from __future__ import annotations

import binascii
import json
from base64 import b64decode
from dataclasses import dataclass, field
from typing import Any

from serve.errors import BadRequest

PROTOBUF = "application/protobuf"


@dataclass
class AppendRecord:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""


@dataclass
class AppendInput:
    records: list[AppendRecord]
    match_seq_num: int | None = None
    fencing_token: str | None = None


def parse_json(body: bytes, *, base64: bool = False) -> AppendInput:
    """A JSON `AppendInput`: bodies and headers as text (S2's `raw` format),
    or base64 (`S2-Format: base64`)."""

    def raw(value: Any) -> bytes:
        text = str(value or "")
        return b64decode(text, validate=True) if base64 else text.encode()

    try:
        doc = json.loads(body)
        records = [
            AppendRecord([(raw(n), raw(v)) for n, v in r.get("headers") or []], raw(r.get("body")))
            for r in doc["records"]
        ]
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as e:
        raise BadRequest(f"not an S2 AppendInput: {e}") from None
    return AppendInput(records, doc.get("match_seq_num"), doc.get("fencing_token"))


def parse_protobuf(body: bytes) -> AppendInput:
    """A protobuf `s2.v1.AppendInput`."""
    try:
        found = AppendInput([])
        for number, value in _fields(body):
            if number == 1 and isinstance(value, bytes):
                found.records.append(_record(value))
            elif number == 2 and isinstance(value, int):
                found.match_seq_num = value
            elif number == 3 and isinstance(value, bytes):
                found.fencing_token = value.decode()
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise BadRequest(f"not an S2 AppendInput (protobuf): {e}") from None
    return found


def _record(data: bytes) -> AppendRecord:
    record = AppendRecord()
    for number, value in _fields(data):
        if number == 2 and isinstance(value, bytes):
            header = dict(_fields(value))
            name, val = header.get(1, b""), header.get(2, b"")
            assert isinstance(name, bytes) and isinstance(val, bytes)
            record.headers.append((name, val))
        elif number == 3 and isinstance(value, bytes):
            record.body = value
    return record


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """A message's fields in order: varints as int, length-delimited as bytes."""
    out: list[tuple[int, int | bytes]] = []
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, kind = key >> 3, key & 7
        if kind == 0:
            value, i = _varint(data, i)
            out.append((number, value))
        elif kind == 2:
            size, i = _varint(data, i)
            if i + size > len(data):
                raise ValueError("a field runs past the message")
            out.append((number, data[i : i + size]))
            i += size
        elif kind in (1, 5):  # fixed64 / fixed32: nothing of ours, skipped
            i += 8 if kind == 1 else 4
        else:
            raise ValueError(f"wire type {kind} is not supported")
    return out


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 64 bits")


def ack(start: tuple[int, int], end: tuple[int, int], protobuf: bool) -> bytes | dict[str, Any]:
    """The `AppendAck` for records start..end (seq, timestamp ms); the tail is
    `end` (the next seq)."""
    if not protobuf:
        pos = [{"seq_num": s, "timestamp": t} for s, t in (start, end, end)]
        return {"start": pos[0], "end": pos[1], "tail": pos[2]}
    out = b""
    for number, (seq, ts) in ((1, start), (2, end), (3, end)):
        position = b"\x08" + _encode_varint(seq) + b"\x10" + _encode_varint(ts)
        out += bytes([number << 3 | 2]) + _encode_varint(len(position)) + position
    return out


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)
