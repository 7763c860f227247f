"""The service keeps its published contract (/docs.json), checked with schemathesis: a bounded
fuzzing run over every operation, and one regression test for each disagreement it found."""

import base64

import pytest
from service_testing import png_b64

from load_tests.fuzz import STATEFUL, TASKS, as_httpx, contract_failures, fuzz, submit_task

BASE_URL = "http://testserver"  # the in-process client's


def _sender(client):
    def send(kwargs):
        response = client.request(**as_httpx(kwargs))
        response.request.read()  # schemathesis reads the request it checks the answer to
        return response

    return send


@pytest.fixture(scope="module")
def document(client):
    return client.get("/docs.json").json()


@pytest.fixture(scope="module")
def contract(document):
    import schemathesis

    return schemathesis.openapi.from_dict(document)


def _exchange(client, contract, method, path, **case_fields):
    """Send one explicit request; its response and what the contract finds wrong with it."""
    if "body" in case_fields:
        case_fields.setdefault("media_type", "application/json")
    case = contract[path][method].Case(**case_fields)
    response = _sender(client)(case.as_transport_kwargs(base_url=BASE_URL))
    return response, contract_failures(case, response)


@pytest.mark.slow
def test_every_operation_keeps_the_published_contract(client, document):
    """schemathesis sends every operation in /docs.json (JSON bodies, multipart uploads, query
    parameters) 5 positive and 5 negative generated requests, then 5 stateful scenarios of
    up to 5 linked requests (a task's submit, then its status, get, cancel), seeded, without
    shrinking, and checks each answer with all its checks (``st run --checks all``): no 5xx;
    a documented status code, content type, headers and body; every schema-valid request
    accepted (no 400: the per-model rules are in the document) and every schema-violating
    one refused.

    Limited, as load_tests/fuzz.py explains: costs are capped (DDIM steps <= 4, n <= 2,
    k <= 8 but /score's, also for DDPM ancestral sampling; the 1,000-call vlb_exact bound
    becomes vlb_mc), every valid request's images are real ones (no schema says a string is
    a 28x28 PNG: the one deliberate rejection, docs/http_api.md), and half of them carry
    latents or the id of a task of their own kind. The longer run is
    ``python -m load_tests.fuzz`` (README), and ``st run`` against a server."""
    task_ids = {name: submit_task(client, BASE_URL, name, body) for name, body in TASKS.items()}
    report = fuzz(
        document,
        _sender(client),
        max_examples=5,
        seed_value=0,
        task_ids=task_ids,
        stateful_examples=5,
        stateful_steps=5,
    )
    for route, task_id in report.submitted:  # the run's tasks do not hold up later tests
        client.put(f"/{route}/cancel", params={"task_id": task_id})
    assert not report.failures, report.summary()
    operations = {
        f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item
    }
    assert set(report.examples) == operations | {STATEFUL}, "operations never sent a request"


# What the first runs found, one request each --------------------------------------------


def test_optional_answers_are_published_as_nullable(client, contract, test_images):
    """k is null for the ELBO, grid/steps for VAE samples: the document said integer and
    string (BentoML kept the first branch of pydantic's anyOf)."""
    body = {"model": "vae", "images": [png_b64(test_images[0])], "method": "elbo"}
    response, failures = _exchange(client, contract, "POST", "/likelihood", body=body)
    assert response.status_code == 200 and response.json()["k"] is None
    assert failures == []
    response, failures = _exchange(
        client, contract, "POST", "/sample", body={"model": "vae", "seed": 1}
    )
    assert response.status_code == 200 and response.json()["steps"] is None
    assert response.json()["sampler"] == "prior" and response.json()["grid"] is None
    assert failures == []


def test_exclusive_bounds_are_published_in_the_openapi_30_form(document):
    """OpenAPI 3.0 writes `gt` as minimum + exclusiveMinimum: true; the numeric form (3.1)
    made schemathesis refuse /sample and /score."""
    assert document["openapi"].startswith("3.0")
    body = "requestBody", "content", "application/json", "schema", "properties"

    def field(path, name):
        schema = document["paths"][path]["post"]
        for key in body:
            schema = schema[key]
        return schema[name]

    temperature = field("/sample", "temperature")
    assert (temperature["minimum"], temperature["exclusiveMinimum"]) == (0.0, True)
    fpr = field("/score", "fpr")
    assert (fpr["minimum"], fpr["exclusiveMinimum"]) == (0.0, True)
    assert (fpr["maximum"], fpr["exclusiveMaximum"]) == (1.0, True)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/sample", {"model": "vae", "n": 0}),  # BentoML's: "detail", a list of errors
        ("/likelihood", {"model": "vae", "images": ["%%%"]}),  # ours: "field"
    ],
)
def test_400s_of_both_kinds_keep_the_contract(client, contract, path, body):
    response, failures = _exchange(client, contract, "POST", path, body=body)
    assert response.status_code == 400
    assert failures == []


