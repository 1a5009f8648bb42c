"""An OSV-compatible HTTP endpoint over a directory of OSV records, so that
`pip-audit -s osv --osv-url URL/v1/query` works without the internet.

Endpoints (the part of the OSV API that pip-audit and simple clients use):

    POST /v1/query       {"package": {"name": N, "ecosystem": "PyPI"}, "version": V}
                         or {"package": {"purl": "pkg:pypi/N[@V]"}}; without a version, every
                         record of the package. Answers {"vulns": [record, ...]}, or {} when
                         there is none (as OSV does, and as pip-audit expects).
    POST /v1/querybatch  {"queries": [query, ...]} -> {"results": [{"vulns": [{"id", "modified"}]}
                         or {}, ...]} in query order.
    GET  /v1/vulns/ID    one record (withdrawn ones too), 404 when unknown.
    GET  /               the mirror's status: directory, record counts, malformed files.

Every error is JSON `{"code": GRPC_CODE, "message": TEXT}` with an HTTP 4xx/5xx status; no
request can stop the server. It binds 127.0.0.1 only, on an ephemeral port unless told one.

    python -m imdb_deploy.supply_chain.osv_mirror DIR [--port N] [--check]
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socketserver
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import unquote, urlsplit

from packageurl import PackageURL

from imdb_deploy.supply_chain.osv_database import (
    PYPI,
    DatabaseError,
    OsvDatabase,
    load_database,
)

LOOPBACK = "127.0.0.1"
MAX_BODY_BYTES = 1 << 20
MAX_BATCH_QUERIES = 1000
QUERY_PATH = "/v1/query"

logger = logging.getLogger(__name__)

# HTTP status -> the gRPC status code that OSV's JSON errors carry.
_GRPC_CODES = {
    HTTPStatus.BAD_REQUEST: 3,
    HTTPStatus.NOT_FOUND: 5,
    HTTPStatus.LENGTH_REQUIRED: 3,
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: 8,
    HTTPStatus.NOT_IMPLEMENTED: 12,
    HTTPStatus.INTERNAL_SERVER_ERROR: 13,
}


class RequestError(Exception):
    """A request the mirror refuses, with the status to answer."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _bad(message: str) -> RequestError:
    return RequestError(HTTPStatus.BAD_REQUEST, message)


@dataclass(frozen=True)
class Query:
    name: str
    version: str | None


def parse_query(payload: object) -> Query:
    """Validate one OSV query object (PyPI only)."""
    if not isinstance(payload, dict):
        raise _bad("a query must be a JSON object")
    if "commit" in payload:
        raise _bad("commit queries are not supported by this mirror")
    package = payload.get("package")
    if not isinstance(package, dict):
        raise _bad("a query needs a `package` object")
    version = payload.get("version")
    if version is not None and not isinstance(version, str):
        raise _bad("`version` must be a string")
    purl = package.get("purl")
    if purl is None:
        name = package.get("name")
        ecosystem = package.get("ecosystem")
        if not isinstance(name, str) or not name:
            raise _bad("`package.name` must be a non-empty string")
        if ecosystem != PYPI:
            raise _bad(f"unsupported ecosystem {ecosystem!r}: this mirror serves {PYPI} only")
        return Query(name, version)
    if "name" in package or "ecosystem" in package:
        raise _bad("give either `package.purl` or `package.name` and `package.ecosystem`")
    if not isinstance(purl, str):
        raise _bad("`package.purl` must be a string")
    try:
        parsed = PackageURL.from_string(purl)
    except ValueError as error:
        raise _bad(f"invalid purl: {error}") from error
    if parsed.type != "pypi":
        raise _bad(f"unsupported purl type {parsed.type!r}: this mirror serves pypi only")
    if parsed.version is not None and version is not None:
        raise _bad("the version is given both in the purl and in `version`")
    return Query(parsed.name, parsed.version if parsed.version is not None else version)


