"""Download of the public IMDb files (title.basics, title.ratings) for training in CD.

`download_imdb(out_dir)` streams `<base_url>/title.basics.tsv.gz` and `.../title.ratings.tsv.gz`
into `<name>.partial` files in `out_dir` and checks each one whole before anything is replaced:

- size: at most `max_bytes` per file, refused up front when Content-Length says more, and
  enforced while streaming (a server may omit the header);
- completeness: exactly as many bytes as Content-Length declared (http.client hands back a short
  body without complaint), and a gzip stream that reaches its end marker;
- integrity: the gzip magic, every gzip member's CRC and length, and a first line that is the
  header the ingest expects (`formats.BASICS_COLUMNS` / `formats.RATINGS_COLUMNS`).

Only when both files pass are they renamed into place, and `download.json` is written last, so a
failure at any step leaves an earlier download in `out_dir` (files and record) as it was, and no
`.partial` files behind. A failure raises `DownloadError`, a `DataError`: the CLI exits with 3.

The record holds, per file, the URL, the size and sha256 of the bytes as downloaded (compressed),
the number of data lines and the UTC time, plus a `fingerprint` over both sha256s. Note that the
artifact's data fingerprint (`ingest.DataQuality.fingerprint`) hashes the *decompressed* contents,
so the two fingerprints differ for the same files.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Final
from urllib.parse import urlsplit

from imdb_trainer.formats import (
    BASICS,
    BASICS_COLUMNS,
    GZIP_MAGIC,
    RATINGS,
    RATINGS_COLUMNS,
    DataError,
)

DEFAULT_BASE_URL: Final[str] = "https://datasets.imdbws.com"
DEFAULT_MAX_BYTES: Final[int] = 1 << 30
DEFAULT_TIMEOUT_S: Final[float] = 60.0
RECORD_NAME: Final[str] = "download.json"
PARTIAL_SUFFIX: Final[str] = ".partial"
# (stem, expected header columns) of each file, in download order.
IMDB_FILES: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    (BASICS, BASICS_COLUMNS),
    (RATINGS, RATINGS_COLUMNS),
)
_CHUNK_BYTES: Final[int] = 1 << 20
# A header line is about 100 bytes: a first "line" this long is not a TSV header.
_MAX_HEADER_BYTES: Final[int] = 64 << 10
_SCHEMES: Final[frozenset[str]] = frozenset({"http", "https"})
_USER_AGENT: Final[str] = "imdb-trainer (dataset download)"

ProgressCallback = Callable[[int], None]
# `progress(label, total_bytes)` returns a callback that receives the bytes done so far: the same
# protocol as `ingest`'s (and the CLI's progress bars). total_bytes is 0 when it is not known.
ProgressFactory = Callable[[str, int], ProgressCallback]


class DownloadError(DataError):
    """A file could not be downloaded whole and valid; the output directory kept what it had."""


@dataclass(frozen=True)
class DownloadedFile:
    """One downloaded file, as recorded in `download.json`."""

    name: str
    url: str
    size: int
    sha256: str
    rows: int
    downloaded_at: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the file name is the key it is stored under)."""
        return {
            "url": self.url,
            "bytes": self.size,
            "sha256": self.sha256,
            "rows": self.rows,
            "downloaded_at": self.downloaded_at,
        }


