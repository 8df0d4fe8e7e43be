"""Tests of the Amazon Reviews 2023 raw-data layer (recrepro.data.amazon).

Fixture files are written in the official format (gzipped JSON lines with the real field names)
and served from a local ``http.server`` on 127.0.0.1; nothing touches the network.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest

from recrepro.data import amazon_download
from recrepro.data.amazon import AmazonTables, iter_line_batches, load_category, read_meta, read_reviews
from recrepro.data.amazon_download import DownloadError, DownloadRecord, category_urls, download, fetch_category
from recrepro.data.schema import INTERACTION_COLUMNS, ITEM_COLUMNS, DataError

CATEGORY = "Video_Games"
MS = 1000
T0 = 1_672_531_200  # 2023-01-01 00:00:00 UTC, in seconds


# ---------------------------------------------------------------- official-format fixtures


def review(user: str | None, item: str | None, ts_ms: Any, rating: Any = 5.0, **extra: Any) -> dict:
    """A review line with every official field; None leaves the field out."""
    row = {
        "rating": rating,
        "title": "Great game",
        "text": "Played it for weeks. " * 5,
        "images": [],
        "asin": (item or "B000000000") + "X",
        "parent_asin": item,
        "user_id": user,
        "timestamp": ts_ms,
        "helpful_vote": 0,
        "verified_purchase": True,
    }
    row.update(extra)
    return {k: v for k, v in row.items() if v is not None}


def meta(item: str | None, **fields: Any) -> dict:
    """A metadata line with every official field; overrides via keyword, None drops a field."""
    row = {
        "main_category": "Video Games",
        "title": f"Title of {item}",
        "average_rating": 4.5,
        "rating_number": 120,
        "features": ["fun"],
        "description": ["A game."],
        "price": 19.99,
        "images": [{"thumb": "t.jpg", "large": "l.jpg", "variant": "MAIN", "hi_res": None}],
        "videos": [],
        "store": "Nintendo",
        "categories": ["Video Games", "PC", "Games"],
        "details": {"Release date": "2020"},
        "parent_asin": item,
        "bought_together": None,
    }
    row.update(fields)
    return {k: v for k, v in row.items() if v is not None or k == "bought_together"}


def gz_lines(rows: list[Any]) -> bytes:
    """Gzipped JSON lines; a str row is written verbatim (for bad lines)."""
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    return gzip.compress(text.encode())


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- local HTTP server


class FileServer(ThreadingHTTPServer):
    """Serves ``files`` (url path -> bytes) and logs each request.

    mode "range": honours ``Range: bytes=N-`` (206, or 416 past the end);
    mode "ignore-range": always answers 200 with the whole file;
    mode "cut": announces the full length but sends only half of the body, then closes.
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.log: list[dict[str, Any]] = []
        self.mode = "range"

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class Handler(BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        body = self.server.files.get(self.path)
        wanted = self.headers.get("Range")
        entry: dict[str, Any] = {"path": self.path, "range": wanted, "status": 404, "sent": 0}
        self.server.log.append(entry)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if wanted and self.server.mode != "ignore-range":
            start = int(re.fullmatch(r"bytes=(\d+)-", wanted)[1])
            if start >= len(body):
                entry["status"] = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            entry["status"] = 206
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            entry["status"] = 200
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.server.mode == "cut":
            payload = payload[: len(payload) // 2]
        entry["sent"] = len(payload)
        self.wfile.write(payload)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    for scheme in ("http", "https", "all"):  # a proxy must not intercept 127.0.0.1
        monkeypatch.delenv(f"{scheme}_proxy", raising=False)
        monkeypatch.delenv(f"{scheme.upper()}_PROXY", raising=False)
    srv = FileServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def body() -> bytes:
    # Several KB, so that "half of the file" is a meaningful resume point.
    return gz_lines([review(f"U{i}", f"I{i % 7}", (T0 + i) * MS) for i in range(200)])


# ---------------------------------------------------------------- download


def test_category_urls() -> None:
    assert category_urls("https://h/x", "CDs_and_Vinyl") == {
        "reviews": "https://h/x/review_categories/CDs_and_Vinyl.jsonl.gz",
        "meta": "https://h/x/meta_categories/meta_CDs_and_Vinyl.jsonl.gz",
    }


def test_download_full_file_records_size_and_sha(server: FileServer, body: bytes,
                                                  tmp_path: Path) -> None:
    server.files["/f.jsonl.gz"] = body
    dest = tmp_path / "f.jsonl.gz"
    record = download(server.url("/f.jsonl.gz"), dest, progress=False)
    assert record == DownloadRecord(server.url("/f.jsonl.gz"), dest, len(body),
                                    hashlib.sha256(body).hexdigest())
    assert dest.read_bytes() == body
    assert not amazon_download.part_path(dest).exists()
    assert [(e["range"], e["status"]) for e in server.log] == [(None, 200)]
    # An existing dest (matching the hash when given) is not fetched again.
    assert download(server.url("/f.jsonl.gz"), dest, expected_sha256=record.sha256,
                    progress=False) == record
    assert len(server.log) == 1


def test_download_resumes_a_partial_file(server: FileServer, body: bytes, tmp_path: Path) -> None:
    server.files["/f.gz"] = body
    dest = tmp_path / "f.gz"
    have = len(body) // 3
    write(amazon_download.part_path(dest), body[:have])
    record = download(server.url("/f.gz"), dest, progress=False, chunk_bytes=512)
    assert dest.read_bytes() == body and record.bytes == len(body)
    assert server.log == [{"path": "/f.gz", "range": f"bytes={have}-", "status": 206,
                           "sent": len(body) - have}]


def test_download_restarts_when_server_ignores_range(server: FileServer, body: bytes,
                                                      tmp_path: Path) -> None:
    server.files["/f.gz"] = body
    server.mode = "ignore-range"
    dest = tmp_path / "f.gz"
    write(amazon_download.part_path(dest), b"stale bytes that must not be kept")
    download(server.url("/f.gz"), dest, progress=False)
    assert dest.read_bytes() == body
    assert [(e["status"], e["sent"]) for e in server.log] == [(200, len(body))]


def test_download_of_an_already_complete_part_asks_nothing_more(server: FileServer, body: bytes,
                                                                tmp_path: Path) -> None:
    server.files["/f.gz"] = body
    dest = tmp_path / "f.gz"
    write(amazon_download.part_path(dest), body)
    download(server.url("/f.gz"), dest, progress=False)
    assert dest.read_bytes() == body
    assert [(e["status"], e["sent"]) for e in server.log] == [(416, 0)]


def test_cut_connection_keeps_part_and_next_call_resumes(server: FileServer, body: bytes,
                                                         tmp_path: Path) -> None:
    server.files["/f.gz"] = body
    server.mode = "cut"
    dest = tmp_path / "f.gz"
    with pytest.raises(DownloadError, match=re.escape(server.url("/f.gz"))):
        download(server.url("/f.gz"), dest, progress=False)
    part = amazon_download.part_path(dest)
    assert part.read_bytes() == body[: len(body) // 2] and not dest.exists()
    server.mode = "range"
    download(server.url("/f.gz"), dest, progress=False)
    assert dest.read_bytes() == body
    assert server.log[-1]["range"] == f"bytes={len(body) // 2}-"


def test_wrong_hash_is_an_error_and_leaves_no_file(server: FileServer, body: bytes,
                                                   tmp_path: Path) -> None:
    server.files["/f.gz"] = body
    dest = tmp_path / "f.gz"
    with pytest.raises(DataError, match="SHA-256") as err:
        download(server.url("/f.gz"), dest, expected_sha256="0" * 64, progress=False)
    assert str(dest) in str(err.value) and "0" * 64 in str(err.value)
    assert not dest.exists() and not amazon_download.part_path(dest).exists()


def test_truncated_gzip_download_is_a_data_error(server: FileServer, body: bytes,
                                                 tmp_path: Path) -> None:
    server.files["/f.gz"] = body[: len(body) // 2]  # served completely, but the gzip is cut
    dest = tmp_path / "f.gz"
    with pytest.raises(DataError, match=re.escape(str(dest))):
        download(server.url("/f.gz"), dest, progress=False)
    # Resuming would only reproduce the same bad bytes, so the .part is removed as documented.
    assert not dest.exists() and not amazon_download.part_path(dest).exists()


def test_network_errors_name_the_url(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=re.escape(server.url("/missing.gz")) + ".*404"):
        download(server.url("/missing.gz"), tmp_path / "m.gz", progress=False)
    closed = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    url = f"http://127.0.0.1:{closed.server_address[1]}/x.gz"
    closed.server_close()  # nothing listens on that port any more
    with pytest.raises(DownloadError, match=re.escape(url)):
        download(url, tmp_path / "x.gz", progress=False, timeout=2)


def test_fetch_category_records_downloads_and_skips_matching_files(server: FileServer,
                                                                   tmp_path: Path) -> None:
    reviews_gz = gz_lines([review("U1", "I1", T0 * MS)])
    meta_gz = gz_lines([meta("I1")])
    server.files[f"/base/review_categories/{CATEGORY}.jsonl.gz"] = reviews_gz
    server.files[f"/base/meta_categories/meta_{CATEGORY}.jsonl.gz"] = meta_gz
    base = server.url("/base")
    records = fetch_category(tmp_path, base, CATEGORY, progress=False)
    folder = tmp_path / CATEGORY
    assert records["reviews"].path == folder / f"{CATEGORY}.jsonl.gz"
    assert records["meta"].path == folder / f"meta_{CATEGORY}.jsonl.gz"
    manifest = json.loads((folder / "downloads.json").read_text())
    assert manifest["files"]["reviews"] == {
        "url": f"{base}/review_categories/{CATEGORY}.jsonl.gz", "file": f"{CATEGORY}.jsonl.gz",
        "bytes": len(reviews_gz), "sha256": hashlib.sha256(reviews_gz).hexdigest(),
    }
    assert manifest["files"]["meta"]["sha256"] == hashlib.sha256(meta_gz).hexdigest()
    assert not [p for p in folder.iterdir() if p.name.endswith((".part", ".tmp"))]
    assert len(server.log) == 2

    assert fetch_category(tmp_path, base, CATEGORY, progress=False) == records
    assert len(server.log) == 2  # both hashes matched the record: nothing fetched

    (folder / f"{CATEGORY}.jsonl.gz").write_bytes(b"damaged")
    fetch_category(tmp_path, base, CATEGORY, progress=False)
    assert len(server.log) == 3 and (folder / f"{CATEGORY}.jsonl.gz").read_bytes() == reviews_gz


def test_a_local_file_without_a_record_is_verified_before_its_hash_is_recorded(server: FileServer,
                                                                                tmp_path: Path) -> None:
    """Issue 15: with downloads.json lost, a truncated local file must not be pinned; it is fetched again."""
    reviews_gz, meta_gz = gz_lines([review("U1", "I1", T0 * MS)]), gz_lines([meta("I1")])
    server.files[f"/base/review_categories/{CATEGORY}.jsonl.gz"] = reviews_gz
    server.files[f"/base/meta_categories/meta_{CATEGORY}.jsonl.gz"] = meta_gz
    paths = amazon_download.raw_paths(tmp_path, CATEGORY)
    write(paths["reviews"], reviews_gz[:-9])  # the gzip trailer (CRC-32, length) is missing
    write(paths["meta"], meta_gz)             # complete: kept, nothing fetched
    fetch_category(tmp_path, server.url("/base"), CATEGORY, progress=False)
    assert [e["path"] for e in server.log] == [f"/base/review_categories/{CATEGORY}.jsonl.gz"]
    assert paths["reviews"].read_bytes() == reviews_gz
    files = json.loads((paths["reviews"].parent / "downloads.json").read_text())["files"]
    assert files["reviews"]["sha256"] == hashlib.sha256(reviews_gz).hexdigest()
    assert files["meta"]["sha256"] == hashlib.sha256(meta_gz).hexdigest()


def test_download_without_a_hash_replaces_a_damaged_file(server: FileServer, body: bytes, tmp_path: Path) -> None:
    server.files["/f.gz"] = body
    dest = write(tmp_path / "f.gz", b"not gzip")
    record = download(server.url("/f.gz"), dest, progress=False)
    assert dest.read_bytes() == body and record.sha256 == hashlib.sha256(body).hexdigest()
    assert download(server.url("/f.gz"), dest, progress=False) == record  # now complete: not fetched again
    assert len(server.log) == 1


# ---------------------------------------------------------------- line reader


def test_line_batches_cross_chunk_borders_and_gzip_members(tmp_path: Path) -> None:
    lines = [f'{{"n": {i}, "pad": "{"x" * (i % 13)}"}}' for i in range(300)]
    half = len(lines) // 2
    # Two concatenated gzip members, the last line without a trailing newline.
    data = gzip.compress(("\n".join(lines[:half]) + "\n").encode()) + \
        gzip.compress("\n".join(lines[half:]).encode())
    path = write(tmp_path / "x.jsonl.gz", data)
    got: list[tuple[int, bytes]] = []
    for first, batch in iter_line_batches(path, read_bytes=7):
        got.extend((first + i, raw) for i, raw in enumerate(batch))
    assert got == [(i + 1, line.encode()) for i, line in enumerate(lines)]


@pytest.mark.parametrize("data", [b"", b"not gzip at all", gzip.compress(b"{}\n") + b"junk"])
def test_non_gzip_input_is_a_data_error(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path / f"{CATEGORY}.jsonl.gz", data)
    with pytest.raises(DataError, match=re.escape(str(path))):
        read_reviews(path)


# ---------------------------------------------------------------- reviews


def frame(rows: list[tuple[str, str, float, int]]) -> pd.DataFrame:
    users, items, ratings, times = zip(*rows) if rows else ((), (), (), ())
    return pd.DataFrame({
        "user_id": pd.Series(users, dtype=object),
        "item_id": pd.Series(items, dtype=object),
        "rating": pd.Series(ratings, dtype=np.float32),
        "timestamp": pd.Series(times, dtype=np.int64),
    })


def test_read_reviews_exact_frame(tmp_path: Path) -> None:
    path = write(tmp_path / "r.jsonl.gz", gz_lines([
        review("U2", "I9", (T0 + 10) * MS + 999, 4.0),   # ms -> s floors the 999 ms
        review("U1", "I3", (T0 + 5) * MS, 5.0),
        review("U1", "I1", (T0 + 5) * MS, 1),             # int rating -> float32
        review("U0", "I7", (T0 + 5) * MS, 2.5),
        review("U3", "I1", T0 * MS + 1, 3.0),
    ]))
    parsed = read_reviews(path)
    expected = frame([
        ("U3", "I1", 3.0, T0),
        ("U0", "I7", 2.5, T0 + 5),   # same second: user_id, then item_id decide
        ("U1", "I1", 1.0, T0 + 5),
        ("U1", "I3", 5.0, T0 + 5),
        ("U2", "I9", 4.0, T0 + 10),
    ])
    pd.testing.assert_frame_equal(parsed.frame, expected)
    assert tuple(parsed.frame.columns) == INTERACTION_COLUMNS
    assert all(type(v) is str for v in parsed.frame["user_id"])
    assert parsed.lines == parsed.records == 5 and not any(parsed.skips.values())
    # Same input in another order gives the same frame (keys are distinct here).
    rows = [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode().splitlines()]
    again = read_reviews(write(tmp_path / "r2.jsonl.gz", gz_lines(rows[::-1])))
    pd.testing.assert_frame_equal(again.frame, expected)


def test_sort_order_matches_a_stable_sort_by_time_user_item(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    rows = [  # few distinct values, so most rows tie on time and many on the whole key
        review(f"U{rng.integers(30)}", f"I{rng.integers(8)}", int(T0 + rng.integers(5)) * MS,
               float(rng.integers(1, 6)))
        for _ in range(600)
    ]
    parsed = read_reviews(write(tmp_path / "r.jsonl.gz", gz_lines(rows)))
    in_file_order = frame([(r["user_id"], r["parent_asin"], r["rating"], r["timestamp"] // MS)
                           for r in rows])
    expected = in_file_order.sort_values(["timestamp", "user_id", "item_id"], kind="stable")
    pd.testing.assert_frame_equal(parsed.frame, expected.reset_index(drop=True))


def test_window_is_start_inclusive_end_exclusive(tmp_path: Path) -> None:
    path = write(tmp_path / "r.jsonl.gz", gz_lines([
        review("U1", "I1", (T0 - 1) * MS + 999),  # 1 ms before the start: out
        review("U2", "I1", T0 * MS),              # exactly the start: in
        review("U3", "I1", (T0 + 99) * MS + 999), # last ms before the end: in
        review("U4", "I1", (T0 + 100) * MS),      # exactly the end: out
    ]))
    parsed = read_reviews(path, window_start_ts=T0, window_end_ts=T0 + 100)
    assert list(parsed.frame["user_id"]) == ["U2", "U3"]
    assert list(parsed.frame["timestamp"]) == [T0, T0 + 99]
    assert parsed.skips["review_outside_window"] == 2
    assert list(read_reviews(path, None, T0 + 1).frame["user_id"]) == ["U1", "U2"]
    assert len(read_reviews(path, T0 + 1, None).frame) == 2


def test_unusable_reviews_are_skipped_and_counted(tmp_path: Path) -> None:
    path = write(tmp_path / "r.jsonl.gz", gz_lines([
        review("U1", "I1", T0 * MS),
        review(None, "I1", T0 * MS),                      # no user_id
        review("", "I1", T0 * MS),                        # empty user_id
        review("U2", None, T0 * MS),                      # no parent_asin
        review("U3", "I1", "yesterday"),                  # non-numeric timestamp
        review("U4", "I1", None),                         # no timestamp
        review("U5", "I1", T0 * MS, rating="five"),       # non-numeric rating
        review("U6", "I1", T0 * MS, rating=True),         # bool is not a rating
        review("U7", "I2", T0 + 7),                       # already seconds: kept, counted
        review("U8", "I2", float((T0 + 8) * MS)),         # float milliseconds
        "",                                               # blank line
        "   ",
    ]))
    parsed = read_reviews(path)
    assert parsed.skips == {
        "review_bad_timestamp": 2, "review_missing_user": 2, "review_missing_item": 1,
        "review_bad_rating": 2, "review_rating_out_of_scale": 0, "review_outside_window": 0,
        "timestamp_in_seconds": 1,
    }
    pd.testing.assert_frame_equal(parsed.frame, frame([
        ("U1", "I1", 5.0, T0), ("U7", "I2", 5.0, T0 + 7), ("U8", "I2", 5.0, T0 + 8),
    ]))
    assert (parsed.lines, parsed.records) == (12, 10)  # the two blank lines are no records


def test_ratings_off_the_star_scale_are_skipped_and_counted(tmp_path: Path) -> None:
    """Issue 15: Amazon ratings are 1..5 stars; anything else is bad data, skipped and counted."""
    path = write(tmp_path / "r.jsonl.gz", gz_lines([
        review("U1", "I1", T0 * MS, 1.0), review("U2", "I1", T0 * MS, 5),    # both ends are in
        review("U3", "I1", T0 * MS, 0.0), review("U4", "I1", T0 * MS, 0),    # zero stars: fast and slow path
        review("U5", "I1", T0 * MS, 5.5), review("U6", "I1", T0 * MS, 50),
        review("U7", "I1", T0 * MS, -1.0), review("U8", "I1", T0 * MS, 0.999),
        review("U9", "I1", T0 - 5, 6.0),                                     # off the scale before the window
    ]))
    parsed = read_reviews(path, window_start_ts=T0)
    assert parsed.skips == {
        "review_bad_timestamp": 0, "review_missing_user": 0, "review_missing_item": 0,
        "review_bad_rating": 0, "review_rating_out_of_scale": 7, "review_outside_window": 0,
        "timestamp_in_seconds": 0,
    }
    pd.testing.assert_frame_equal(parsed.frame, frame([("U1", "I1", 1.0, T0), ("U2", "I1", 5.0, T0)]))


def test_non_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "r.jsonl.gz", gz_lines([
        review("U1", "I1", T0 * MS), "", '{"user_id": "U2", "parent_asin": ',
        review("U3", "I1", T0),
    ]))
    with pytest.raises(DataError, match=re.escape(f"{path}:3: not valid JSON")):
        read_reviews(path)
    # Stopping early must not leave the decompression thread behind.
    assert not [t for t in threading.enumerate() if t.name == "recrepro-inflate"]


@pytest.mark.parametrize("line, kind", [('["U1", "I1"]', "list"), ('"text"', "str"), ("42", "int")])
def test_json_line_that_is_not_an_object(tmp_path: Path, line: str, kind: str) -> None:
    path = write(tmp_path / "r.jsonl.gz", gz_lines([review("U1", "I1", T0 * MS), line]))
    with pytest.raises(DataError, match=re.escape(f"{path}:2: expected a JSON object, got {kind}")):
        read_reviews(path)
    meta_path = write(tmp_path / "m.jsonl.gz", gz_lines([meta("I1"), line]))
    with pytest.raises(DataError, match=re.escape(f"{meta_path}:2: expected a JSON object")):
        read_meta(meta_path)


def test_truncated_gzip_while_parsing_names_the_file(tmp_path: Path) -> None:
    rows = [review(f"U{i}", "I1", (T0 + i) * MS) for i in range(2000)]
    data = gz_lines(rows)
    path = write(tmp_path / "r.jsonl.gz", data[: len(data) * 2 // 3])
    message = re.escape(str(path)) + r": truncated or corrupt gzip after line \d+"
    with pytest.raises(DataError, match=message):
        read_reviews(path)
    meta_data = gz_lines([meta(f"I{i}") for i in range(500)])
    meta_path = write(tmp_path / "m.jsonl.gz", meta_data[:-9])  # only the trailer is missing
    with pytest.raises(DataError, match=re.escape(str(meta_path))):
        read_meta(meta_path)


# ---------------------------------------------------------------- metadata and load_category


def test_read_meta_fields(tmp_path: Path) -> None:
    path = write(tmp_path / "m.jsonl.gz", gz_lines([
        meta("I1", price="$12.99"),
        meta("I2", price="None", categories=[], main_category="Books", store=None),
        meta("I3", price=None, title=None, average_rating=None, rating_number=None),
        meta("I4", price="$1,299.00", categories=["A|B", " C "]),
        meta("I5", price="from $3 to $5"),
        meta("I6", price=7),
        meta("I9"),                      # not in keep_items
        meta(None),                      # no parent_asin
        meta("I1", title="duplicate"),   # second line for I1: first wins
    ]))
    parsed = read_meta(path, keep_items={"I1", "I2", "I3", "I4", "I5", "I6", "I8"})
    got = parsed.frame
    assert tuple(got.columns) == ITEM_COLUMNS
    assert list(got["item_id"]) == ["I1", "I2", "I3", "I4", "I5", "I6"]
    assert got["price"].tolist()[:2] == [12.99, pytest.approx(math.nan, nan_ok=True)]
    assert math.isnan(got.loc[2, "price"]) and got.loc[3, "price"] == 1299.0
    assert math.isnan(got.loc[4, "price"]) and got.loc[5, "price"] == 7.0
    assert got["categories"].tolist() == [
        "Video Games|PC|Games", "Books", "Video Games|PC|Games", "A/B|C",
        "Video Games|PC|Games", "Video Games|PC|Games",
    ]
    assert got["title"].tolist()[:3] == ["Title of I1", "Title of I2", ""]
    assert got["store"].tolist()[:3] == ["Nintendo", "", "Nintendo"]
    assert got.loc[0, "avg_rating"] == 4.5 and got.loc[0, "rating_count"] == 120.0
    assert math.isnan(got.loc[2, "avg_rating"]) and math.isnan(got.loc[2, "rating_count"])
    assert got.dtypes.to_dict() == {
        "item_id": object, "title": object, "categories": object, "price": np.float64,
        "avg_rating": np.float64, "rating_count": np.float64, "store": object,
    }
    assert parsed.skips == {"meta_missing_item": 1, "meta_duplicate_item": 1, "meta_bad_price": 1}
    assert parsed.lines == 9
    assert len(read_meta(path).frame) == 7  # keep_items=None keeps everything


def test_load_category(tmp_path: Path) -> None:
    paths = amazon_download.raw_paths(tmp_path, CATEGORY)
    write(paths["reviews"], gz_lines([
        review("U1", "I1", T0 * MS, 4.0),
        review("U2", "I2", (T0 + 1) * MS, 3.0),
        review("U2", "I3", (T0 + 2) * MS, 2.0),
        review("U3", "I4", (T0 - 50) * MS, 1.0),   # before the window: its item is not listed
    ]))
    write(paths["meta"], gz_lines([
        meta("I1", price="$12.99"), meta("I2", title=None), meta("I4"), meta("I5"),
    ]))
    tables = load_category(tmp_path, CATEGORY, T0, T0 + 100)
    assert isinstance(tables, AmazonTables)
    pd.testing.assert_frame_equal(tables.interactions, frame([
        ("U1", "I1", 4.0, T0), ("U2", "I2", 3.0, T0 + 1), ("U2", "I3", 2.0, T0 + 2),
    ]))
    items = tables.items
    assert tuple(items.columns) == ITEM_COLUMNS
    assert items["item_id"].tolist() == ["I1", "I2", "I3"]
    assert items["title"].tolist() == ["Title of I1", "", ""]  # I2 no title, I3 no metadata
    assert items["price"].iloc[0] == 12.99 and items[["price", "avg_rating"]].iloc[2].isna().all()
    assert items["categories"].tolist() == ["Video Games|PC|Games", "Video Games|PC|Games", ""]
    assert items["store"].tolist() == ["Nintendo", "Nintendo", ""]
    assert items["price"].dtype == np.float64 and items["rating_count"].dtype == np.float64
    assert tables.skips["item_without_meta"] == 1
    assert tables.skips["review_outside_window"] == 1
    assert tables.lines == {f"{CATEGORY}.jsonl.gz": 4, f"meta_{CATEGORY}.jsonl.gz": 4}


def test_load_category_requires_both_files(tmp_path: Path) -> None:
    paths = amazon_download.raw_paths(tmp_path, CATEGORY)
    write(paths["reviews"], gz_lines([]))
    with pytest.raises(DataError, match="meta_Video_Games.jsonl.gz: raw file missing"):
        load_category(tmp_path, CATEGORY, None, None)


@pytest.mark.parametrize("empty", [b"", gz_lines([]), gz_lines(["", "  "])], ids=["0 bytes", "no line", "blank"])
def test_an_empty_raw_file_is_an_error_naming_file_and_dataset(tmp_path: Path, empty: bytes) -> None:
    """Issue 15: an empty file is named as such, not reported later as "no interaction survives filtering"."""
    paths = amazon_download.raw_paths(tmp_path, CATEGORY)
    what = "0 bytes" if empty == b"" else "no JSON line"
    good_reviews, good_meta = gz_lines([review("U1", "I1", T0 * MS)]), gz_lines([meta("I1")])
    for kind, label in (("reviews", "reviews"), ("meta", "metadata")):
        write(paths["reviews"], empty if kind == "reviews" else good_reviews)
        write(paths["meta"], empty if kind == "meta" else good_meta)
        with pytest.raises(DataError) as error:
            load_category(tmp_path, CATEGORY, None, None)
        assert str(error.value) == (f"{paths[kind]}: the {label} file of dataset 'Video_Games' is empty ({what}); "
                                    "delete it and run fetch_category('Video_Games') again")


def test_a_raw_file_of_unusable_lines_is_not_empty(tmp_path: Path) -> None:
    """Its skips are counted as before; the data stage reports them."""
    paths = amazon_download.raw_paths(tmp_path, CATEGORY)
    write(paths["reviews"], gz_lines([review(None, "I1", T0 * MS)]))
    write(paths["meta"], gz_lines([meta(None)]))
    tables = load_category(tmp_path, CATEGORY, None, None)
    assert tables.interactions.empty and tables.items.empty and tuple(tables.items.columns) == ITEM_COLUMNS
    assert (tables.skips["review_missing_user"], tables.skips["meta_missing_item"]) == (1, 1)
    assert tables.lines == {paths["reviews"].name: 1, paths["meta"].name: 1}
