"""Queue message bodies: the HTTP request bodies, parsed and validated as the routes do.

A body is a ``/v1/predict/single`` body, or a ``/v1/predict/batch`` body (``{"batch": [...]}``)
with an optional top-level ``model_version`` that pins every item not pinning its own. Bad input
raises :class:`InvalidMessage`, a 400 whose body is the one HTTP answers (schema errors keep
pydantic's ``detail`` and name the field path, e.g. ``batch[0].data[3][1]``).
"""
from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from ..forecasting import RequestFailed
from ..schemas import BatchRequest, SingleRequest
from ..validation_errors import with_field


class InvalidMessage(RequestFailed):
    """A message that can never succeed: answered with a 400 and acknowledged, never retried."""

    def __init__(self, error: str, field: str, detail: list[dict[str, Any]] | None = None) -> None:
        super().__init__(400, error, field)
        self.detail = detail

    def body(self, request_id: str) -> dict[str, Any]:
        body = super().body(request_id)
        if self.detail is not None:
            body["detail"] = self.detail
        return body


def schema_error(exc: ValidationError) -> InvalidMessage:
    """The pydantic error as HTTP reports it (BentoML's body, rewritten with the field path)."""
    body = with_field({"error": f"{exc.error_count()} validation error for {exc.title}",
                       "detail": exc.errors(include_context=False, include_input=False)})
    return InvalidMessage(body["error"], body["field"], body["detail"])


def pin_items(payload: dict[str, Any]) -> dict[str, Any]:
    """Apply a batch's top-level ``model_version`` to the items that do not name one."""
    version = payload.pop("model_version", None)
    if version is not None and isinstance(payload["batch"], list):
        payload["batch"] = [{"model_version": version, **item} if isinstance(item, dict) else item
                            for item in payload["batch"]]
    return payload


def parse_body(raw: bytes) -> tuple[list[SingleRequest], bool]:
    """(validated bodies, whether it is a batch); raises :class:`InvalidMessage`."""
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidMessage(f"body: not valid JSON ({type(exc).__name__})", "body") from exc
    try:
        if isinstance(payload, dict) and "batch" in payload:
            return BatchRequest.model_validate(pin_items(payload)).batch, True
        return [SingleRequest.model_validate(payload)], False
    except ValidationError as exc:
        raise schema_error(exc) from exc
