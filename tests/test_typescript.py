"""rayflow.typescript: stream types as TypeScript and JSON Schema (the browser
test compiles the generated module with tsc against a real React page)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, TypeAdapter

from rayflow import typescript


class Part(BaseModel):
    kind: Literal["text", "tool"]
    text: str | None = None
    scores: list[float] = []
    extra: dict[str, int] = {}


def test_a_model_becomes_a_typescript_object_type() -> None:
    schema = TypeAdapter(Part).json_schema()
    streams = typescript.collect({"t": {"outputs": {"ai-output": schema}, "inputs": {}}})
    ts = typescript.typescript(streams)
    assert 'export type AiOutput = { "kind": "text" | "tool"; "text"?: (string) | (null);' in ts
    assert '"scores"?: Array<number>; "extra"?: { [key: string]: number } };' in ts
    assert 'export const outputStreams = ["ai-output"] as const;' in ts


def test_names_are_typescript_identifiers_and_shared_ids_are_kept_apart() -> None:
    assert typescript.type_name("ai-output") == "AiOutput"
    assert typescript.type_name("2fa code") == "S2faCode"
    streams = typescript.collect(
        {"t": {"outputs": {"x": {"type": "string"}}, "inputs": {"x": {"type": "integer"}}}}
    )
    ts = typescript.typescript(streams)
    assert "export type X = string;" in ts and "export type XInput = number;" in ts
    assert typescript.json_schemas(streams)["inputStreams"] == {"x": {"type": "integer"}}
