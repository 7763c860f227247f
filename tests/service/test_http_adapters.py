"""Uploaded PNG files (multipart/form-data) and GET /models, through the ASGI app."""

import base64

import pytest
from service_testing import png_b64

FPR = 0.25


@pytest.fixture(scope="module")
def png_files(test_images):
    """Three test images as the PNG files a user would upload."""
    return [base64.b64decode(png_b64(image)) for image in test_images[:3]]


def _upload(png_files):
    return [("images", (f"image{i}.png", data, "image/png")) for i, data in enumerate(png_files)]


@pytest.mark.parametrize("endpoint", ["/score", "/likelihood"])
def test_uploaded_png_files_give_the_json_answer(client, png_files, endpoint):
    fields = {"model": "vae", "seed": "3"} | ({"fpr": str(FPR)} if endpoint == "/score" else {})
    uploaded = client.post(endpoint, data=fields, files=_upload(png_files))
    body = {**fields, "seed": 3} | ({"fpr": FPR} if endpoint == "/score" else {})
    as_json = client.post(
        endpoint, json={**body, "images": [base64.b64encode(d).decode() for d in png_files]}
    )
    assert uploaded.status_code == 200, uploaded.text
    assert as_json.status_code == 200, as_json.text
    assert len(uploaded.json()["results"]) == 3
    assert uploaded.json() == as_json.json()


def test_uploaded_file_that_is_not_a_png_is_a_400_naming_the_image(client, png_files):
    files = _upload(png_files[:1]) + [("images", ("notes.txt", b"hello", "text/plain"))]
    response = client.post("/score", data={"model": "vae", "fpr": str(FPR)}, files=files)
    assert response.status_code == 400, response.text
    assert "images[1]" in response.json()["error"]


def test_upload_with_a_bad_form_field_is_a_400_naming_it(client, png_files):
    response = client.post(
        "/score", data={"model": "vae", "fpr": "often"}, files=_upload(png_files[:1])
    )
    assert response.status_code == 400
    assert "fpr" in response.text


def test_a_file_in_a_field_other_than_images_is_a_400(client, png_files):
    files = _upload(png_files[:1]) + [("model", ("model.txt", b"vae", "text/plain"))]
    response = client.post("/score", data={"fpr": str(FPR)}, files=files)
    assert response.status_code == 400
    assert response.json()["field"] == "model"


def test_a_repeated_form_field_is_a_400(client, png_files):
    response = client.post(
        "/score",
        content=(
            b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nvae\r\n'
            b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nddpm\r\n--b--\r\n'
        ),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert response.status_code == 400
    assert response.json()["field"] == "model"


def test_a_malformed_multipart_body_is_a_400_and_the_server_still_serves(client, png_files):
    response = client.post(
        "/score",
        content=b"--b\r\nContent-Disposition: form-data\r\n\r\nx",
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert 400 <= response.status_code < 500
    uploaded = client.post(
        "/score", data={"model": "vae", "fpr": str(FPR)}, files=_upload(png_files)
    )
    assert uploaded.status_code == 200


def test_models_answers_get_like_post(client):
    fetched = client.get("/models")
    assert fetched.status_code == 200
    assert fetched.json() == client.post("/models").json()
