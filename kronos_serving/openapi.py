"""The OpenAPI document at ``/docs.json`` (what the Swagger UI at ``/`` shows), completed.

BentoML describes our forecast routes with an untyped object answer and its own generic errors.
This ASGI middleware rewrites the document: typed success bodies (``SingleResponse``,
``BatchResponse``), the error bodies the service really sends (400, 401, 413, 415, 429, 500, 503,
504), request examples Swagger UI offers in a drop-down, the ``/v1`` health routes, and nulls in
OpenAPI 3.0 terms (``nullable``: the optional fields accept null).
"""
from __future__ import annotations

import json
from typing import Any, Callable

from pydantic import BaseModel

from .schemas import (SAMPLED_EXAMPLE, SINGLE_EXAMPLE, BatchResponse, ErrorBody, SingleResponse)

REF = "#/components/schemas/{model}"
DOC_PATH = "/docs.json"
ERRORS = {
    400: "Bad input: `error` names the field (`data[3][1]`, `batch[2].pred_len`).",
    401: "Missing or invalid API key (when `api_keys` is set).",
    413: "Request body over `max_request_size_mb`.",
    415: "Content-Type is not JSON.",
    429: "Over `rate_limit_per_minute`; see `Retry-After`.",
    500: "The runtime failed on this request's batch.",
    503: "Model loading or failed to load, queue full, or draining; see `Retry-After`.",
    504: "Not answered within `timeout_s` (queue wait and forecast).",
}
FORECAST_ROUTES = {
    "/v1/predict/single": (SingleResponse, {
        "greedy": {"summary": "Greedy forecast (deterministic)", "value": SINGLE_EXAMPLE},
        "sampled": {"summary": "Sampled, seeded, with timestamps and quantiles",
                    "value": SAMPLED_EXAMPLE}}),
    "/v1/predict/batch": (BatchResponse, {
        "two_series": {"summary": "Two series in one call", "value": {
            "batch": [SINGLE_EXAMPLE, {**SINGLE_EXAMPLE, "pred_len": 1}]}}}),
}
# With `api_keys` set, Swagger UI's "Authorize" button sends either one (no effect without keys).
SECURITY_SCHEMES = {"bearer": {"type": "http", "scheme": "bearer"},
                    "api_key": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
HEALTH_ROUTES = {
    "/v1/healthz": ("Liveness: the process answers.", {200: "Alive."}),
    "/v1/readyz": ("Readiness: 200 once every worker loaded its model (device, model, versions, "
                   "variants, per-worker devices); 503 while loading, failed or draining.",
                   {200: "Ready.", 503: "Not ready: `status` is loading, failed or draining."}),
    "/v1/metrics": ("Prometheus metrics of every worker (text format).", {200: "Metrics."}),
}


def schemas_of(*models: type[BaseModel]) -> dict[str, Any]:
    """Component schemas of ``models`` and the models they use."""
    components: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=REF)
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    return components


def nullable(node: Any) -> Any:
    """OpenAPI 3.0 spelling of JSON null: ``anyOf: [X, {type: null}]`` (pydantic) becomes X with
    ``nullable: true``, and an optional property whose default is null (BentoML drops the null
    from its inline request bodies) is marked ``nullable``: the routes accept null for them."""
    if isinstance(node, list):
        return [nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: nullable(value) for key, value in node.items()}
    options = node.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        rest = [option for option in options if option != {"type": "null"}]
        node.pop("anyOf")
        node.update(rest[0] if len(rest) == 1 else {"anyOf": rest})
        node["nullable"] = True
    required = set(node.get("required", []))
    for name, prop in (node.get("properties") or {}).items():
        if isinstance(prop, dict) and name not in required and "default" in prop and prop["default"] is None:
            prop["nullable"] = True
    return node


def json_response(description: str, model: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": REF.format(model=model)}}}}


def complete(document: dict[str, Any], secured: bool = False) -> dict[str, Any]:
    """The document with typed answers, documented errors, examples and the /v1 health routes;
    ``secured`` (API keys configured) adds the security schemes the forecast routes require."""
    components = document.setdefault("components", {}).setdefault("schemas", {})
    components.update(schemas_of(SingleResponse, BatchResponse, ErrorBody))
    if secured:
        document["components"]["securitySchemes"] = SECURITY_SCHEMES
    for path, (response, examples) in FORECAST_ROUTES.items():
        operation = document.get("paths", {}).get(path, {}).get("post")
        if operation is None:
            continue
        operation["responses"] = {
            "200": json_response("The forecast.", response.__name__),
            **{str(code): json_response(text, ErrorBody.__name__) for code, text in ERRORS.items()}}
        operation["requestBody"]["content"]["application/json"]["examples"] = examples
        if secured:
            operation["security"] = [{name: []} for name in SECURITY_SCHEMES]
        body = operation["requestBody"]["content"]["application/json"]
        body["schema"] = nullable(body["schema"])
    for path, (description, answers) in HEALTH_ROUTES.items():
        document["paths"][path] = {"get": {
            "tags": ["Health"], "description": description, "operationId": path.strip("/").replace("/", "_"),
            "responses": {str(code): {"description": text} for code, text in answers.items()}}}
    document["components"]["schemas"] = nullable(document["components"]["schemas"])
    return document


class OpenAPIMiddleware:
    """Rewrites the answer to ``GET /docs.json`` with :func:`complete`."""

    def __init__(self, app: Callable, secured: bool = False) -> None:
        self.app, self.secured = app, secured

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("path") != DOC_PATH:
            return await self.app(scope, receive, send)
        start: dict = {}
        chunks: list[bytes] = []

        async def capture(message: dict) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    await finish()

        async def finish() -> None:
            body = b"".join(chunks)
            if start.get("status") == 200:
                body = json.dumps(complete(json.loads(body), self.secured)).encode()
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, capture)