def test_task_answers_keep_the_contract(client, contract):
    """/submit answers only task_id and status; a finished task's status is 'completed' (the
    document said created_at and executed_at were required, and 'success')."""
    body = {"model": "vae", "n": 1, "seed": 0}
    response, failures = _exchange(client, contract, "POST", "/sample_task/submit", body=body)
    assert response.status_code == 200 and failures == []
    task_id = submit_task(client, BASE_URL, "sample_task", body)
    query = {"task_id": task_id}
    response, failures = _exchange(client, contract, "GET", "/sample_task/status", query=query)
    assert response.json()["status"] == "completed" and failures == []
    from _bentoml_impl.tasks import ResultStatus

    from service.openapi import TASK_STATUSES

    assert tuple(status.value for status in ResultStatus) == TASK_STATUSES


def test_answers_bentoml_does_not_document_are_documented(client, contract, document):
    from service.service import SETTINGS

    body = {"model": "vae", "images": ["x"]}
    case = contract["/likelihood"]["POST"].Case(body=body, media_type="application/json")
    too_large = str(SETTINGS.max_body_bytes + 1)
    response = client.post("/likelihood", content=b"{}", headers={"Content-Length": too_large})
    assert response.status_code == 413
    assert contract_failures(case, response) == []
    for item in document["paths"].values():
        for operation in item.values():
            if "x-bentoml-name" in operation:
                assert {"429", "504"} <= set(operation["responses"])
                assert ("413" in operation["responses"]) == ("requestBody" in operation)
    assert "409" in document["paths"]["/score"]["post"]["responses"]
    assert "503" in document["paths"]["/readyz"]["get"]["responses"]


def test_uploads_and_get_models_are_documented(client, contract, test_images):
    png = base64.b64decode(png_b64(test_images[0]))
    response, failures = _exchange(
        client,
        contract,
        "POST",
        "/score",
        body={"model": "vae", "images": [png], "fpr": 0.25},
        media_type="multipart/form-data",
    )
    assert response.status_code == 200, response.text
    assert failures == []
    response, failures = _exchange(client, contract, "GET", "/models")
    assert response.status_code == 200 and failures == []


# What the strict run (all checks, stateful phase; issue 21) found, one request each ----------


def _schema_valid(contract, path, body, media_type="application/json"):
    """Whether ``body`` is valid by the published request schema, as schemathesis judges."""
    from schemathesis.core.jsonschema import make_validator

    operation = contract[path]["POST"]
    alternative = operation.get_body_for_media_type(media_type)
    validator = make_validator(
        alternative.validation_schema, contract.adapter.jsonschema_validator_cls
    )
    return validator.is_valid(body)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/decode", {"model": "vae", "latents": [[]], "output": "array", "steps": 1}),
        ("/decode", {"model": "vae", "latents": [[0.0] * 3]}),
        ("/sample", {"model": "vae", "sampler": "", "steps": 1}),
        ("/sample", {"model": "vae", "eta": 0.0}),
        ("/sample", {"model": "ddpm", "sampler": "ancestral", "eta": 0.5}),
        ("/sample", {"model": "ddpm", "temperature": 1.0}),
        ("/encode", {"model": "vae", "images": [[[0] * 28] * 28], "steps": 1}),
        ("/encode", {"model": "vae", "images": [[[0] * 27] * 28]}),
        ("/likelihood", {"model": "vae", "images": [[[0] * 28] * 28], "k": 1}),
        ("/likelihood", {"model": "vae", "images": [[[0] * 28] * 28], "method": "vlb_mc"}),
        ("/score", {"model": "vae", "images": [[[0] * 28] * 28], "method": "iwae", "k": 1}),
        ("/score", {"model": "vae", "images": [[[0] * 28] * 28], "method": "iwae", "maps": True}),
    ],
)
def test_per_model_rules_are_published(client, contract, path, body):
    """Each of these was schema-valid and answered 400 (a rule of the model's kind the
    document did not state); now the document refuses it, and the service still does."""
    assert not _schema_valid(contract, path, body)
    response, failures = _exchange(client, contract, "POST", path, body=body)
    assert response.status_code == 400 and failures == []


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/decode", {"model": "vae", "latents": [[0.0] * 32], "steps": None}),
        ("/sample", {"model": "ddpm", "sampler": "ancestral", "steps": 2, "n": 1}),
        ("/sample", {"model": "vae", "temperature": 0.5, "sample_pixels": True}),
        ("/likelihood", {"model": "vae", "images": [[[0] * 28] * 28], "method": "iwae", "k": 2}),
    ],
)
def test_requests_the_published_rules_allow_are_served(client, contract, path, body):
    assert _schema_valid(contract, path, body)
    response, failures = _exchange(client, contract, "POST", path, body=body)
    assert response.status_code == 200, response.text
    assert failures == []