class MirrorServer(ThreadingHTTPServer):
    """The HTTP server; `counts` tallies the requests by endpoint (for tests and logs)."""

    daemon_threads = True

    def __init__(self, database: OsvDatabase, port: int = 0) -> None:
        self.database = database
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        super().__init__((LOOPBACK, port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve the host name (a DNS lookup): not needed here.
        socketserver.TCPServer.server_bind(self)
        self.server_name = LOOPBACK
        self.server_port = self.socket.getsockname()[1]

    @property
    def url(self) -> str:
        """The base URL; pip-audit wants `url + QUERY_PATH`."""
        return f"http://{LOOPBACK}:{self.server_port}"

    def count(self, endpoint: str) -> None:
        with self._lock:
            self.counts[endpoint] += 1

    def status(self) -> dict[str, Any]:
        database = self.database
        return {
            "directory": str(database.directory),
            "records": len(database.records),
            "withdrawn": database.withdrawn,
            "packages": len(database.by_package),
            "malformed": [str(problem) for problem in database.malformed],
            "warnings": [str(problem) for problem in database.warnings],
            "requests": dict(self.counts),
        }


class _Handler(BaseHTTPRequestHandler):
    server: MirrorServer
    server_version = "imdb-osv-mirror/1"
    timeout = 30  # seconds of silence before a connection is dropped

    def do_GET(self) -> None:
        self._dispatch(self._get)

    def do_POST(self) -> None:
        self._dispatch(self._post)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Unsupported methods and unparseable requests: JSON like every other error.
        status = HTTPStatus(code)
        self.close_connection = True
        self._send(status, _error_body(status, message or status.phrase))

    def _dispatch(self, handler: Callable[[str], tuple[HTTPStatus, object]]) -> None:
        path = urlsplit(self.path).path
        try:
            status, body = handler(path)
        except RequestError as error:
            status, body = error.status, _error_body(error.status, error.message)
        except Exception:  # a bug in one request must not take the mirror down
            logger.exception("osv-mirror: %s %s failed", self.command, path)
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            body = _error_body(status, "internal error")
        self._send(status, body)

    def _get(self, path: str) -> tuple[HTTPStatus, object]:
        database = self.server.database
        if path == "/":
            self.server.count("status")
            return HTTPStatus.OK, self.server.status()
        prefix = "/v1/vulns/"
        if path.startswith(prefix) and len(path) > len(prefix):
            self.server.count("vulns")
            vuln_id = unquote(path[len(prefix) :])
            record = database.get(vuln_id)
            if record is None:
                raise RequestError(HTTPStatus.NOT_FOUND, f"vulnerability {vuln_id!r} not found")
            return HTTPStatus.OK, record
        raise RequestError(HTTPStatus.NOT_FOUND, f"no such endpoint: GET {path}")

    def _post(self, path: str) -> tuple[HTTPStatus, object]:
        database = self.server.database
        if path == QUERY_PATH:
            self.server.count("query")
            query = parse_query(self._read_json())
            vulns = database.query(query.name, query.version)
            return HTTPStatus.OK, {"vulns": vulns} if vulns else {}
        if path == "/v1/querybatch":
            self.server.count("querybatch")
            payload = self._read_json()
            queries = payload.get("queries") if isinstance(payload, dict) else None
            if not isinstance(queries, list):
                raise _bad("a batch needs a `queries` list")
            if len(queries) > MAX_BATCH_QUERIES:
                raise _bad(f"at most {MAX_BATCH_QUERIES} queries per batch")
            results: list[dict[str, Any]] = []
            for index, item in enumerate(queries):
                try:
                    query = parse_query(item)
                except RequestError as error:
                    raise _bad(f"queries[{index}]: {error.message}") from error
                found = [
                    {key: vuln[key] for key in ("id", "modified") if key in vuln}
                    for vuln in database.query(query.name, query.version)
                ]
                results.append({"vulns": found} if found else {})
            return HTTPStatus.OK, {"results": results}
        with suppress(RequestError):
            self._read_body()  # so that closing the connection does not reset it
        raise RequestError(HTTPStatus.NOT_FOUND, f"no such endpoint: POST {path}")

    def _read_json(self) -> object:
        body = self._read_body()
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as error:
            raise _bad(f"the body is not JSON: {error}") from None

    def _read_body(self) -> bytes:
        header = self.headers.get("Content-Length")
        if header is None:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
        try:
            length = int(header)
        except ValueError:
            raise _bad(f"invalid Content-Length {header!r}") from None
        if length < 0:
            raise _bad(f"invalid Content-Length {header!r}")
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes"
            )
        body = self.rfile.read(length)
        if len(body) != length:
            raise _bad("the body is shorter than its Content-Length")
        return body

    def _send(self, status: HTTPStatus, body: object) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError as error:  # the client went away: nothing left to tell it
            logger.debug("osv-mirror: could not answer: %s", error)
            self.close_connection = True


def _error_body(status: HTTPStatus, message: str) -> dict[str, Any]:
    return {"code": _GRPC_CODES.get(status, 2), "message": message}


@contextmanager
def running(database: OsvDatabase, *, port: int = 0) -> Iterator[MirrorServer]:
    """Serve `database` from a background thread for the duration of the block."""
    server = MirrorServer(database, port)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="osv-mirror", daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


@contextmanager
def serve(source: Path | str | OsvDatabase, *, port: int = 0) -> Iterator[str]:
    """Load a directory of OSV records (or take a loaded database) and serve it; yields the
    base URL (`http://127.0.0.1:PORT`). Raises DatabaseError for a missing or empty directory."""
    database = source if isinstance(source, OsvDatabase) else load_database(Path(source))
    with running(database, port=port) as server:
        yield server.url


def describe(database: OsvDatabase) -> list[str]:
    """Human lines: the summary, then every malformed file and every warning."""
    lines = [database.summary()]
    lines += [f"  malformed: {problem}" for problem in database.malformed]
    lines += [f"  warning: {problem}" for problem in database.warnings]
    return lines


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imdb_deploy.supply_chain.osv_mirror",
        description="Serve a directory of OSV records as an OSV-compatible API on 127.0.0.1.",
    )
    parser.add_argument("directory", type=Path, help="directory of OSV .yaml/.json records")
    parser.add_argument("--port", type=int, default=0, help="port (default: an ephemeral one)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="only load and report; exit 1 if any record file is malformed",
    )
    args = parser.parse_args(argv)
    try:
        database = load_database(args.directory)
    except DatabaseError as error:
        print(f"osv-mirror: error: {error}", file=sys.stderr)
        return 2
    print("\n".join(describe(database)), flush=True)
    if args.check:
        return 1 if database.malformed else 0
    signal.signal(signal.SIGTERM, _stop)
    with MirrorServer(database, args.port) as server:
        print(f"osv-mirror: serving on {server.url}; pip-audit: --osv-url {server.url}{QUERY_PATH}")
        print("osv-mirror: stop with Ctrl-C", flush=True)
        try:
            server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            print("osv-mirror: stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
