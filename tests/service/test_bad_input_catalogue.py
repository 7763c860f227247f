"""The bad-input catalogue of docs/http_api.md is this test's output: one row per class of bad
input, with the status and the message the service answers. On a mismatch the assertion prints the
table to paste between the page's markers."""

from __future__ import annotations

import base64
import io
import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image
from service_testing import png_b64, png_bomb

CATALOGUE_PAGE = Path(__file__).resolve().parents[2] / "docs" / "http_api.md"
BEGIN, END = "<!-- bad-input catalogue: begin -->", "<!-- bad-input catalogue: end -->"
BLANK = [[0] * 28] * 28


def _png(array: np.ndarray) -> str:
    return png_b64(array.astype(np.uint8))


def _truncated_png() -> str:
    return base64.b64encode(base64.b64decode(_png(np.zeros((28, 28))))[:40]).decode()


def _rgb_png() -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((28, 28, 3), dtype=np.uint8), mode="RGB").save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _deep(levels: int) -> object:
    value: object = 0
    for _ in range(levels):
        value = [value]
    return value


def _cases(client):
    """(class of bad input, request) pairs; each request is a call on the test client."""
    post = client.post
    image = _png(np.zeros((28, 28)))
    return [
        (
            "malformed JSON",
            lambda: post(
                "/score",
                content=b'{"model": "vae", "images": [',
                headers={"Content-Type": "application/json"},
            ),
        ),
        (
            "wrong content type",
            lambda: post("/score", content=b"model=vae", headers={"Content-Type": "text/plain"}),
        ),
        (
            "pickle bytes",
            lambda: post(
                "/score",
                content=pickle.dumps({"model": "vae"}),
                headers={"Content-Type": "application/json"},
            ),
        ),
        ("deep nesting", lambda: post("/score", json={"model": "vae", "images": [_deep(64)]})),
        ("not a PNG", lambda: post("/score", json={"model": "vae", "images": ["aGVsbG8="]})),
        (
            "truncated PNG",
            lambda: post("/score", json={"model": "vae", "images": [_truncated_png()]}),
        ),
        (
            "decompression bomb",
            lambda: post(
                "/score",
                json={
                    "model": "vae",
                    "images": [base64.b64encode(png_bomb(30000, 30000)).decode()],
                },
            ),
        ),
        ("wrong mode", lambda: post("/score", json={"model": "vae", "images": [_rgb_png()]})),
        ("wrong shape", lambda: post("/score", json={"model": "vae", "images": [[[0] * 27] * 28]})),
        (
            "integer out of range",
            lambda: post("/score", json={"model": "vae", "images": [[[300] * 28] * 28]}),
        ),
        (
            "non-finite latent",
            lambda: post(
                "/decode",
                content=json.dumps({"model": "vae", "latents": [[1e308] * 32]}),
                headers={"Content-Type": "application/json"},
            ),
        ),
        ("too many images", lambda: post("/score", json={"model": "vae", "images": [BLANK] * 257})),
        (
            "oversize body",
            lambda: post(
                "/score",
                content=b"x",
                headers={"Content-Type": "application/json", "Content-Length": str(1 << 30)},
            ),
        ),
        (
            "too costly a request",
            lambda: post(
                "/likelihood",
                json={"model": "vae", "images": [image] * 64, "method": "iwae", "k": 5000},
            ),
        ),
        ("unknown model", lambda: post("/score", json={"model": "gan", "images": [image]})),
        (
            "unknown method",
            lambda: post(
                "/likelihood", json={"model": "vae", "images": [image], "method": "bogus"}
            ),
        ),
        (
            "bad task id",
            lambda: client.get("/sample_task/status", params={"task_id": "no-such-task"}),
        ),
    ]


def _message(response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.text[:120]
    if isinstance(payload, dict) and payload.get("detail"):  # BentoML's schema validation
        first = payload["detail"][0]
        field = ".".join(str(part) for part in first.get("loc", [])) or "body"
        text = f"{field}: {first.get('msg')}"
    elif isinstance(payload, dict) and "error" in payload:
        text = payload["error"]
    else:
        text = json.dumps(payload)
    text = " ".join(str(text).split()).replace("|", "\\|")
    # The page shows the CPU's messages; on a GPU the ceiling's variable is the CUDA one.
    text = text.replace("ELBO_SERVE_CUDA_MAX_REQUEST_GFLOP", "ELBO_SERVE_CPU_MAX_REQUEST_GFLOP")
    return text if len(text) <= 220 else text[:217] + "..."


def _table(client) -> str:
    rows = ["| bad input | request | status | message |", "|---|---|---|---|"]
    for name, call in _cases(client):
        response = call()
        assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
        request = response.request
        rows.append(
            f"| {name} | `{request.method} {request.url.path}` | {response.status_code} "
            f"| {_message(response)} |"
        )
    return "\n".join(rows)


def test_every_bad_input_class_is_a_4xx_as_the_readme_catalogue_says(client):
    table = _table(client)
    assert client.get("/readyz").status_code == 200  # and the service goes on serving
    text = CATALOGUE_PAGE.read_text()
    documented = text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip()
    assert documented == table, "paste into docs/http_api.md between the markers:\n" + table
