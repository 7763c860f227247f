"""The web page for people at /ui: static HTML, CSS and JavaScript shipped in the package.

Mounted on the BentoML service with ``bentoml.asgi_app`` (service/service.py). The page calls
the service's own endpoints from the browser, with the API key typed into it; nothing here
computes anything. Besides the static files, one route serves the sample grids a model card
names (``GET /ui/grids/{model}/{file}``), which live beside the checkpoint's weights and are
reachable by no other route; like every route but the page itself, it needs a key when keys
are set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "ui_static"
PREFIX = "/ui"
# The page's own files stay open with API keys on: the page is what asks for the key.
OPEN_PATHS = frozenset(
    {PREFIX, PREFIX + "/"} | {f"{PREFIX}/{p.name}" for p in STATIC.iterdir() if p.is_file()}
)


def card_grids(card: Mapping) -> set[str]:
    """The sample-grid file names a model card lists (sample_quality.samplers.*.grid)."""
    samplers = (card.get("sample_quality") or {}).get("samplers") or {}
    return {figures["grid"] for figures in samplers.values() if figures.get("grid")}


def ui_app(served_directories: Callable[[], Mapping[str, Path]]) -> Starlette:
    """The ASGI app behind /ui; ``served_directories`` gives name -> checkpoint directory."""
    from models.core.checkpoints import read_model_card

    async def grid(request: Request):
        name, file = request.path_params["model"], request.path_params["file"]
        directory = served_directories().get(name)
        if directory is None:
            return JSONResponse({"error": f"model: no model is served as {name!r}"}, 404)
        if file not in card_grids(read_model_card(directory)):
            message = f"file: the model card of {name!r} lists no sample grid {file!r}"
            return JSONResponse({"error": message, "field": "file"}, 404)
        return FileResponse(directory / file, media_type="image/png")

    return Starlette(
        routes=[
            Route("/grids/{model}/{file}", grid),
            Mount("/", StaticFiles(directory=STATIC, html=True)),
        ]
    )
