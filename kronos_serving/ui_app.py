"""``/ui``: the static forecast-quality page (HTML, vanilla JS, vendored Chart.js) and the example CSV."""
from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .settings import SOURCE_ROOT

UI_DIR = Path(__file__).resolve().parent / "ui"
EXAMPLE_CSV = SOURCE_ROOT / "examples" / "prices.csv"


async def example_csv(request: Request) -> FileResponse:
    return FileResponse(EXAMPLE_CSV, media_type="text/csv")


ui_app = Starlette(routes=[Route("/example.csv", example_csv),
                           Mount("/", StaticFiles(directory=UI_DIR, html=True))])
