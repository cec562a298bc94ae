"""Large JSON documents written in pieces on the event loop, which gets its turn between them.

`/config_dump` of a big mesh is tens of megabytes: built and encoded in one go it held the
event loop for most of a second, and every proxied connection of the process waited that long.
`stream_json` writes the same text `json.dumps(value, indent=2, default=str)` does, in chunks of
about `CHUNK` bytes, and checkpoints whenever it has worked `SLICE` seconds, so other tasks run
between slices. A `LazyList` is written as a JSON array whose elements are rendered only when
the writer reaches them: the provider takes its snapshot (the items) at once, and the cost of
rendering each one is spread over the slices too.

Encoding stays on the loop rather than in a thread on purpose: the providers read live state
that only the loop changes (a thread would see it change mid-iteration), and an encoding thread
would take the GIL from the loop for whole switch intervals anyway.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio
import trio.lowlevel

CHUNK = 64 * 1024
SLICE = 0.002  # seconds of encoding between checkpoints
_CHECK_EVERY = 64  # pieces between clock reads


@dataclass(frozen=True, slots=True)
class LazyList:
    """A JSON array of `render(item)` for each of `items`, rendered as it is written."""

    items: Sequence[Any]
    render: Callable[[Any], Any]

    def __iter__(self) -> Iterator[Any]:
        return (self.render(item) for item in self.items)

    def __len__(self) -> int:
        return len(self.items)


def _key(key: object) -> str:
    # As json.dumps turns dictionary keys into strings.
    if isinstance(key, str):
        return json.dumps(key)
    if key is None or isinstance(key, bool | int | float):
        return json.dumps(json.dumps(key))
    return json.dumps(str(key))


def _pieces(value: Any, level: int) -> Iterator[str]:
    if isinstance(value, Mapping):
        if not value:
            yield "{}"
            return
        inner = "\n" + "  " * (level + 1)
        separator = "{" + inner
        for key, item in value.items():
            yield separator + _key(key) + ": "
            yield from _pieces(item, level + 1)
            separator = "," + inner
        yield "\n" + "  " * level + "}"
    elif isinstance(value, list | tuple | LazyList):
        if not len(value):
            yield "[]"
            return
        inner = "\n" + "  " * (level + 1)
        separator = "[" + inner
        for item in value:
            yield separator
            yield from _pieces(item, level + 1)
            separator = "," + inner
        yield "\n" + "  " * level + "]"
    elif value is None or isinstance(value, str | bool | int | float):
        yield json.dumps(value)
    else:
        yield json.dumps(str(value))


async def stream_json(value: Any) -> AsyncGenerator[bytes, None]:
    """`value` as indented JSON, in chunks, yielding the event loop every `SLICE` seconds."""
    parts: list[str] = []
    size = 0
    deadline = time.perf_counter() + SLICE
    for count, piece in enumerate(_pieces(value, 0), 1):
        parts.append(piece)
        size += len(piece)
        if size >= CHUNK:
            yield "".join(parts).encode()
            parts.clear()
            size = 0
        if count % _CHECK_EVERY == 0 and time.perf_counter() >= deadline:
            await trio.lowlevel.checkpoint()
            deadline = time.perf_counter() + SLICE
    yield "".join(parts).encode()
