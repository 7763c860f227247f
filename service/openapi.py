"""The published contract: the OpenAPI document at /docs.json, true to what the service answers.

BentoML (1.4.39) generates the document; a schemathesis run against it
(tests/service/test_contract.py, ``python -m load_tests.fuzz``) found where it and the service
disagree. Two faults come from the models' JSON Schema: BentoML publishes an OpenAPI 3.0.2
document built from the pydantic models' ``model_json_schema()``, but pydantic writes JSON
Schema 2020-12, the dialect of OpenAPI 3.1, and BentoML then flattens each top-level ``anyOf``
to its first branch:

- an optional value is ``anyOf: [X, {"type": "null"}]``, flattened to ``X``: the document said
  `/likelihood` answers an integer ``k`` and `/sample` a string ``grid`` where the service
  answers null;
- ``gt``/``lt`` bounds are numeric ``exclusiveMinimum``/``exclusiveMaximum``, which OpenAPI 3.0
  tools reject (schemathesis refused to test `/sample` and `/score`).

:class:`OpenAPI30JsonSchema` writes both in the 3.0 dialect (``nullable: true``; ``minimum`` with
``exclusiveMinimum: true``), which BentoML's flattening leaves intact. The others are in the
parts BentoML writes itself; :func:`published_document` corrects them:

- its 400s carry ``detail`` as a list of pydantic errors, documented as a string, and ours carry
  ``field``, not documented;
- its task status answers carry ``completed``/``failed``/``canceled``, documented as
  ``success``/``failure``/``cancelled``, and ``/submit`` answers without the documented
  required ``created_at`` and ``executed_at``;
- answers it never documents: 413 (ELBO_SERVE_MAX_BODY_BYTES), 429 (max_concurrency), 504
  (request_timeout_s), 409 from /score (no calibration), 503 from /readyz;
- requests it never documents, served by our middlewares (service/http_adapters.py): PNG
  uploads as ``multipart/form-data`` to every operation that takes ``images``, and
  ``GET /models``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
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


ERROR_SCHEMAS = ("InvalidArgument", "NotFound", "InternalServerError")
ERROR_PROPERTIES = {
    "error": {"type": "string", "title": "Message"},
    "field": {
        "type": "string",
        "description": "The request field at fault (this service's own errors).",
    },
    "detail": {
        "type": "array",
        "items": {"type": "object"},
        "description": "BentoML's schema-violation 400s: pydantic's errors, each with 'loc'.",
    },
}
# Answers every service API may give besides BentoML's documented 200/400/404/500.
SERVICE_ANSWERS = {
    "413": "Payload Too Large: the body is over ELBO_SERVE_MAX_BODY_BYTES.",
    "429": "Too Many Requests: more than max_concurrency requests in flight.",
    "504": "Gateway Timeout: not answered within request_timeout_s.",
}
ANSWERS_BY_PATH = {
    "/score": {"409": "Conflict: the model card has no calibration for this method."},
}
TASK_STATUSES = ("pending", "in_progress", "completed", "failed", "canceled")  # ResultStatus


def _error_response(description: str) -> dict[str, Any]:
    reference = {"$ref": "#/components/schemas/Error"}
    return {"description": description, "content": {"application/json": {"schema": reference}}}


def published_document(
    generated: dict[str, Any], served: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """BentoML's generated document (``Service.openapi_spec.asdict()``), corrected; with
    ``served`` (model name -> one-line summary), every request's ``model`` lists the names."""
    document = json.loads(json.dumps(generated))  # a copy, with status codes as strings
    if served:
        _document_served_models(document, served)
    schemas = document["components"]["schemas"]
    for name in ERROR_SCHEMAS:
        schemas[name]["properties"] = copy.deepcopy(ERROR_PROPERTIES)
    schemas["Error"] = {
        "type": "object",
        "title": "Error",
        "required": ["error"],
        "properties": copy.deepcopy(ERROR_PROPERTIES),
    }
    status = schemas["TaskStatusResponse"]
    status["required"] = ["task_id", "status"]  # what /submit and /retry answer
    status["properties"]["status"]["enum"] = list(TASK_STATUSES)
    for name in ("created_at", "executed_at", "completed_at"):
        status["properties"][name] = {"type": "string", "nullable": True, "title": name}
    paths = document["paths"]
    for path, item in paths.items():
        for operation in item.values():
            if "x-bentoml-name" not in operation:  # BentoML's infrastructure routes
                continue
            _add_uploads(operation)
            responses = operation["responses"]
            for code, description in SERVICE_ANSWERS.items():
                if code != "413" or "requestBody" in operation:
                    responses.setdefault(code, _error_response(description))
            for code, description in ANSWERS_BY_PATH.get(path, {}).items():
                responses.setdefault(code, _error_response(description))
    paths["/readyz"]["get"]["responses"]["503"] = {"description": "Not ready (yet)."}
    if "/models" in paths:
        listing = copy.deepcopy(paths["/models"]["post"])
        listing.pop("requestBody", None)
        listing["operationId"] += "_get"
        listing["responses"].pop("413", None)
        paths["/models"]["get"] = listing
    return document


def _document_served_models(node: Any, served: Mapping[str, str]) -> None:
    """The ``model`` property of every request schema: an enum of the served names, whose
    description says what each is (GET /models has their methods, samplers and limits)."""
    if isinstance(node, list):
        for item in node:
            _document_served_models(item, served)
        return
    if not isinstance(node, dict):
        return
    model = node.get("properties", {}).get("model")
    if isinstance(model, dict) and "pattern" in model:
        model["enum"] = list(served)
        listing = "; ".join(f"{name!r}: {summary}" for name, summary in served.items())
        model["description"] = f"A served model's name. Served here: {listing}."
    for value in node.values():
        _document_served_models(value, served)


def _add_uploads(operation: dict[str, Any]) -> None:
    """Document ``multipart/form-data`` beside JSON where the body takes ``images``."""
    content = operation.get("requestBody", {}).get("content", {})
    as_json = content.get("application/json", {}).get("schema", {})
    if "images" not in as_json.get("properties", {}):
        return
    form = copy.deepcopy(as_json)
    images = form["properties"]["images"]
    images["items"] = {"type": "string", "format": "binary"}
    images["description"] = (
        "PNG files, one 'images' part per image (8-bit grayscale, 28x28 for the bundled "
        "checkpoints). The other fields are form fields; numbers and booleans as JSON text."
    )
    content["multipart/form-data"] = {
        "schema": form,
        "encoding": {"images": {"contentType": "image/png"}},
    }