def test_get_models_ignores_a_body_and_lists_its_methods(client):
    """A multipart Content-Type without a boundary on GET /models was a 500; OPTIONS said
    Allow: POST, not the documented GET and POST."""
    response = client.get("/models", headers={"Content-Type": "multipart/form-data"})
    assert response.status_code == 200 and "vae" in response.json()["models"]
    response = client.options("/models")
    assert response.status_code == 405 and response.headers["Allow"] == "GET, POST"


def test_task_routes_answer_other_methods_405_with_allow(client):
    response = client.options("/sample_task/cancel", params={"task_id": "x"})
    assert response.status_code == 405 and response.headers["Allow"] == "PUT, POST"
    response = client.get("/likelihood_task/submit")
    assert response.status_code == 405 and response.headers["Allow"] == "POST"


def test_form_fields_declared_strings_stay_text(client, test_images):
    """A method named '0' in a form is the string '0' (it was parsed as the number 0, a type
    error the document does not allow), refused as a method the model does not offer."""
    png = base64.b64decode(png_b64(test_images[0]))
    data = {"model": "vae", "method": "0"}
    response = client.post("/likelihood", data=data, files=[("images", ("a.png", png))])
    assert response.status_code == 400 and response.json()["field"] == "method"
    assert "offers" in response.json()["error"]


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("sample_task", {"model": "vae", "sample_pixels": 0}),  # strict: 0 is not a boolean
        ("sample_task", {"model": "vae", "eta": 0}),  # a vae takes no eta
        ("likelihood_task", {"model": "vae", "images": ["%%%"]}),  # not a PNG
        ("likelihood_task", {"model": "vae", "images": [[[0] * 28] * 28], "bogus": 1}),
    ],
)
def test_task_submissions_refuse_at_once_what_the_task_would_refuse(client, route, body):
    """They were accepted (200, a task id) and failed later, or (unknown fields in a form,
    0 for a boolean) ran with the value coerced."""
    response = client.post(f"/{route}/submit", json=body)
    assert response.status_code == 400, response.text


def test_task_submission_of_unknown_form_fields_is_refused(client, test_images):
    png = base64.b64decode(png_b64(test_images[0]))
    response = client.post(
        "/likelihood_task/submit",
        data={"model": "vae", "bogus": "1"},
        files=[("images", ("a.png", png))],
    )
    assert response.status_code == 400 and "bogus" in response.text


def test_a_task_submission_that_is_not_utf8_is_a_400(client):
    response = client.post(
        "/likelihood_task/submit",
        content=b"\xff\xfeB\x7f",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400 and response.json()["detail"]


def test_a_task_id_is_answered_only_at_its_own_kinds_routes(client):
    """The stateful phase followed a sample task's id to /likelihood_task/get, answered with
    a sample (a body of the other route's schema); the task store answers 404 there."""
    task_id = submit_task(client, BASE_URL, "sample_task", TASKS["sample_task"])
    for action in ("status", "get"):
        response = client.get(f"/likelihood_task/{action}", params={"task_id": task_id})
        assert response.status_code == 404
    assert client.get("/sample_task/get", params={"task_id": task_id}).status_code == 200


def test_task_routes_are_documented_as_served(document):
    """An empty task id is refused by the document; get's 409 is documented; POST cancel is
    documented; BentoML's retry, which the task store does not serve, is not."""
    paths = document["paths"]
    assert not any(path.endswith("/retry") for path in paths)
    for kind in ("sample_task", "likelihood_task", "score_task"):
        (parameter,) = paths[f"/{kind}/status"]["get"]["parameters"]
        assert parameter["schema"]["minLength"] == 1
        assert "409" in paths[f"/{kind}/get"]["get"]["responses"]
        assert set(paths[f"/{kind}/cancel"]) == {"put", "post"}
        assert paths[f"/{kind}/submit"]["post"]["requestBody"]["required"] is True
    assert "409" in paths["/task_progress"]["post"]["responses"]
