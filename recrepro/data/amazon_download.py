"""Amazon Reviews 2023 raw files: download them safely and read them back as a gzip stream.

:func:`category_urls` / :func:`download` / :func:`fetch_category` fetch a category's reviews and
metadata files with the standard library only; a download resumes after an interruption and is
checked (length, one complete gzip stream, SHA-256) before it is renamed onto its destination.
:func:`inflate` streams a gzip file's decompressed bytes (the gzip check, :mod:`recrepro.data.amazon`).

Details (resume, checks, errors, ``downloads.json``): docs/amazon-data.md, "Downloading".
"""

from __future__ import annotations

import os
import queue
import threading
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any, Iterator

import orjson
from tqdm.auto import tqdm

from recrepro.data.schema import DataError
from recrepro.io import sha256_file, write_json_atomic

DOWNLOADS_NAME = "downloads.json"
# Compressed bytes read per step. The JSON lines compress about 4:1, so one step yields a few MB
# of text: large enough that per-step overhead vanishes, small enough to keep memory flat.
READ_CHUNK_BYTES = 1 << 20
# Decompressed chunks the inflater thread may run ahead of the parser (bounds memory).
_PREFETCH_CHUNKS = 4
# wbits for zlib's gzip mode: zlib parses the header and checks the CRC-32 and length trailer.
_GZIP_WBITS = zlib.MAX_WBITS | 16
GZIP_ERRORS = (EOFError, zlib.error)
# Everything urllib / http.client / sockets raise for a failed or cut-off transfer.
_NETWORK_ERRORS = (urllib.error.URLError, HTTPException, TimeoutError, ConnectionError, OSError)


class DownloadError(OSError):
    """A transfer failed for a network reason; the message names the URL. Safe to retry."""


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DownloadRecord:
    """One downloaded file: where it came from, where it is, its size and SHA-256 (hex)."""

    url: str
    path: Path
    bytes: int
    sha256: str


def category_urls(base_url: str, category: str) -> dict[str, str]:
    """The official reviews and metadata URLs of one category, keyed ``reviews`` / ``meta``."""
    base = base_url.rstrip("/")
    return {
        "reviews": f"{base}/review_categories/{category}.jsonl.gz",
        "meta": f"{base}/meta_categories/meta_{category}.jsonl.gz",
    }


def raw_paths(raw_dir: Path, category: str) -> dict[str, Path]:
    """Where :func:`fetch_category` puts the two files (named as in the official URLs)."""
    folder = Path(raw_dir) / category
    return {
        "reviews": folder / f"{category}.jsonl.gz",
        "meta": folder / f"meta_{category}.jsonl.gz",
    }


def part_path(dest: Path) -> Path:
    """The in-progress sibling of ``dest``; only a verified download is renamed onto ``dest``."""
    return dest.with_suffix(dest.suffix + ".part")


def download(
    url: str,
    dest: Path,
    *,
    expected_sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    chunk_bytes: int = 1 << 20,
) -> DownloadRecord:
    """Download ``url`` to ``dest``, resuming an earlier partial download.

    If ``dest`` exists and matches ``expected_sha256`` nothing is fetched; with no hash given (the
    download record was lost), an existing ``dest`` is kept only when it reads as one complete gzip
    stream, so that a truncated or damaged file never gets its hash recorded. Otherwise the bytes go
    into ``<dest>.part``; an existing ``.part`` is resumed with a ``Range`` request (a server that
    ignores ``Range`` and answers 200 restarts it from byte zero).

    ``.part`` policy: after a network failure or a transfer that ended short of the announced
    length, the ``.part`` is kept and :class:`DownloadError` is raised (call again to resume).
    When the transfer is complete but the bytes are bad (not one complete gzip stream, or a
    SHA-256 other than ``expected_sha256``) the ``.part`` is deleted, because resuming would only
    reproduce the same bytes, and :class:`DataError` is raised. (A ``.part`` left from an older
    version of the remote file fails these checks the same way; the next call starts afresh.)
    ``dest`` is never touched unless the new file passed every check, so a failed call leaves any
    earlier ``dest`` as it was.
    """
    dest = Path(dest)
    want = expected_sha256.lower() if expected_sha256 else None
    if dest.is_file() and (want is not None or _complete_gzip(dest)):
        digest = sha256_file(dest)
        if want is None or digest == want:
            return DownloadRecord(url, dest, dest.stat().st_size, digest)
    # No local copy, or a stale or damaged one: fetch again; dest is replaced only once verified.
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    _transfer(url, part, progress=progress, timeout=timeout, chunk_bytes=chunk_bytes)
    try:
        check_gzip(part, name=dest)
        digest = sha256_file(part)
        if want is not None and digest != want:
            raise DataError(
                f"{dest}: SHA-256 of the download from {url} is {digest}, expected {want}; "
                "the file changed upstream or was corrupted in transit"
            )
    except DataError:
        part.unlink(missing_ok=True)
        raise
    size = part.stat().st_size
    os.replace(part, dest)
    return DownloadRecord(url, dest, size, digest)


