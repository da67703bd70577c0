"""The base of HTTP body models: snake_case in Python, camelCase on the wire.

The OpenAPI document and every response use the camelCase names (Trigger.dev's
wire format); Python code builds and reads the models by their field names.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class WireModel(BaseModel):
    """A response body whose wire names are its field names in camelCase."""

    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, serialize_by_alias=True
    )


class WireRequest(BaseModel):
    """A request body: accepted by its camelCase names only, as on the wire."""

    model_config = ConfigDict(alias_generator=to_camel)
