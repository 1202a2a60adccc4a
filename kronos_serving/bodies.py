"""Parse and validate large JSON bodies without holding the event loop.

A thread does not help here: ``json.loads`` and pydantic's validators are C/Rust code that keep
the GIL for the whole call (0.3 s for a 16 MB body, measured), so the loop would stall anyway.
Instead the parser walks the document itself and hands only small pieces (a row, a short object)
to the C decoder, and validation runs one batch item at a time; between pieces it yields to the
loop every ``SLICE_S``, so health probes and small requests are answered meanwhile.

The cyclic garbage collector is paused while a large body is parsed: the hundreds of thousands of
lists it allocates would otherwise trigger full collections that walk every object of the worker
in one go (0.1-0.3 s each, measured with the model loaded).
"""
from __future__ import annotations

import asyncio
import gc
import json
import time
import typing
import weakref
from typing import Any

from pydantic import BaseModel, ValidationError

SLICE_S = 0.002                    # longest stretch of work between two yields to the loop
RUN_CHARS = 16384                  # array elements decoded together (see _Parser.run_of_elements)
WINDOWS = (256, 4096, 65536)       # a container that ends within one of these is decoded in C
MAX_DEPTH = 64
_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\n\r"


class _Yielder:
    """Yields to the event loop once ``SLICE_S`` of work has passed since the last yield."""

    def __init__(self) -> None:
        self.since = time.perf_counter()

    async def maybe(self) -> None:
        if time.perf_counter() - self.since > SLICE_S:
            await asyncio.sleep(0)
            self.since = time.perf_counter()


class _Parser:
    """A JSON document, decoded piece by piece (same result as ``json.loads``)."""

    def __init__(self, text: str) -> None:
        self.text, self.yielder = text, _Yielder()

    def skip(self, index: int) -> int:
        while index < len(self.text) and self.text[index] in _WHITESPACE:
            index += 1
        return index

    def expect(self, index: int, char: str) -> int:
        index = self.skip(index)
        if self.text[index:index + 1] != char:
            raise json.JSONDecodeError(f"Expecting '{char}'", self.text, index)
        return index + 1

    async def value(self, index: int, depth: int = 0) -> tuple[Any, int]:
        index = self.skip(index)
        await self.yielder.maybe()
        opening = self.text[index:index + 1]
        if opening not in ("[", "{"):  # scalars: the C decoder on the text itself (no copy)
            return _DECODER.raw_decode(self.text, index)
        for size in WINDOWS:  # small containers: decode a bounded slice in C
            try:
                found, length = _DECODER.raw_decode(self.text[index:index + size])
                return found, index + length
            except (json.JSONDecodeError, RecursionError):
                if index + size >= len(self.text):
                    break
        if depth >= MAX_DEPTH:
            raise json.JSONDecodeError("nesting too deep", self.text, index)
        return await (self.array(index, depth) if opening == "[" else self.object(index, depth))

    async def array(self, index: int, depth: int) -> tuple[list, int]:
        items: list = []
        index = self.skip(index + 1)
        if self.text[index:index + 1] == "]":
            return items, index + 1
        while True:
            run, index = self.run_of_elements(index)
            if run is None:
                item, index = await self.value(index, depth + 1)
                items.append(item)
            else:
                items.extend(run)
                await self.yielder.maybe()
            index = self.skip(index)
            if self.text[index:index + 1] == "]":
                return items, index + 1
            index = self.expect(index, ",")

    def run_of_elements(self, index: int) -> tuple[list | None, int]:
        """Many small elements at once: the text from ``index`` to a ``]`` or ``,`` about
        ``RUN_CHARS`` ahead, decoded in C as an array. Only whole elements decode (a cut inside a
        string or a nested element leaves it unbalanced); a prefix that decodes ends at this
        array's own ``]``. Otherwise (None, index): the caller goes element by element."""
        for end in (self.text.find("]", index + RUN_CHARS) + 1, self.text.find(",", index + RUN_CHARS)):
            if end <= index:
                continue
            wrapped = "[" + self.text[index:end] + "]"
            try:
                found, length = _DECODER.raw_decode(wrapped)
            except (json.JSONDecodeError, RecursionError):
                continue
            return found, (end if length == len(wrapped) else index + length - 2)
        return None, index

    async def object(self, index: int, depth: int) -> tuple[dict, int]:
        found: dict = {}
        index = self.skip(index + 1)
        if self.text[index:index + 1] == "}":
            return found, index + 1
        while True:
            index = self.skip(index)
            if self.text[index:index + 1] != '"':
                raise json.JSONDecodeError("Expecting property name enclosed in double quotes",
                                           self.text, index)
            key, index = _DECODER.raw_decode(self.text, index)
            found[key], index = await self.value(self.expect(index, ":"), depth + 1)
            index = self.skip(index)
            if self.text[index:index + 1] == "}":
                return found, index + 1
            index = self.expect(index, ",")


