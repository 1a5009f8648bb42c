"""The image scans' Trivy side: its flags, what is recorded and said where Trivy is missing (a
failure with MLOPS_REQUIRE_TRIVY=1), reports/image-scan.json, and the SBOM's two kinds of
packages. All in-process: the engine is the in-memory fake and `trivy` a stand-in function."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from imdb_deploy.images import scan
from imdb_deploy.supply_chain import audit
from tests.images.fakes import FakeClient, FakeImage, inventory_output

NOT_SCANNED_LINE = (
    "OS packages NOT scanned for vulnerabilities: trivy is not installed here "
    "(pip-audit covered the Python packages)"
)
REFERENCE = "r/mlops-imdb-api:1"


def test_trivy_fails_only_on_high_or_critical_with_a_fix(tmp_path: Path) -> None:
    argv = scan.trivy_argv("/usr/bin/trivy", tmp_path / "i.tar", tmp_path / "r.json")
    assert argv[:2] == ["/usr/bin/trivy", "image"]
    assert argv[argv.index("--severity") + 1] == "HIGH,CRITICAL"
    assert "--ignore-unfixed" in argv
    assert argv[argv.index("--exit-code") + 1] == "1"
    assert argv[argv.index("--scanners") + 1] == "vuln"
    assert argv[argv.index("--input") + 1] == str(tmp_path / "i.tar")
    assert argv[argv.index("--output") + 1] == str(tmp_path / "r.json")
    assert argv[argv.index("--format") + 1] == "json"


@pytest.mark.parametrize(
    ("environ", "required"),
    [
        ({}, False),
        ({"CI": "true"}, False),
        ({"MLOPS_REQUIRE_TRIVY": "0", "CI": "true"}, False),
        ({"MLOPS_REQUIRE_TRIVY": "", "CI": "true"}, False),
        ({"MLOPS_REQUIRE_TRIVY": "1", "CI": "true"}, True),
        ({"MLOPS_REQUIRE_TRIVY": "1"}, True),
    ],
)
def test_trivy_is_required_only_when_asked_for(environ: dict[str, str], required: bool) -> None:
    assert scan.trivy_required(environ) is required


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    """An engine holding the API image; pip-audit passes (its report written)."""

    def passing_audit(requirements: Path, report: Path, osv_dir: Path | None) -> int:
        report.write_text("{}")
        return audit.EXIT_OK

    monkeypatch.setattr(audit, "audit", passing_audit)
    fake = FakeClient()
    fake.images.add(FakeImage("sha256:" + "1" * 64, [REFERENCE]))
    fake.containers.output = inventory_output()
    return fake


def _scan(client: FakeClient, reports: Path, environ: dict[str, str]) -> scan.ScanResult:
    return scan.scan_image(
        client, REFERENCE, name="api", version="1", platform="linux/amd64",  # type: ignore[arg-type]
        reports=reports, environ=environ,
    )  # fmt: skip


def test_without_trivy_the_os_packages_are_recorded_and_said_to_be_unscanned(
    client: FakeClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    stale = tmp_path / "trivy-image-api.json"
    stale.write_text("{}")  # an earlier run's report: not this image's
    result = _scan(client, tmp_path, {"CI": "true"})
    assert result.failures == []  # a note, not a failure, unless Trivy is required
    assert result.os_packages_scanned is False
    assert result.trivy_installed is False
    assert result.reason == "trivy is not installed here (pip-audit covered the Python packages)"
    assert result.trivy_report is None
    assert not stale.exists()
    assert f"scan {REFERENCE}: {NOT_SCANNED_LINE}\n" in capsys.readouterr().out
    record = result.record()
    assert record["name"] == "mlops-imdb-api"
    assert record["sbom"] == "sbom-image-api.cdx.json"
    assert record["pip_audit"] == "pip-audit-image-api.json"
    assert record["trivy"] is None
    assert record["os_packages_scanned"] is False
    assert record["reason"] == result.reason
    assert record["passed"] is True


def test_a_missing_trivy_fails_where_it_is_required(
    client: FakeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    result = _scan(client, tmp_path, {"CI": "true", "MLOPS_REQUIRE_TRIVY": "1"})
    assert result.os_packages_scanned is False
    assert len(result.failures) == 1
    assert "OS packages of r/mlops-imdb-api:1 NOT scanned for vulnerabilities" in (
        result.failures[0]
    )
    assert "MLOPS_REQUIRE_TRIVY=1 requires trivy" in result.failures[0]
    assert result.record()["passed"] is False


class FakeTrivy:
    """`subprocess.run` standing in for trivy: writes its report (or not) and exits `status`."""

    def __init__(self, status: int, *, writes_report: bool = True) -> None:
        self.status = status
        self.writes_report = writes_report
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        self.calls.append(list(argv))
        assert Path(argv[argv.index("--input") + 1]).is_file()  # the saved image
        if self.writes_report:
            Path(argv[argv.index("--output") + 1]).write_text('{"Results": []}')
        return subprocess.CompletedProcess(list(argv), self.status)


@pytest.mark.parametrize(
    ("trivy", "expected"),
    [
        (FakeTrivy(0), {"scanned": True, "failed": False}),
        (FakeTrivy(1), {"scanned": True, "failed": True}),  # HIGH/CRITICAL with a fix found
        (FakeTrivy(1, writes_report=False), {"scanned": False, "failed": True}),  # trivy failed
    ],
)
def test_with_trivy_the_os_packages_are_scanned_and_findings_fail(
    client: FakeClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    trivy: FakeTrivy,
    expected: dict[str, bool],
) -> None:
    scanned, failed = expected["scanned"], expected["failed"]
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/local/bin/trivy")
    monkeypatch.setattr(subprocess, "run", trivy)
    (tmp_path / "trivy-image-api.json").write_text("{}")  # an earlier run's: removed first
    result = _scan(client, tmp_path, {})
    assert len(trivy.calls) == 1
    assert trivy.calls[0][0] == "/usr/local/bin/trivy"
    assert "--ignore-unfixed" in trivy.calls[0]
    assert result.trivy_installed is True
    assert result.os_packages_scanned is scanned
    assert bool(result.failures) is failed
    if scanned:
        assert result.trivy_report == tmp_path / "trivy-image-api.json"
        assert result.reason == ""
        assert result.record()["trivy"] == "trivy-image-api.json"
    else:
        assert result.trivy_report is None
        assert result.reason == "trivy failed (exit 1) before writing its report"
        assert "NOT scanned" in result.failures[0]
    if scanned and failed:
        assert "HIGH/CRITICAL vulnerabilities with a fix" in result.failures[0]


def test_scan_all_writes_the_image_scan_summary(
    client: FakeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    client.images.add(FakeImage("sha256:" + "2" * 64, ["r/mlops-imdb-trainer:1"]))
    summary = tmp_path / "image-scan.json"
    # An arm64 build's entry stays; an older entry of an image scanned again is replaced.
    summary.write_text(
        json.dumps(
            {
                "images": [
                    {"name": "mlops-imdb-api-arm64", "os_packages_scanned": True},
                    {"name": "mlops-imdb-api", "os_packages_scanned": True},
                ]
            }
        )
    )
    images = [
        (REFERENCE, "api", "1", "linux/amd64"),
        ("r/mlops-imdb-trainer:1", "trainer", "1", "linux/amd64"),
    ]
    results = scan.scan_all(
        client, images, tmp_path, None, {"MLOPS_REQUIRE_TRIVY": "1"}  # type: ignore[arg-type]
    )
    assert [len(result.failures) for result in results] == [1, 1]
    assert [path.name for path in results[0].reports] == [
        "sbom-image-api.cdx.json", "pip-audit-image-api.json"
    ]  # fmt: skip
    entries = {entry["name"]: entry for entry in json.loads(summary.read_text())["images"]}
    assert sorted(entries) == ["mlops-imdb-api", "mlops-imdb-api-arm64", "mlops-imdb-trainer"]
    assert entries["mlops-imdb-api-arm64"] == {
        "name": "mlops-imdb-api-arm64",
        "os_packages_scanned": True,
    }
    for name in ("api", "trainer"):
        entry = entries[f"mlops-imdb-{name}"]
        assert entry["os_packages_scanned"] is False
        assert entry["trivy"] is None
        assert entry["reason"] == scan.TRIVY_MISSING
        assert entry["sbom"] == f"sbom-image-{name}.cdx.json"
        assert entry["pip_audit"] == f"pip-audit-image-{name}.json"
        assert entry["platform"] == "linux/amd64"
        assert (tmp_path / entry["sbom"]).is_file()


def test_an_unreadable_summary_is_replaced(
    client: FakeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    summary = tmp_path / "image-scan.json"
    summary.write_text("{ half")
    (result,) = scan.scan_all(client, [(REFERENCE, "api", "1", "linux/amd64")], tmp_path, None, {})  # type: ignore[arg-type]
    assert result.failures == []
    assert [e["name"] for e in json.loads(summary.read_text())["images"]] == ["mlops-imdb-api"]


DPKG_STATUS = """\
Package: libc6
Status: install ok installed
Architecture: amd64
Version: 2.36-9+deb12u10
Description: GNU C Library: Shared libraries
 Contains the standard libraries.

