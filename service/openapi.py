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
_NO_CALIBRATION = {"409": "Conflict: the model card has no calibration for this method."}
ANSWERS_BY_PATH = {
    "/score": _NO_CALIBRATION,
    "/score_task": _NO_CALIBRATION,  # its body is checked against the card when submitted
    "/score_task/submit": _NO_CALIBRATION,
    "/task_progress": {"409": "Conflict: the task has recorded no progress yet."},
}
TASK_GET_CONFLICT = (
    "Conflict: the task has no answer to give: not completed yet, canceled, or failed on a "
    "bad value (the body is the error the synchronous endpoint answers 400)."
)
TASK_STATUSES = ("pending", "in_progress", "completed", "failed", "canceled")  # ResultStatus


def _error_response(description: str) -> dict[str, Any]:
    reference = {"$ref": "#/components/schemas/Error"}
    return {"description": description, "content": {"application/json": {"schema": reference}}}


def published_document(
    generated: dict[str, Any],
    served: Mapping[str, str] | None = None,
    models: Mapping[str, Mapping[str, Any]] | None = None,
    operations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """BentoML's generated document (``Service.openapi_spec.asdict()``), corrected; with
    ``served`` (model name -> one-line summary), every request's ``model`` lists the names;
    with ``models`` (name -> its GET /models description) and ``operations`` (route -> the
    operation its body asks for: sample, likelihood, score, encode, decode), each body also
    states every model's own rules (:func:`per_model_rules`)."""
    document = json.loads(json.dumps(generated))  # a copy, with status codes as strings
    if served:
        _document_served_models(document, served)
    if models and operations:
        _document_per_model_rules(document["paths"], operations, models)
    _document_task_routes(document["paths"])
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
            if _has_required_fields(operation):  # an empty body is a 400 (invalid JSON)
                operation["requestBody"]["required"] = True
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


def _has_required_fields(operation: dict[str, Any]) -> bool:
    content = operation.get("requestBody", {}).get("content", {})
    return bool(content.get("application/json", {}).get("schema", {}).get("required"))


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
    for variant in form.get("anyOf", []):  # uploaded files: a PNG's size is not in a schema
        variant["properties"].pop("images", None)
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


# Per-model rules -----------------------------------------------------------------------------
#
# What a request may ask of a model depends on the model: its samplers and the options each
# takes, its bounds and their k, the k its /score calibrations used, its image and latent
# shapes. The flat schema of each request body (the pydantic model) cannot say so; with the
# served models' descriptions (GET /models), each body also gets an ``anyOf`` of per-model
# variants, so that a request valid by the document is one the service accepts (schemathesis'
# positive-data check) and every rule the service enforces is published. Built from the
# descriptions alone: no kind is named here.

NULL_ONLY = {"enum": [None], "nullable": True, "description": "Not taken by this model."}


def _nullable_enum(values: list[Any], allow_null: bool) -> dict[str, Any]:
    if allow_null:
        return {"enum": [*values, None], "nullable": True}
    return {"enum": list(values)}


def _ranged(option: Mapping[str, Any]) -> dict[str, Any]:
    limits = option.get("range")
    return {"minimum": limits[0], "maximum": limits[1]} if limits else {}


def _options(
    names: tuple[str, ...], taken: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The request's option fields: those the model takes within its ranges, the rest null."""
    return {name: _ranged(taken[name]) if name in taken else dict(NULL_ONLY) for name in names}


def _nested(shape: list[int] | tuple[int, ...], leaf: dict[str, Any]) -> dict[str, Any]:
    schema = leaf
    for size in reversed(shape):
        schema = {"type": "array", "minItems": size, "maxItems": size, "items": schema}
    return schema


def image_items(info: Mapping[str, Any]) -> dict[str, Any]:
    """One image of the model: a base64 PNG (its content the schema cannot state), or pixels
    as (C, H, W) integers 0..255, or (H, W) for one channel."""
    image = info["image"]
    channels, height, width = image["channels"], image["height"], image["width"]
    pixel = {"type": "integer", "minimum": 0, "maximum": 255}
    shapes = [(channels, height, width)] + ([(height, width)] if channels == 1 else [])
    png = {
        "type": "string",
        "description": f"A base64 PNG, {width}x{height} {image['mode']} (or a data: URL).",
    }
    return {"anyOf": [png, *(_nested(shape, pixel) for shape in shapes)]}


def _latent_items(info: Mapping[str, Any]) -> dict[str, Any]:
    from service.schemas import MAX_LATENT_ABS

    value = {"type": "number", "minimum": -MAX_LATENT_ABS, "maximum": MAX_LATENT_ABS}
    return _nested(info["latent_shape"], value)


def _sample_variants(name: str, info: Mapping[str, Any]) -> list[dict[str, Any]]:
    from service.schemas import SAMPLE_OPTIONS

    options = info["options"]["sample"]
    # The sampler a request that names none runs: the card's serving default, else the first.
    default = (info.get("default_sample") or {}).get("sampler", info["samplers"][0])
    variants = []
    for sampler in info["samplers"]:
        runs_with = set(info["sampler_defaults"][sampler]) - {"sampler"}
        taken = {option: options.get(option, {}) for option in runs_with}
        variants.append(
            {
                "sampler": _nullable_enum([sampler], allow_null=sampler == default),
                **_options(SAMPLE_OPTIONS, taken),
            }
        )
    return variants


def _k(method: Mapping[str, Any]) -> dict[str, Any]:
    if method["k_range"] is None:
        return dict(NULL_ONLY)
    low, high = method["k_range"]
    return {"minimum": low, "maximum": high}


def _likelihood_variants(name: str, info: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {"method": _nullable_enum([method], allow_null=index == 0), "k": _k(described)}
        for index, (method, described) in enumerate(info["methods"].items())
    ]


def _score_variants(name: str, info: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per bound and calibration: /score takes only the k a correction's calibration used
    (for 'regret' also its steps) and a false-positive rate it resolves; a correction the
    card does not calibrate is a 409 whatever k and fpr are. 'regret' only of the bound the
    model's Likelihood Regret refines (a model without one refuses it with a 400), and
    ``regret_steps`` with it alone."""
    from typing import get_args

    from service.schemas import Correction

    regret = info.get("likelihood_regret")
    variants = []
    for index, (method, described) in enumerate(info["methods"].items()):
        common = {"method": _nullable_enum([method], allow_null=index == 0)}
        if not described.get("maps"):
            common["maps"] = {"enum": [False]}
        scores = described.get("scores", {})
        calibrated: dict[tuple[Any, float, Any], list[str]] = {}
        for correction, score in scores.items():
            key = (score["k"], score["min_fpr"], score.get("regret_steps"))
            calibrated.setdefault(key, []).append(correction)
        takes_k = described["k_range"] is not None
        recommended = described.get("recommended_correction", "none")
        for (k, min_fpr, steps), corrections in calibrated.items():
            k_schema = _nullable_enum([k], allow_null=True) if takes_k else dict(NULL_ONLY)
            variants.append(
                {
                    **common,
                    # null: the card's recommended correction, calibrated like the others
                    "correction": _nullable_enum(
                        corrections, allow_null=recommended in corrections
                    ),
                    "k": k_schema,
                    "fpr": {"minimum": min_fpr},
                    "regret_steps": (
                        dict(NULL_ONLY)
                        if steps is None
                        else _nullable_enum([steps], allow_null=True)
                    ),
                }
            )
        offered = {"regret"} if regret is not None and regret["bound"] == method else set()
        uncalibrated = [
            c for c in get_args(Correction) if c not in scores and (c != "regret" or offered)
        ]
        if others := [c for c in uncalibrated if c != "regret"]:
            variants.append(
                {
                    **common,
                    "correction": {"enum": others},
                    "k": _k(described),
                    "regret_steps": dict(NULL_ONLY),
                }
            )
        if "regret" in uncalibrated:
            variants.append({**common, "correction": {"enum": ["regret"]}, "k": _k(described)})
    return variants


def _encode_variants(name: str, info: Mapping[str, Any]) -> list[dict[str, Any]]:
    from service.schemas import ENCODE_OPTIONS

    return [_options(ENCODE_OPTIONS, info["options"]["encode"])]


def _decode_variants(name: str, info: Mapping[str, Any]) -> list[dict[str, Any]]:
    from service.schemas import DECODE_OPTIONS

    return [
        {
            **_options(DECODE_OPTIONS, info["options"]["decode"]),
            "latents": {"items": _latent_items(info)},
        }
    ]


VARIANTS = {
    "sample": _sample_variants,
    "likelihood": _likelihood_variants,
    "score": _score_variants,
    "encode": _encode_variants,
    "decode": _decode_variants,
}


def per_model_rules(
    operation: str, body: Mapping[str, Any], models: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The ``anyOf`` of a request body (its flat schema ``body``) for ``operation``: one
    variant per served model (and sampler or bound), each stating that model's rules."""
    variants = []
    for name, info in models.items():
        for rules in VARIANTS[operation](name, info):
            properties = {"model": {"enum": [name]}, **rules}
            if "images" in body.get("properties", {}):
                properties["images"] = {"items": image_items(info)}
            variant = {"type": "object", "properties": properties}
            # A field left out takes its default: a variant that excludes the default (a
            # model's second sampler or bound) holds only when the field is sent.
            flat = body.get("properties", {})
            required = [
                field
                for field, rule in rules.items()
                if "enum" in rule and flat.get(field, {}).get("default") not in rule["enum"]
            ]
            if required:
                variant["required"] = required
            variants.append(variant)
    return variants


def _document_per_model_rules(
    paths: dict[str, Any],
    operations: Mapping[str, str],
    models: Mapping[str, Mapping[str, Any]],
) -> None:
    for path, operation in operations.items():
        post = paths.get(path, {}).get("post")
        if post is None or operation not in VARIANTS:
            continue
        body = post["requestBody"]["content"]["application/json"]["schema"]
        body["anyOf"] = per_model_rules(operation, body, models)


def _document_task_routes(paths: dict[str, Any]) -> None:
    """The task routes as service/tasks/routes.py answers them from the task store: a task id
    is never empty; ``get`` with no answer to give is a 409; ``cancel`` also takes POST;
    BentoML's ``retry`` (its own result store's) is not served for store tasks."""
    for path in [path for path in paths if path.endswith("/retry")]:
        del paths[path]
    for path, item in paths.items():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("name") == "task_id":
                    parameter["schema"]["minLength"] = 1
        if path.endswith("/get") and "get" in item:
            item["get"]["responses"]["409"] = _error_response(TASK_GET_CONFLICT)
        if path.endswith("/cancel") and "put" in item and "post" not in item:
            cancel = copy.deepcopy(item["put"])
            cancel["operationId"] += "_post"
            item["post"] = cancel