async def parse_json(body: bytes) -> Any:
    """``json.loads(body)``, yielding to the loop while it works; JSONDecodeError if invalid."""
    text = body.decode("utf-8")
    parser = _Parser(text)
    found, end = await parser.value(0)
    if parser.skip(end) != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return found


def _error(cls: type[BaseModel], kind: str, loc: tuple, ctx: dict | None = None,
           value: Any = None) -> ValidationError:
    detail: dict[str, Any] = {"type": kind, "loc": loc, "input": value}
    if ctx is not None:
        detail["ctx"] = ctx
    return ValidationError.from_exception_data(cls.__name__, [detail])


def _too_long(cls: type[BaseModel], item: Any, loc: tuple, max_items: int) -> ValidationError | None:
    """A list field of ``item`` longer than any legal request has (checked before pydantic)."""
    if not isinstance(item, dict):
        return None
    for name, value in item.items():
        if isinstance(value, list) and len(value) > max_items:
            return _error(cls, "too_long", (*loc, name),
                          {"field_type": "List", "max_length": max_items, "actual_length": len(value)})
    return None


def _item_model(cls: type[BaseModel], field: str) -> type[BaseModel] | None:
    """The model of the items of a ``list[Model]`` field of ``cls``, if it is one."""
    info = cls.model_fields.get(field)
    args = typing.get_args(info.annotation) if info else ()
    return args[0] if len(args) == 1 and isinstance(args[0], type) and issubclass(
        args[0], BaseModel) else None


async def validate(cls: type[BaseModel], found: Any, max_list_items: int) -> BaseModel:
    """``cls.model_validate(found)``, one list item at a time for ``list[Model]`` fields; lists
    longer than ``max_list_items`` are refused before pydantic walks them."""
    if not isinstance(found, dict):
        return cls.model_validate(found)
    yielder, validated = _Yielder(), dict(found)
    for name, value in found.items():
        model = _item_model(cls, name)
        if model is None or not isinstance(value, list):
            continue
        if len(value) > max_list_items:
            raise _too_long(cls, {name: value}, (), max_list_items)
        items = []
        for position, item in enumerate(value):
            if (refused := _too_long(cls, item, (name, position), max_list_items)) is not None:
                raise refused
            try:
                items.append(model.model_validate(item))
            except ValidationError as exc:
                await discard([m.data for m in items])
                raise ValidationError.from_exception_data(cls.__name__, [
                    {**{k: v for k, v in e.items() if k in ("type", "input", "ctx")},
                     "loc": (name, position, *e["loc"])} for e in exc.errors(include_url=False)
                ]) from None
            await yielder.maybe()
        validated[name] = items
    if (refused := _too_long(cls, validated, (), max_list_items)) is not None:
        raise refused
    return cls.model_validate(validated)


_LARGE_PARSES: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]" = \
    weakref.WeakKeyDictionary()


async def discard(document: Any) -> None:
    """Free a parsed document a slice at a time: dropping 15 MB of lists in one go holds the loop
    for 0.1-0.2 s (every row freed in one call), so large lists are emptied from the end in
    slices and large children are taken apart the same way."""
    yielder, stack = _Yielder(), [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
            node.clear()
        elif isinstance(node, list):
            while node:
                tail = node[-512:]
                del node[-512:]
                stack.extend(x for x in tail if isinstance(x, (list, dict)) and len(x) > 64)
                del tail  # frees the small elements (rows) of this slice
                await yielder.maybe()
        await yielder.maybe()


async def parse_and_validate(body: bytes, cls: type[BaseModel], max_list_items: int) -> BaseModel:
    """The request model from a large JSON body; invalid JSON raises pydantic's ``json_invalid``
    (what BentoML's own parser raises), so the client gets the same 400. One large body at a time
    per event loop: the others wait without using the CPU, and the loop's other work gets turns."""
    loop = asyncio.get_running_loop()
    async with _LARGE_PARSES.setdefault(loop, asyncio.Semaphore(1)):
        collecting = gc.isenabled()
        gc.disable()
        found: Any = None
        try:
            found = await parse_json(body)
            return await validate(cls, found, max_list_items)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
            if isinstance(exc, ValidationError):
                raise
            raise _error(cls, "json_invalid", (), {"error": str(exc)[:200]}) from None
        finally:
            await discard(found)
            if collecting:
                gc.enable()
