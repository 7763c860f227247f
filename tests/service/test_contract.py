"""The service keeps its published contract (/docs.json), checked with schemathesis: one
regression test for each disagreement the fuzzing run (load_tests/fuzz.py) found."""

import pytest
from service_testing import png_b64

from load_tests.fuzz import as_httpx, contract_failures

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


def test_optional_answers_are_published_as_nullable(client, contract, test_images):
    """k is null for the ELBO, grid/sampler/steps for VAE samples: the document said integer
    and string (BentoML kept the first branch of pydantic's anyOf)."""
    body = {"model": "vae", "images": [png_b64(test_images[0])], "method": "elbo"}
    response, failures = _exchange(client, contract, "POST", "/likelihood", body=body)
    assert response.status_code == 200 and response.json()["k"] is None
    assert failures == []
    response, failures = _exchange(
        client, contract, "POST", "/sample", body={"model": "vae", "seed": 1}
    )
    assert response.status_code == 200 and response.json()["sampler"] is None
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