def _transfer(url: str, part: Path, *, progress: bool, timeout: float, chunk_bytes: int) -> None:
    """Bring ``part`` up to the full remote file, appending to what is already there."""
    offset = part.stat().st_size if part.is_file() else 0
    try:
        response = _request(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or offset == 0:
            raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
        # 416: nothing left after our offset. Either the .part is already whole, or it is longer
        # than the remote file (the file changed): then start over.
        total = _range_total(exc.headers.get("Content-Range"))
        exc.close()
        if total == offset:
            return
        part.unlink()
        offset = 0
        response = _request_or_raise(url, 0, timeout)
    except _NETWORK_ERRORS as exc:
        raise DownloadError(f"download of {url} failed: {exc}") from exc
    with response:
        try:
            offset, total = _resume_point(response, url, offset)
        except DownloadError:
            part.unlink(missing_ok=True)  # the server's answer does not fit the .part: start over
            raise
        _copy_body(response, part, url, offset, total, progress=progress, chunk_bytes=chunk_bytes)
    size = part.stat().st_size
    if total is not None and size < total:
        raise DownloadError(
            f"download of {url} ended after {size} of {total} bytes; "
            f"{part} kept, call again to resume"
        )
    if total is not None and size > total:
        part.unlink()
        raise DownloadError(f"download of {url} gave {size} bytes, more than the {total} announced")


def _request(url: str, offset: int, timeout: float) -> Any:
    """Open ``url``, asking for the bytes from ``offset`` on when resuming."""
    headers = {"User-Agent": "recrepro-downloader"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _request_or_raise(url: str, offset: int, timeout: float) -> Any:
    try:
        return _request(url, offset, timeout)
    except _NETWORK_ERRORS as exc:
        raise DownloadError(f"download of {url} failed: {exc}") from exc


def _resume_point(response: Any, url: str, offset: int) -> tuple[int, int | None]:
    """From the response status, where writing starts and the expected final size (if known)."""
    length = response.headers.get("Content-Length")
    body = int(length) if length is not None and length.isdigit() else None
    if response.status == 206:
        start, end, total = _content_range(response.headers.get("Content-Range"), url)
        if start != offset:
            raise DownloadError(f"download of {url}: asked for byte {offset} on, got {start} on")
        if body is not None and end is not None and body != end - start + 1:
            raise DownloadError(f"download of {url}: Content-Length disagrees with Content-Range")
        return offset, total
    if response.status == 200:
        # A full answer: either a fresh download, or a server that ignored our Range header.
        return 0, body
    raise DownloadError(f"download of {url}: unexpected HTTP status {response.status}")


def _range_total(header: str | None) -> int | None:
    """The TOTAL of a ``Content-Range: bytes .../TOTAL`` header; None if absent or unknown."""
    total = (header or "").rpartition("/")[2]
    return int(total) if total.isdigit() else None


def _content_range(header: str | None, url: str) -> tuple[int | None, int | None, int | None]:
    """Parse ``bytes START-END/TOTAL`` or ``bytes */TOTAL``; unknown parts are None."""
    if not header or not header.startswith("bytes "):
        raise DownloadError(f"download of {url}: missing or bad Content-Range {header!r}")
    span, _, total_text = header[len("bytes "):].partition("/")
    total = int(total_text) if total_text.isdigit() else None
    if span == "*":
        return None, None, total
    start_text, _, end_text = span.partition("-")
    if not (start_text.isdigit() and end_text.isdigit()):
        raise DownloadError(f"download of {url}: bad Content-Range {header!r}")
    return int(start_text), int(end_text), total


def _copy_body(
    response: Any, part: Path, url: str, offset: int, total: int | None, *,
    progress: bool, chunk_bytes: int,
) -> None:
    """Stream the response body into ``part`` (appending at ``offset``, truncating at 0)."""
    mode = "ab" if offset else "wb"
    bar = tqdm(
        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
        desc=part.name.removesuffix(".part"), disable=not progress, leave=False,
    )
    with bar, open(part, mode) as sink:
        while True:
            try:
                chunk = response.read(chunk_bytes)
            except _NETWORK_ERRORS as exc:
                raise DownloadError(
                    f"download of {url} broke off after {sink.tell()} bytes ({exc}); "
                    f"{part} kept, call again to resume"
                ) from exc
            if not chunk:
                return
            sink.write(chunk)
            bar.update(len(chunk))


def check_gzip(path: Path, name: Path | None = None) -> None:
    """Read ``path`` through gzip once; a truncated or corrupt stream raises :class:`DataError`.

    zlib verifies the CRC-32 and length stored at the end of each gzip member, so a clean read to
    the end proves the file is complete. ``name`` is the file named in the error (the final
    ``dest`` rather than its ``.part``).
    """
    try:
        for _ in inflate(path):
            pass
    except GZIP_ERRORS as exc:
        shown = name if name is not None else path
        raise DataError(f"{shown}: not a complete gzip file ({type(exc).__name__}: {exc})") from exc


def _complete_gzip(path: Path) -> bool:
    """Whether ``path`` reads through as one complete gzip stream (see :func:`check_gzip`)."""
    try:
        check_gzip(path)
    except DataError:
        return False
    return True


def fetch_category(
    raw_dir: Path, base_url: str, category: str, progress: bool = True,
) -> dict[str, DownloadRecord]:
    """Download the reviews and metadata files of ``category`` into ``raw_dir/<category>/``.

    ``downloads.json`` in that folder records url, file name, size and SHA-256 of each file and is
    rewritten atomically after each file. The recorded hash pins the data: on a later call a file
    whose bytes still match it is not fetched again, and a file that no longer matches is fetched
    again and must match the record (delete ``downloads.json`` to accept a changed upstream file).
    Without a record (``downloads.json`` lost, or the URL changed) a local file is verified as one
    complete gzip stream before its hash is recorded; a file that fails is fetched again.
    """
    paths = raw_paths(raw_dir, category)
    manifest_path = paths["reviews"].parent / DOWNLOADS_NAME
    manifest = _read_downloads(manifest_path)
    files: dict[str, Any] = manifest.setdefault("files", {})
    records: dict[str, DownloadRecord] = {}
    for kind, url in category_urls(base_url, category).items():
        previous = files.get(kind)
        same_url = isinstance(previous, dict) and previous.get("url") == url
        pinned = previous.get("sha256") if same_url else None
        record = download(url, paths[kind], expected_sha256=pinned, progress=progress)
        records[kind] = record
        files[kind] = {
            "url": record.url, "file": record.path.name, "bytes": record.bytes,
            "sha256": record.sha256,
        }
        manifest["category"] = category
        write_json_atomic(manifest_path, manifest)
    return records


def _read_downloads(path: Path) -> dict[str, Any]:
    """The existing ``downloads.json`` as a dict, or an empty one when there is none yet."""
    if not path.is_file():
        return {}
    try:
        manifest = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); delete it to download afresh") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files", {}), dict):
        raise DataError(f"{path}: expected an object with a 'files' mapping; delete it to redo")
    return manifest


