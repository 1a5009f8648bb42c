"""The OSV-compatible HTTP mirror: pip-audit's contract, the extra endpoints, bad requests."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imdb_deploy.supply_chain import osv_mirror
from imdb_deploy.supply_chain.osv_database import DatabaseError, OsvDatabase, load_database
from imdb_deploy.supply_chain.osv_mirror import MirrorServer, running, serve

RECORDS: list[dict[str, Any]] = [
    {
        "id": "PYSEC-0000-1",
        "modified": "2024-01-01T00:00:00Z",
        "published": "2023-06-01T10:00:00Z",
        "aliases": ["CVE-0000-1"],
        "summary": "demo is broken",
        "affected": [
            {
                "package": {"name": "Demo.Pkg", "ecosystem": "PyPI"},
                "ranges": [
                    {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1.5"}]}
                ],
            }
        ],
    },
    {
        "id": "PYSEC-0000-2",
        "modified": "2024-01-01T00:00:00Z",
        "withdrawn": "2024-02-01T00:00:00Z",
        "affected": [{"package": {"name": "demo-pkg", "ecosystem": "PyPI"}, "versions": ["1.0"]}],
    },
]


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> OsvDatabase:
    directory = tmp_path_factory.mktemp("osv")
    for item in RECORDS:
        (directory / f"{item['id']}.json").write_text(json.dumps(item))
    return load_database(directory)


@pytest.fixture
def server(database: OsvDatabase) -> Iterator[MirrorServer]:
    with running(database) as mirror:
        yield mirror


def request(
    server: MirrorServer,
    method: str,
    path: str,
    body: object = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
    try:
        data = None if body is None else body if isinstance(body, bytes) else json.dumps(body)
        connection.request(method, path, body=data, headers=headers or {})
        response = connection.getresponse()
        assert response.getheader("Content-Type") == "application/json"
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def raw(server: MirrorServer, data: bytes, *, half_close: bool = False) -> tuple[int, Any]:
    """Send raw bytes; parse the status line and the JSON body of the answer."""
    with socket.create_connection(("127.0.0.1", server.server_port), timeout=10) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def query(name: str, version: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"package": {"name": name, "ecosystem": "PyPI"}}
    if version is not None:
        payload["version"] = version
    return payload


# ---------------------------------------------------------------- pip-audit's contract


def test_query_as_pip_audit_sends_it(server: MirrorServer) -> None:
    status, body = request(server, "POST", "/v1/query", query("demo-pkg", "1.0"))
    assert status == 200
    (vuln,) = body["vulns"]
    assert vuln["id"] == "PYSEC-0000-1"
    assert vuln["aliases"] == ["CVE-0000-1"]
    assert vuln["affected"][0]["package"]["name"] == "demo-pkg"
    assert server.counts["query"] == 1


def test_no_vulnerability_is_an_empty_object(server: MirrorServer) -> None:
    assert request(server, "POST", "/v1/query", query("demo-pkg", "1.5")) == (200, {})
    assert request(server, "POST", "/v1/query", query("unknown", "1.0")) == (200, {})


def test_query_without_version_lists_every_live_record(server: MirrorServer) -> None:
    status, body = request(server, "POST", "/v1/query", query("DEMO_PKG"))
    assert status == 200
    assert [vuln["id"] for vuln in body["vulns"]] == ["PYSEC-0000-1"]


def test_purl_queries(server: MirrorServer) -> None:
    by_purl = {"package": {"purl": "pkg:pypi/demo-pkg@1.0"}}
    assert request(server, "POST", "/v1/query", by_purl)[1]["vulns"][0]["id"] == "PYSEC-0000-1"
    separate = {"package": {"purl": "pkg:pypi/demo-pkg"}, "version": "2.0"}
    assert request(server, "POST", "/v1/query", separate) == (200, {})


# ---------------------------------------------------------------- the other endpoints


def test_querybatch(server: MirrorServer) -> None:
    status, body = request(
        server, "POST", "/v1/querybatch", {"queries": [query("demo-pkg", "1.0"), query("x", "1")]}
    )
    assert status == 200
    assert body == {
        "results": [{"vulns": [{"id": "PYSEC-0000-1", "modified": "2024-01-01T00:00:00Z"}]}, {}]
    }


def test_vulns_by_id_and_status(server: MirrorServer) -> None:
    status, body = request(server, "GET", "/v1/vulns/PYSEC-0000-2")
    assert (status, body["id"]) == (200, "PYSEC-0000-2")  # withdrawn ones too, as OSV
    status, body = request(server, "GET", "/v1/vulns/NOPE-1")
    assert (status, body["code"]) == (404, 5)
    status, body = request(server, "GET", "/")
    assert status == 200
    assert (body["records"], body["withdrawn"], body["malformed"]) == (2, 1, [])
    assert body["requests"]["vulns"] == 2


# ---------------------------------------------------------------- bad requests


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], "must be a JSON object"),
        ({"commit": "abc"}, "commit queries"),
        ({"version": "1.0"}, "`package` object"),
        ({"package": {"name": "x", "ecosystem": "PyPI"}, "version": 1}, "`version` must be"),
        ({"package": {"name": "", "ecosystem": "PyPI"}}, "package.name"),
        ({"package": {"name": "x", "ecosystem": "npm"}}, "unsupported ecosystem 'npm'"),
        ({"package": {"name": "x"}}, "unsupported ecosystem None"),
        ({"package": {"purl": "pkg:pypi/x", "name": "x"}}, "either"),
        ({"package": {"purl": 3}}, "must be a string"),
        ({"package": {"purl": "nonsense"}}, "invalid purl"),
        ({"package": {"purl": "pkg:npm/x@1"}}, "unsupported purl type"),
        ({"package": {"purl": "pkg:pypi/x@1"}, "version": "2"}, "both"),
    ],
)
def test_bad_queries_are_400(server: MirrorServer, payload: object, message: str) -> None:
    status, body = request(server, "POST", "/v1/query", payload)
    assert status == 400
    assert body["code"] == 3
    assert message in body["message"]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"queries": "x"}, "`queries` list"),
        ([], "`queries` list"),
        ({"queries": [query("x", "1"), {"package": {}}]}, "queries[1]: "),
        ({"queries": [query("x", "1")] * 1001}, "at most 1000"),
    ],
)
def test_bad_batches_are_400(server: MirrorServer, payload: object, message: str) -> None:
    status, body = request(server, "POST", "/v1/querybatch", payload)
    assert status == 400
    assert message in body["message"]


def test_bodies_that_are_not_json(server: MirrorServer) -> None:
    assert request(server, "POST", "/v1/query", b"{nope")[0] == 400
    assert request(server, "POST", "/v1/query", b"\xff\xfe\x00")[0] == 400
    deep = b"[" * 100_000 + b"]" * 100_000
    status, body = request(server, "POST", "/v1/query", deep)
    assert status == 400
    assert "not JSON" in body["message"]


def test_content_length_problems(server: MirrorServer) -> None:
    post = b"POST /v1/query HTTP/1.1\r\nHost: x\r\n"
    status, body = raw(server, post + b"\r\n")
    assert (status, body["code"]) == (411, 3)
    assert raw(server, post + b"Content-Length: ten\r\n\r\n")[0] == 400
    assert raw(server, post + b"Content-Length: -1\r\n\r\n")[0] == 400
    assert raw(server, post + b"Content-Length: 2000000\r\n\r\n")[0] == 413
    status, body = raw(server, post + b"Content-Length: 50\r\n\r\n{}", half_close=True)
    assert (status, "shorter" in body["message"]) == (400, True)


def test_unknown_endpoints_and_methods(server: MirrorServer) -> None:
    assert request(server, "GET", "/v1/query")[0] == 404
    assert request(server, "GET", "/v1/vulns/")[0] == 404
    assert request(server, "POST", "/v1/nope", {"a": 1})[0] == 404
    status, body = request(server, "PUT", "/v1/query", {})
    assert (status, body["code"]) == (501, 12)
    status, body = raw(server, b"GET /a b HTTP/1.1\r\n\r\n")
    assert (status, body["code"]) == (400, 3)


def test_a_failing_handler_answers_500_and_the_server_lives_on(
    server: MirrorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(name: str, version: str | None = None) -> list[dict[str, Any]]:
        raise RuntimeError("bug")

    monkeypatch.setattr(server.database, "query", broken)
    status, body = request(server, "POST", "/v1/query", query("demo-pkg", "1.0"))
    assert (status, body) == (500, {"code": 13, "message": "internal error"})
    monkeypatch.undo()
    assert request(server, "POST", "/v1/query", query("demo-pkg", "1.0"))[0] == 200


def test_a_client_that_went_away_does_not_hurt(
    server: MirrorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def hang_up(self: Any) -> None:
        raise BrokenPipeError("gone")

    monkeypatch.setattr(osv_mirror._Handler, "end_headers", hang_up)
    with pytest.raises(http.client.RemoteDisconnected):
        request(server, "GET", "/")
    monkeypatch.undo()
    assert request(server, "GET", "/")[0] == 200


# ---------------------------------------------------------------- serve() and the CLI


def test_serve_from_a_directory(tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text(json.dumps(RECORDS[0]))
    with serve(tmp_path) as url:
        assert url.startswith("http://127.0.0.1:")
        port = int(url.rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/")
        assert connection.getresponse().status == 200
        connection.close()
    with pytest.raises(DatabaseError), serve(tmp_path / "missing"):
        pass  # pragma: no cover


def test_cli_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "r.json").write_text(json.dumps(RECORDS[0]))
    assert osv_mirror.main([str(tmp_path), "--check"]) == 0
    (tmp_path / "bad.yaml").write_text("id: [")
    assert osv_mirror.main([str(tmp_path), "--check"]) == 1
    out = capsys.readouterr().out
    assert "1 OSV records" in out
    assert "malformed: " in out
    assert "bad.yaml" in out
    assert osv_mirror.main([str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_serves_until_terminated(tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text(json.dumps(RECORDS[0]))
    command = [sys.executable, "-m", "imdb_deploy.supply_chain.osv_mirror", str(tmp_path)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            lines = [process.stdout.readline() for _ in range(2)]
            assert "serving on http://127.0.0.1:" in lines[1]
            url = lines[1].split("serving on ")[1].split(";")[0]
            connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
            connection.request("POST", "/v1/query", body=json.dumps(query("demo-pkg", "1.0")))
            assert "PYSEC-0000-1" in connection.getresponse().read().decode()
            connection.close()
        finally:
            process.send_signal(signal.SIGTERM)
            rest, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    assert "stopped" in rest
