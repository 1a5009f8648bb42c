"""`download_imdb` and `imdb-trainer download` against a real HTTP server on 127.0.0.1.

The server serves files made by the trainer's own generator. Every refused download must leave
the output directory exactly as an earlier good download left it: no `.partial` files, the old
files and `download.json` byte for byte. Nothing but 127.0.0.1 is ever contacted (`loopback_only`).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import json
import random
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import FrozenInstanceError, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import pytest

from imdb_trainer.cli import EXIT_DATA, EXIT_OK, EXIT_USAGE, main
from imdb_trainer.download import (
    PARTIAL_SUFFIX,
    RECORD_NAME,
    DownloadError,
    DownloadRecord,
    download_imdb,
)
from imdb_trainer.formats import BASICS, RATINGS, DataError
from imdb_trainer.generate import GeneratedData, generate
from imdb_trainer.ingest import ingest

# A server, even an in-process one, is a real part: the unit layer forbids it (tests/layers.py).
pytestmark = pytest.mark.integration

BASICS_NAME = f"{BASICS}.tsv.gz"
RATINGS_NAME = f"{RATINGS}.tsv.gz"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")

# How the server delimits a body: Content-Length, chunked, chunked but cut off mid-chunk, or an
# HTTP/1.0 response that ends when the connection closes.
Framing = Literal["length", "chunked", "chunked-cut", "close"]


@dataclass(frozen=True)
class Reply:
    """The server's answer to one path."""

    body: bytes = b""
    status: int = 200
    framing: Framing = "length"
    # The Content-Length header sent with "length" framing; None: the body's true length.
    content_length: str | None = None
    location: str | None = None


class FileServer(http.server.ThreadingHTTPServer):
    """Answers each path with its `replies` entry (404 for any other) and records the paths."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ReplyHandler)
        self.replies: dict[str, Reply] = {}
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        """Base URL, no trailing slash."""
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def serve(self, files: Mapping[str, bytes]) -> None:
        """Serve exactly these files (name -> bytes) under `/<name>`."""
        self.replies = {f"/{name}": Reply(body) for name, body in files.items()}


class _ReplyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FileServer

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        reply = self.server.replies.get(self.path, Reply(b"not found", status=404))
        # One request per connection keeps every framing simple.
        self.close_connection = True
        if reply.framing == "close":
            self.protocol_version = "HTTP/1.0"
        self.send_response(reply.status)
        self.send_header("Connection", "close")
        if reply.location is not None:
            self.send_header("Location", reply.location)
        if reply.framing == "length":
            declared = reply.content_length
            self.send_header(
                "Content-Length", str(len(reply.body)) if declared is None else declared
            )
        elif reply.framing in {"chunked", "chunked-cut"}:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        # The client may hang up early (a size bound): not the server's problem.
        with contextlib.suppress(ConnectionError):
            if reply.framing in {"chunked", "chunked-cut"}:
                self._write_chunked(reply.body, cut=reply.framing == "chunked-cut")
            else:
                self.wfile.write(reply.body)

    def _write_chunked(self, body: bytes, *, cut: bool) -> None:
        step = 4096
        for start in range(0, len(body), step):
            piece = body[start : start + step]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        # Cut: announce one more chunk of 4096 bytes, send 10, and close.
        self.wfile.write(b"1000\r\n" + b"x" * 10 if cut else b"0\r\n\r\n")

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows stderr of failing tests, and this would be noise there."""


@dataclass(frozen=True)
class DataSet:
    """Both IMDb files as the generator wrote them."""

    files: dict[str, bytes]
    generated: GeneratedData = field(repr=False)


def _data_set(directory: Path, rows: int, seed: int) -> DataSet:
    generated = generate(directory, rows=rows, seed=seed)
    files = {
        BASICS_NAME: generated.basics_path.read_bytes(),
        RATINGS_NAME: generated.ratings_path.read_bytes(),
    }
    return DataSet(files, generated)


@pytest.fixture(scope="module")
def current(tmp_path_factory: pytest.TempPathFactory) -> DataSet:
    """The data the server serves unless a test says otherwise."""
    return _data_set(tmp_path_factory.mktemp("current"), rows=400, seed=11)


@pytest.fixture(scope="module")
def earlier(tmp_path_factory: pytest.TempPathFactory) -> DataSet:
    """Other data: what an earlier download fetched."""
    return _data_set(tmp_path_factory.mktemp("earlier"), rows=200, seed=12)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy from the environment, and any connection to a host but 127.0.0.1 fails."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    connect = socket.create_connection

    def guarded(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        if address[0] != "127.0.0.1":
            raise AssertionError(f"a test tried to connect to {address}")
        return connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)