@dataclass(frozen=True)
class DownloadRecord:
    """What `download_imdb` downloaded; `to_dict()` is the content of `download.json`."""

    files: tuple[DownloadedFile, ...]

    @property
    def fingerprint(self) -> str:
        """sha256 over the sorted per-file sha256s (hex, one per line): the same bytes give the
        same fingerprint, whenever and from wherever they were downloaded."""
        lines = "".join(f"{digest}\n" for digest in sorted(f.sha256 for f in self.files))
        return hashlib.sha256(lines.encode("ascii")).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: `{"fingerprint": ..., "files": {name: {url, bytes, ...}}}`."""
        return {
            "fingerprint": self.fingerprint,
            "files": {f.name: f.to_dict() for f in self.files},
        }


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects (mirrors and CDNs use them), but only to http(s) URLs: urllib's own
    handler would also follow one to ftp://."""

    def redirect_request(  # noqa: PLR0917 - urllib's signature
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        if urlsplit(newurl).scheme.lower() not in _SCHEMES:
            fp.close()  # urllib closes the redirect's response only when it follows it
            raise DownloadError(f"{req.full_url}: redirected to a non-http(s) URL: {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener() -> urllib.request.OpenerDirector:
    """An opener that speaks http(s) only: urlopen's default one also opens file:, ftp: and
    data: URLs. Proxies come from the environment (http_proxy, https_proxy, no_proxy)."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.UnknownHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        _HttpOnlyRedirects(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


def _http_base(base_url: str) -> str:
    """`base_url` without a trailing slash, or DownloadError when it is not an http(s) URL."""
    parts = urlsplit(base_url)
    if parts.scheme.lower() not in _SCHEMES or not parts.hostname:
        raise DownloadError(
            f"not an http(s) URL: {base_url!r} (only http:// and https:// are downloaded)"
        )
    return base_url.rstrip("/")


def _declared_length(url: str, response: http.client.HTTPResponse) -> int | None:
    """The Content-Length the response declares, None when it declares none."""
    if response.getheader("Transfer-Encoding") is not None:
        return None  # chunked: a Content-Length beside it must be ignored (RFC 9112, 6.3)
    value = response.getheader("Content-Length")
    if value is None:
        return None
    text = value.strip()
    # Digits only: int() would also take "+5", "1_000" or non-ASCII digits.
    if not (text.isascii() and text.isdigit()):
        raise DownloadError(f"{url}: malformed Content-Length {value!r}")
    return int(text)


def _open(opener: urllib.request.OpenerDirector, url: str, timeout_s: float) -> Any:
    """The open response to GET `url`, or DownloadError (HTTP errors, unreachable host...)."""
    # Only http(s) URLs get here (_http_base), and the opener speaks nothing else.
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})  # noqa: S310
    try:
        return opener.open(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        with exc:  # it holds the open error response: close it (else a ResourceWarning)
            raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadError(f"{url}: cannot download: {exc}") from exc


def _body_chunks(url: str, response: http.client.HTTPResponse) -> Iterator[bytes]:
    """The response body in chunks; a connection that breaks off raises DownloadError."""
    try:
        while chunk := response.read(_CHUNK_BYTES):
            yield chunk
    except (OSError, http.client.HTTPException) as exc:
        # IncompleteRead (a chunked body cut short), a reset connection, a read timeout.
        raise DownloadError(f"{url}: the download broke off: {exc!r}") from exc


def _fetch(
    opener: urllib.request.OpenerDirector,
    url: str,
    partial: Path,
    *,
    max_bytes: int,
    timeout_s: float,
    progress: ProgressFactory | None,
    label: str,
) -> tuple[int, str]:
    """Stream `url` into `partial`; (bytes, sha256) of what arrived, all of it, within bounds.

    The progress bar `label` starts once the response's Content-Length is known (0 if not).
    """
    with _open(opener, url, timeout_s) as response:
        if response.status != 200:
            raise DownloadError(f"{url}: HTTP {response.status} {response.reason}, expected 200")
        declared = _declared_length(url, response)
        if declared is not None and declared > max_bytes:
            raise DownloadError(
                f"{url}: Content-Length {declared} bytes exceeds the bound of {max_bytes} bytes "
                "per file (see --max-bytes)"
            )
        update = progress(label, declared or 0) if progress is not None else None
        digest = hashlib.sha256()
        received = 0
        with partial.open("wb") as sink:
            for chunk in _body_chunks(url, response):
                received += len(chunk)
                if received > max_bytes:
                    raise DownloadError(
                        f"{url}: more than {max_bytes} bytes (the bound per file, see "
                        "--max-bytes); stopped"
                    )
                sink.write(chunk)
                digest.update(chunk)
                if update is not None:
                    update(received)
            sink.flush()
            # The file is renamed into place next: make sure its bytes are on disk first.
            os.fsync(sink.fileno())
    if declared is not None and received != declared:
        raise DownloadError(
            f"{url}: truncated: received {received} of the {declared} bytes of its Content-Length"
        )
    return received, digest.hexdigest()


def _check_header(url: str, first_line: bytes, columns: tuple[str, ...]) -> None:
    """DownloadError unless `first_line` is the tab-separated `columns` (as the ingest expects)."""
    header = first_line.decode("utf-8", "replace").rstrip("\r")
    expected = "\t".join(columns)
    if header != expected:
        raise DownloadError(f"{url}: unexpected header {header[:200]!r}, expected {expected!r}")


def _count_data_lines(
    url: str, path: Path, columns: tuple[str, ...], progress: ProgressCallback | None
) -> int:
    """Data lines (all lines after the header) of the gzipped TSV file at `path`, read whole:
    DownloadError when it is not gzip, fails a CRC or length check, ends early, or does not
    start with the expected header."""
    with path.open("rb") as raw:
        if raw.read(2) != GZIP_MAGIC:
            raise DownloadError(f"{url}: not a gzip file")
        raw.seek(0)
        head = b""  # the decompressed start, until the header line is complete
        header_checked = False
        newlines = 0
        last_byte = b""
        try:
            # GzipFile checks each member's CRC and length, reads every member (a file may have
            # several), raises EOFError on a stream cut short and BadGzipFile on trailing garbage.
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                while block := stream.read(_CHUNK_BYTES):
                    if not header_checked:
                        head += block
                        if b"\n" in head or len(head) > _MAX_HEADER_BYTES:
                            _check_header(url, head.split(b"\n", 1)[0], columns)
                            header_checked = True
                            head = b""
                    newlines += block.count(b"\n")
                    last_byte = block[-1:]
                    if progress is not None:
                        progress(raw.tell())
        except (OSError, EOFError, zlib.error) as exc:
            raise DownloadError(f"{url}: corrupt or truncated gzip data: {exc}") from exc
        if progress is not None:
            progress(raw.tell())  # the gzip trailer is read after the last data block
    if not last_byte:
        raise DownloadError(f"{url}: the file is empty (no header line)")
    if not header_checked:  # a header without a newline, and nothing else
        _check_header(url, head, columns)
    # A last line without a newline still counts, as in the ingest.
    lines = newlines + (last_byte != b"\n")
    return lines - 1


def _file_name(stem: str) -> str:
    """The published (and downloaded) name of a file: always gzipped."""
    return f"{stem}.tsv.gz"


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_record(path: Path, record: DownloadRecord) -> None:
    """Write `download.json` atomically: a reader sees the old record or the new one."""
    staging = path.with_name(path.name + PARTIAL_SUFFIX)
    staging.write_text(json.dumps(record.to_dict(), indent=2) + "\n", encoding="utf-8")
    staging.replace(path)


def download_imdb(
    out_dir: Path,
    base_url: str = DEFAULT_BASE_URL,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    progress: ProgressFactory | None = None,
) -> DownloadRecord:
    """Download `title.basics.tsv.gz` and `title.ratings.tsv.gz` from `base_url` into `out_dir`
    (created if needed), check them, and record them in `out_dir/download.json`.

    `max_bytes` bounds each file's download size (compressed bytes). `timeout_s` bounds the
    connect and every read, not the whole download. `progress(label, total_bytes)` may return a
    callback that receives the bytes done: per file, once for the download (label: the file's
    stem) and once for the check (label `check <stem>`).

    Raises DownloadError (a DataError) when either file cannot be downloaded whole and valid; the
    files and record of an earlier download in `out_dir` are then left untouched, and no partial
    files remain. ValueError when `max_bytes` < 1 or `timeout_s` <= 0.
    """
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be at least 1, not {max_bytes}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, not {timeout_s}")
    base = _http_base(base_url)
    out_dir.mkdir(parents=True, exist_ok=True)
    opener = _opener()
    names = [_file_name(stem) for stem, _ in IMDB_FILES]
    partials = [out_dir / f"{name}{PARTIAL_SUFFIX}" for name in (*names, RECORD_NAME)]

    downloaded: list[DownloadedFile] = []
    try:
        for stem, columns in IMDB_FILES:
            name = _file_name(stem)
            url = f"{base}/{name}"
            partial = out_dir / f"{name}{PARTIAL_SUFFIX}"
            size, sha256 = _fetch(
                opener,
                url,
                partial,
                max_bytes=max_bytes,
                timeout_s=timeout_s,
                progress=progress,
                label=stem,
            )
            downloaded_at = _utc_now()
            check = progress(f"check {stem}", size) if progress is not None else None
            rows = _count_data_lines(url, partial, columns, check)
            downloaded.append(DownloadedFile(name, url, size, sha256, rows, downloaded_at))
        record = DownloadRecord(files=tuple(downloaded))
        # Both files are whole and valid: only now replace the earlier download, record last.
        for name in names:
            (out_dir / f"{name}{PARTIAL_SUFFIX}").replace(out_dir / name)
        _write_record(out_dir / RECORD_NAME, record)
    finally:
        # After a failure (or Ctrl-C): no half-written files; after success they are gone anyway.
        for partial in partials:
            partial.unlink(missing_ok=True)
    return record
