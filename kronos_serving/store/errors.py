"""Store errors as log and API text."""
from __future__ import annotations


def describe(exc: BaseException) -> str:
    """An error's type and first line (SQLAlchemy puts the statement's parameters further down,
    which could hold input values)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"