@pytest.fixture
def server(current: DataSet) -> Iterator[FileServer]:
    """A running FileServer that serves `current`; stopped and closed at teardown."""
    httpd = FileServer()
    httpd.serve(current.files)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@pytest.fixture
def earlier_download(tmp_path: Path, server: FileServer, earlier: DataSet) -> Path:
    """A directory holding a good download of `earlier`; the server then serves `current`."""
    out = tmp_path / "data"
    served = dict(server.replies)
    server.serve(earlier.files)
    download_imdb(out, base_url=server.url)
    server.replies = served
    return out


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file of `directory` by name, with its bytes."""
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def flip(data: bytes, index: int) -> bytes:
    """`data` with the byte at `index` inverted."""
    changed = bytearray(data)
    changed[index] ^= 0xFF
    return bytes(changed)


def assert_refused(
    out: Path, base_url: str, match: str, **options: Any
) -> pytest.ExceptionInfo[DownloadError]:
    """download_imdb fails with `match`, and leaves `out` exactly as it was."""
    before = snapshot(out)
    with pytest.raises(DownloadError, match=match) as refused:
        download_imdb(out, base_url=base_url, **options)
    assert snapshot(out) == before
    assert not list(out.glob(f"*{PARTIAL_SUFFIX}"))
    return refused


# ---------------------------------------------------------------- good downloads


def test_download_places_and_records_both_files(
    tmp_path: Path, server: FileServer, current: DataSet
) -> None:
    out = tmp_path / "new" / "data"
    out.mkdir(parents=True)
    stale = out / f"{BASICS_NAME}{PARTIAL_SUFFIX}"
    stale.write_bytes(b"left behind by a killed run")
    started = datetime.now(timezone.utc).replace(microsecond=0)

    record = download_imdb(out, base_url=server.url)

    assert sorted(p.name for p in out.iterdir()) == sorted([BASICS_NAME, RATINGS_NAME, RECORD_NAME])
    assert server.requests == [f"/{BASICS_NAME}", f"/{RATINGS_NAME}"]
    rows = {
        BASICS_NAME: current.generated.basics_rows,
        RATINGS_NAME: current.generated.ratings_rows,
    }
    assert [f.name for f in record.files] == [BASICS_NAME, RATINGS_NAME]
    for downloaded in record.files:
        served = current.files[downloaded.name]
        assert (out / downloaded.name).read_bytes() == served
        assert downloaded.url == f"{server.url}/{downloaded.name}"
        assert downloaded.size == len(served)
        assert downloaded.sha256 == hashlib.sha256(served).hexdigest()
        assert downloaded.rows == rows[downloaded.name]
        moment = datetime.fromisoformat(downloaded.downloaded_at)
        assert moment.utcoffset() == timedelta(0)
        assert started <= moment <= datetime.now(timezone.utc)
    shas = sorted(f.sha256 for f in record.files)
    expected = hashlib.sha256("".join(f"{sha}\n" for sha in shas).encode()).hexdigest()
    assert record.fingerprint == expected
    document = json.loads((out / RECORD_NAME).read_text())
    assert document == record.to_dict()
    assert document["fingerprint"] == expected
    assert set(document["files"][BASICS_NAME]) == {
        "url",
        "bytes",
        "sha256",
        "rows",
        "downloaded_at",
    }
    with pytest.raises(FrozenInstanceError):
        record.files = ()  # type: ignore[misc]

    # What was downloaded is what the trainer ingests.
    quality = ingest(out).quality
    assert quality.basics.rows == record.files[0].rows
    assert quality.ratings.rows == record.files[1].rows
    assert quality.kept_rows > 0


def test_fingerprint_depends_on_the_bytes_only(
    tmp_path: Path, server: FileServer, earlier: DataSet
) -> None:
    first = download_imdb(tmp_path / "a", base_url=server.url)
    again = download_imdb(tmp_path / "a", base_url=f"{server.url}/")  # trailing slash: same URLs
    elsewhere = download_imdb(tmp_path / "b", base_url=server.url)
    assert first.fingerprint == again.fingerprint == elsewhere.fingerprint
    assert again.files[0].url == first.files[0].url
    server.serve(earlier.files)
    assert download_imdb(tmp_path / "c", base_url=server.url).fingerprint != first.fingerprint
    # The record does not depend on the order of its files.
    assert DownloadRecord(first.files[::-1]).fingerprint == first.fingerprint


def test_progress_per_file_with_and_without_content_length(
    tmp_path: Path, server: FileServer, current: DataSet
) -> None:
    server.replies[f"/{BASICS_NAME}"] = Reply(current.files[BASICS_NAME], framing="chunked")
    seen: dict[str, tuple[int, list[int]]] = {}

    def progress(label: str, total: int) -> Callable[[int], None]:
        done: list[int] = []
        seen[label] = (total, done)
        return done.append

    download_imdb(tmp_path / "data", base_url=server.url, progress=progress)
    assert list(seen) == [BASICS, f"check {BASICS}", RATINGS, f"check {RATINGS}"]
    basics_size = len(current.files[BASICS_NAME])
    ratings_size = len(current.files[RATINGS_NAME])
    assert seen[BASICS] == (0, [basics_size])  # chunked: no total known up front
    assert seen[RATINGS] == (ratings_size, [ratings_size])
    assert seen[f"check {BASICS}"][0] == basics_size
    assert seen[f"check {BASICS}"][1][-1] == basics_size
    assert seen[f"check {RATINGS}"][1][-1] == ratings_size


def test_a_file_exactly_at_the_bound_is_accepted(
    tmp_path: Path, server: FileServer, current: DataSet
) -> None:
    largest = max(len(body) for body in current.files.values())
    record = download_imdb(tmp_path / "data", base_url=server.url, max_bytes=largest)
    assert max(f.size for f in record.files) == largest


# ---------------------------------------------------------------- refusals


def _random_bytes(size: int) -> bytes:
    return random.Random(5).randbytes(size)  # noqa: S311 - test data, not a secret


def _served_as(name: str) -> Callable[[DataSet], Reply]:
    return lambda data: Reply(data.files[name])


# Case -> (the file served badly, its reply made from the good data, what the error says).
BROKEN: dict[str, tuple[str, Callable[[DataSet], Reply], str]] = {
    "content-length-beyond-the-body": (
        RATINGS_NAME,
        lambda d: Reply(
            d.files[RATINGS_NAME], content_length=str(len(d.files[RATINGS_NAME]) + 999)
        ),
        "truncated: received",
    ),
    "gzip-cut-in-half-with-its-content-length": (
        RATINGS_NAME,
        lambda d: Reply(d.files[RATINGS_NAME][: len(d.files[RATINGS_NAME]) // 2]),
        "corrupt or truncated gzip data: Compressed file ended",
    ),
    "chunked-body-cut-off": (
        BASICS_NAME,
        lambda d: Reply(d.files[BASICS_NAME], framing="chunked-cut"),
        "the download broke off",
    ),
    "random-bytes": (
        RATINGS_NAME,
        lambda d: Reply(_random_bytes(len(d.files[RATINGS_NAME]))),
        "not a gzip file",
    ),
    "empty-body": (RATINGS_NAME, lambda d: Reply(b""), "not a gzip file"),
    "flipped-byte-in-the-crc": (
        RATINGS_NAME,
        lambda d: Reply(flip(d.files[RATINGS_NAME], -8)),
        "CRC check failed",
    ),
    "flipped-byte-in-the-compressed-data": (
        BASICS_NAME,
        lambda d: Reply(flip(d.files[BASICS_NAME], len(d.files[BASICS_NAME]) // 2)),
        "corrupt or truncated gzip data",
    ),
    "trailing-garbage": (
        RATINGS_NAME,
        lambda d: Reply(d.files[RATINGS_NAME] + b"<html>oops</html>"),
        "corrupt or truncated gzip data",
    ),
    "wrong-header": (
        RATINGS_NAME,
        lambda d: Reply(gzip.compress(b"tconst\trating\tvotes\ntt0000001\t5.0\t3\n", mtime=0)),
        "unexpected header 'tconst\\\\trating\\\\tvotes'",
    ),
    "basics-served-as-ratings": (RATINGS_NAME, _served_as(BASICS_NAME), "unexpected header"),
    "gzip-of-nothing": (RATINGS_NAME, lambda d: Reply(gzip.compress(b"")), "empty"),
    "malformed-content-length": (
        RATINGS_NAME,
        lambda d: Reply(d.files[RATINGS_NAME], content_length="12abc"),
        "malformed Content-Length",
    ),
    "http-404": (RATINGS_NAME, lambda d: Reply(b"gone", status=404), "HTTP 404 Not Found"),
    "http-204": (RATINGS_NAME, lambda d: Reply(b"", status=204), "HTTP 204 .*expected 200"),
    "redirect-to-file": (
        RATINGS_NAME,
        lambda d: Reply(status=302, location="file:///etc/passwd"),
        "file:///etc/passwd",
    ),
    "redirect-to-ftp": (
        RATINGS_NAME,
        lambda d: Reply(status=302, location="ftp://127.0.0.1/title.ratings.tsv.gz"),
        "redirected to a non-http",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_file_is_refused_and_the_earlier_download_kept(
    case: str, earlier_download: Path, server: FileServer, current: DataSet
) -> None:
    name, reply, match = BROKEN[case]
    server.replies[f"/{name}"] = reply(current)
    refused = assert_refused(earlier_download, server.url, match)
    assert isinstance(refused.value, DataError)  # so the CLI exits with 3
    assert f"/{name}" in str(refused.value)


def test_a_redirect_to_http_is_followed(
    tmp_path: Path, server: FileServer, current: DataSet
) -> None:
    server.replies[f"/{RATINGS_NAME}"] = Reply(status=302, location=f"/mirror/{RATINGS_NAME}")
    server.replies[f"/mirror/{RATINGS_NAME}"] = Reply(current.files[RATINGS_NAME])
    record = download_imdb(tmp_path / "data", base_url=server.url)
    assert record.files[1].sha256 == hashlib.sha256(current.files[RATINGS_NAME]).hexdigest()


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_a_file_over_the_bound_is_refused(
    framing: Framing, earlier_download: Path, server: FileServer, current: DataSet
) -> None:
    body = current.files[BASICS_NAME]
    server.replies[f"/{BASICS_NAME}"] = Reply(body, framing=framing)
    # With a Content-Length the download is refused before it starts; without, once it exceeds.
    match = "Content-Length .* exceeds the bound" if framing == "length" else "more than .* stopped"
    assert_refused(earlier_download, server.url, match, max_bytes=len(body) - 1)


def test_a_stream_far_over_the_bound_is_stopped(earlier_download: Path, server: FileServer) -> None:
    server.replies[f"/{BASICS_NAME}"] = Reply(b"\0" * (8 << 20), framing="close")
    assert_refused(earlier_download, server.url, "more than 65536 bytes", max_bytes=64 << 10)


@pytest.mark.parametrize(
    "base_url",
    [
        "file:///etc",
        "ftp://127.0.0.1/pub",
        "data:,title.basics",
        "127.0.0.1:8000",
        "http://",
        "",
    ],
)
def test_only_http_urls_are_downloaded(
    base_url: str, earlier_download: Path, server: FileServer
) -> None:
    requests = len(server.requests)
    assert_refused(earlier_download, base_url, r"not an http\(s\) URL")
    assert len(server.requests) == requests


def test_an_unreachable_server_is_a_download_error(
    earlier_download: Path, server: FileServer
) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens on this port now
    assert_refused(earlier_download, f"http://127.0.0.1:{port}", "cannot download")


def test_bad_bounds_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        download_imdb(tmp_path, base_url="http://127.0.0.1:9", max_bytes=0)
    with pytest.raises(ValueError, match="timeout_s"):
        download_imdb(tmp_path, base_url="http://127.0.0.1:9", timeout_s=0)


# ---------------------------------------------------------------- the CLI


def test_cli_prints_the_record_and_exits_3_on_a_corrupt_file(
    tmp_path: Path,
    server: FileServer,
    current: DataSet,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # CI sets FORCE_COLOR: the JSON must stay plain, and the progress bars stay on stderr.
    monkeypatch.setenv("FORCE_COLOR", "1")
    out = tmp_path / "data"
    argv = ["download", "--out", str(out), "--base-url", server.url]
    assert main(argv) == EXIT_OK
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed == json.loads((out / RECORD_NAME).read_text())
    assert set(printed["files"]) == {BASICS_NAME, RATINGS_NAME}

    before = snapshot(out)
    server.replies[f"/{RATINGS_NAME}"] = Reply(flip(current.files[RATINGS_NAME], -8))
    assert main(["--quiet", *argv]) == EXIT_DATA
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "data error:" in captured.err
    assert "CRC check failed" in captured.err
    assert snapshot(out) == before

    assert main(["--quiet", *argv, "--max-bytes", "100"]) == EXIT_DATA
    assert "exceeds the bound" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--max-bytes", "0"])
    assert stop.value.code == EXIT_USAGE