def inflate(path: Path, read_bytes: int = READ_CHUNK_BYTES) -> Iterator[bytes]:
    """Yield the decompressed bytes of every gzip member in ``path``, chunk by chunk.

    Raises EOFError for an empty file or a stream cut off before its end marker, and zlib.error
    for corrupt data (bad header, bad CRC-32 or length in a member trailer, trailing garbage).
    zlib is used directly rather than through :mod:`gzip` because it checks the trailer itself
    and releases the GIL while inflating, which :func:`prefetch` exploits.
    """
    with open(path, "rb") as raw:
        inflater = zlib.decompressobj(_GZIP_WBITS)
        in_member = False  # bytes of the current member were seen but not its end
        empty = True
        while data := raw.read(read_bytes):
            empty = False
            while data:
                in_member = True
                out = inflater.decompress(data)
                if out:
                    yield out
                if not inflater.eof:
                    break  # without max_length zlib consumed all of data
                # A member ended; bytes after it must start another member (concatenated gzip).
                data = inflater.unused_data
                inflater = zlib.decompressobj(_GZIP_WBITS)
                in_member = False
        if empty:
            raise EOFError("empty file")
        if in_member:
            raise EOFError("compressed data ends before the end-of-stream marker")


def prefetch(chunks: Iterator[bytes], depth: int = _PREFETCH_CHUNKS) -> Iterator[bytes]:
    """Run the iterator ``chunks`` in a helper thread, at most ``depth`` items ahead.

    zlib releases the GIL while inflating, so decompression overlaps with JSON parsing on a
    second core; the bounded queue keeps memory flat. An exception in the helper is re-raised
    here, in order, after the chunks produced before it.
    """
    pipe: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        # Poll so that the helper notices when the consumer has stopped reading (stop is set).
        while not stop.is_set():
            try:
                pipe.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for chunk in chunks:
                if not put(("chunk", chunk)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed over to the consumer thread, which raises it
            put(("error", exc))
        finally:
            chunks.close()  # type: ignore[attr-defined]  # closes the file if stopped early

    helper = threading.Thread(target=work, name="recrepro-inflate", daemon=True)
    helper.start()
    try:
        while True:
            kind, payload = pipe.get()
            if kind == "chunk":
                yield payload
            elif kind == "error":
                raise payload
            else:
                return
    finally:
        stop.set()
        helper.join()