Package: removed-one
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0-1

Package: zlib1g
Status: install ok installed
Architecture: amd64
Version: 1:1.2.13.dfsg-1
"""


def test_the_image_sbom_lists_debian_and_python_packages(tmp_path: Path) -> None:
    """The inventory script (run here in-process, on a dpkg status file of our own) reads both
    kinds, and the SBOM made from it lists both with their purls."""
    status = tmp_path / "status"
    status.write_text(DPKG_STATUS)
    assert '"/var/lib/dpkg/status"' in scan.INVENTORY_SCRIPT
    script = scan.INVENTORY_SCRIPT.replace('"/var/lib/dpkg/status"', repr(str(status)))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(script, "inventory", "exec"), {"__name__": "inventory"})  # noqa: S102
    data = json.loads(out.getvalue())
    assert data["debs"] == [
        {"name": "libc6", "version": "2.36-9+deb12u10", "arch": "amd64"},
        {"name": "zlib1g", "version": "1:1.2.13.dfsg-1", "arch": "amd64"},
    ]
    assert any(d["name"] == "pytest" for d in data["distributions"])
    found = scan.Inventory(data["python"], data["distributions"], data["debs"])
    document = json.loads(scan.make_sbom(found, "api", "1", "sha256:" + "f" * 64, "linux/amd64"))
    purls = [component["purl"] for component in document["components"]]
    debs = [purl for purl in purls if purl.startswith("pkg:deb/debian/")]
    pypi = [purl for purl in purls if purl.startswith("pkg:pypi/")]
    assert debs == [
        "pkg:deb/debian/libc6@2.36-9%2Bdeb12u10?arch=amd64",
        "pkg:deb/debian/zlib1g@1:1.2.13.dfsg-1?arch=amd64",
    ]
    pytest_version = next(d["version"] for d in data["distributions"] if d["name"] == "pytest")
    assert f"pkg:pypi/pytest@{pytest_version}" in pypi
    assert len(debs) + len(pypi) == len(purls)  # nothing but the two kinds
