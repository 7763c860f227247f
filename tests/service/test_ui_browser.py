"""The /ui page in a real browser (Debian's chromium driven by Playwright) against a real
`bentoml serve`: it loads without console errors, samples, scores an uploaded PNG with a
verdict and a heat map, shows the service's message for a bad file, and asks for an API key
when the service wants one. Screenshots go to the test's tmp_path (docs/ui_*.png are two of
them, committed)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image
from service_fixtures import API_KEYS

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason="needs Debian's chromium (make test installs it)"
)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


def _png(path, size: int, seed: int = 0):
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path)
    return path


def _open(browser, url: str, errors: list[str]):
    page = browser.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{url}/ui/")
    return page


def test_the_page_samples_and_scores_against_a_real_server(browser, server_url, tmp_path):
    errors: list[str] = []
    page = _open(browser, server_url, errors)
    page.wait_for_selector("#status:has-text('Connected')")
    assert errors == []  # loaded, models listed, no console errors
    page.select_option("#model", "vae")
    page.fill("#n", "4")
    page.click("#sample-button")
    page.wait_for_selector("#sample-result:not([hidden])", timeout=60_000)
    width = page.eval_on_selector("#sample-grid", "img => img.naturalWidth")
    assert width > 28  # a grid of 4 images, decoded by the browser
    page.screenshot(path=tmp_path / "ui_sample.png", full_page=True)

    page.focus("#tab-sample")
    page.keyboard.press("ArrowRight")
    assert page.is_visible("#panel-score") and not page.is_visible("#panel-sample")
    page.set_input_files("#files", str(_png(tmp_path / "noise.png", 28)))
    page.click("#score-button")
    page.wait_for_selector(".score-card, #score-error:not([hidden])", timeout=60_000)
    assert page.is_hidden("#score-error"), page.inner_text("#score-error")
    card = page.query_selector(".score-card")
    assert card.query_selector(".verdict").inner_text() == "anomaly"  # uniform noise
    assert float(card.query_selector(".score").inner_text()) > 0
    heat = card.query_selector("img.heatmap")
    assert page.evaluate("img => img.complete && img.naturalWidth", heat) > 0
    page.fill("#opacity", "0.3")
    page.dispatch_event("#opacity", "input")
    assert heat.evaluate("img => img.style.opacity") == "0.3"
    page.screenshot(path=tmp_path / "ui_score.png", full_page=True)

    (tmp_path / "notes.png").write_text("not an image")
    page.set_input_files(
        "#files", [str(_png(tmp_path / "big.png", 32)), str(tmp_path / "notes.png")]
    )
    page.click("#score-button")
    page.wait_for_selector("#score-error:not([hidden])", timeout=60_000)
    message = page.inner_text("#score-error")
    assert "big.png: 400: images[0]: expected a 28x28 L image, got 32x32 L" in message
    assert "notes.png: 400: images[0]: not a readable PNG image" in message
    assert all("Failed to load resource" in e for e in errors), errors  # only the 400s
    page.close()


def test_with_api_keys_the_page_asks_for_one_and_works_with_it(browser, keyed_server_url, tmp_path):
    page = _open(browser, keyed_server_url, [])
    page.wait_for_selector("#status:has-text('needs an API key')")
    assert page.evaluate("document.activeElement.id") == "api-key"
    page.keyboard.type(API_KEYS[0])
    page.keyboard.press("Enter")
    page.wait_for_selector("#status:has-text('Connected')")
    page.click("#tab-models")
    page.wait_for_selector(".grids img", timeout=30_000)  # a card's grid, fetched with the key
    page.screenshot(path=tmp_path / "ui_models.png", full_page=True)
    page.close()
