"""Errors raised by the runtime for bad input (mapped to 4xx by the service)."""
from __future__ import annotations


class InputError(ValueError):
    """Bad forecast input; ``field`` names the offending request field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, incomplete or does not match its config."""
