"""The web page at /ui: its files are served, open with API keys on, and the grid route serves
only the sample grids a model card names (the browser test drives the page itself)."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from service.ui import OPEN_PATHS, card_grids, ui_app

CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"


def _client() -> TestClient:
    return TestClient(ui_app(lambda: {"ddpm": CHECKPOINTS / "ddpm"}))


def test_the_page_and_its_scripts_are_served():
    client = _client()
    page = client.get("/")
    assert page.status_code == 200 and '<script src="app.js">' in page.text
    assert client.get("/app.js").headers["content-type"].startswith("text/javascript")


def test_the_page_files_are_open_paths_and_nothing_else_is():
    assert {"/ui", "/ui/", "/ui/index.html", "/ui/app.js", "/ui/style.css"} <= OPEN_PATHS
    assert not any(path.startswith("/ui/grids") for path in OPEN_PATHS)


def test_a_grid_the_card_names_is_served_and_other_files_are_404s():
    client = _client()
    answer = client.get("/grids/ddpm/samples_ddim_50.png")
    assert answer.status_code == 200 and answer.content.startswith(b"\x89PNG")
    weights = client.get("/grids/ddpm/model.safetensors")
    assert weights.status_code == 404 and "lists no sample grid" in weights.json()["error"]
    assert client.get("/grids/gan/samples_ddim_50.png").status_code == 404


def test_card_grids_reads_the_sample_quality_section():
    card = {"sample_quality": {"samplers": {"a": {"grid": "a.png"}, "b": {"grid": None}}}}
    assert card_grids(card) == {"a.png"} and card_grids({}) == set()
