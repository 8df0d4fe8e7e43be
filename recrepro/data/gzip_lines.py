"""Gzipped JSON-lines files read as batches of lines, and the errors that name a file and line.

:func:`iter_line_batches` is the one reader of the raw Amazon files (:mod:`recrepro.data.amazon`):
decompression runs in a helper thread (:func:`~recrepro.data.amazon_download.prefetch`), and a
truncated or corrupt gzip stream raises :class:`~recrepro.data.schema.DataError` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from recrepro.data.amazon_download import GZIP_ERRORS, READ_CHUNK_BYTES, inflate, prefetch
from recrepro.data.schema import DataError


def iter_line_batches(
    path: Path, read_bytes: int = READ_CHUNK_BYTES,
) -> Iterator[tuple[int, list[bytes]]]:
    """Yield ``(first_line_no, lines)`` from a gzipped text file, one decompressed chunk at a time.

    Lines come without their newline; line numbers are 1-based and count blank lines. Batches
    instead of single lines keep the per-line cost of the reader to a list step. A truncated or
    corrupt gzip stream raises :class:`DataError` naming the file and the last complete line.
    """
    path = Path(path)
    line_no = 0
    tail = b""
    try:
        for chunk in prefetch(inflate(path, read_bytes)):
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()  # a line cut by the chunk border is finished by the next chunk
            if lines:
                yield line_no + 1, lines
                line_no += len(lines)
    except GZIP_ERRORS as exc:
        raise DataError(
            f"{path}: truncated or corrupt gzip after line {line_no} ({type(exc).__name__}: {exc})"
        ) from exc
    if tail:
        yield line_no + 1, [tail]


# The parsers' hot loops carry no line counter; on the rare bad line its number is recovered with
# ``batch.index(raw)``. An identical earlier line would have failed the same way and raised
# first, so the first match is this line.


def json_error(
    raw: bytes, batch: list[bytes], first: int, path: Path, exc: Exception,
) -> DataError:
    """The error for a line of ``batch`` (whose first line is number ``first``) that is not JSON."""
    return DataError(f"{path}:{first + batch.index(raw)}: not valid JSON ({exc})")


def object_error(value: Any, raw: bytes, batch: list[bytes], first: int, path: Path) -> DataError:
    """The error for a line that is JSON but not an object (``value`` is what it holds)."""
    line_no = first + batch.index(raw)
    return DataError(f"{path}:{line_no}: expected a JSON object, got {type(value).__name__}")
