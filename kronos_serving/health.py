"""``/v1/healthz``, ``/v1/readyz`` and ``/v1/metrics``: a small ASGI app mounted on the service."""
from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .metrics import exposition


def _service():
    import bentoml

    return bentoml.get_current_service()


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "alive"})


async def readyz(request: Request) -> JSONResponse:
    status = _service().readiness()
    return JSONResponse(status, status_code=200 if status["ready"] else 503,
                        headers=None if status["ready"] else {"Retry-After": "5"})


async def metrics(request: Request) -> Response:
    body, content_type = exposition()
    return Response(body, media_type=content_type)


health_app = Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz),
                               Route("/metrics", metrics)])
