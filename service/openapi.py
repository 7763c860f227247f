"""The published contract: JSON Schema in the OpenAPI 3.0 dialect that /docs.json declares.

BentoML (1.4.39) publishes an OpenAPI 3.0.2 document built from the pydantic models'
``model_json_schema()``, but pydantic writes JSON Schema 2020-12, the dialect of OpenAPI 3.1,
and BentoML then flattens each top-level ``anyOf`` to its first branch. A schemathesis run
against the document (tests/service/test_contract.py, ``python -m load_tests.fuzz``) found:

- an optional value is ``anyOf: [X, {"type": "null"}]``, flattened to ``X``: the document said
  `/likelihood` answers an integer ``k`` and `/sample` a string ``grid`` where the service
  answers null;
- ``gt``/``lt`` bounds are numeric ``exclusiveMinimum``/``exclusiveMaximum``, which OpenAPI 3.0
  tools reject (schemathesis refused to test `/sample` and `/score`).

:class:`OpenAPI30JsonSchema` writes both in the 3.0 dialect (``nullable: true``; ``minimum`` with
``exclusiveMinimum: true``), which BentoML's flattening leaves intact.
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema


class OpenAPI30JsonSchema(GenerateJsonSchema):
    """Pydantic's JSON Schema generator, writing optional values and exclusive bounds as
    OpenAPI 3.0 does."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        inner = self.generate_inner(schema["schema"])
        if "$ref" in inner:  # 3.0 ignores a $ref's siblings
            return {"allOf": [inner], "nullable": True}
        if "enum" in inner and None not in inner["enum"]:
            inner = {**inner, "enum": [*inner["enum"], None]}
        return {**inner, "nullable": True}

    def int_schema(self, schema: core_schema.IntSchema) -> JsonSchemaValue:
        return _exclusive_bounds_as_flags(super().int_schema(schema))

    def float_schema(self, schema: core_schema.FloatSchema) -> JsonSchemaValue:
        return _exclusive_bounds_as_flags(super().float_schema(schema))


def _exclusive_bounds_as_flags(json_schema: dict[str, Any]) -> dict[str, Any]:
    """``{"exclusiveMinimum": 0}`` (3.1) -> ``{"minimum": 0, "exclusiveMinimum": true}`` (3.0)."""
    for exclusive, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if exclusive in json_schema:
            json_schema[inclusive] = json_schema.pop(exclusive)
            json_schema[exclusive] = True
    return json_schema
