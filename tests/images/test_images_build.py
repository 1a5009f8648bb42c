"""Reading the engine's build stream, platform tag suffixes, SBOM and audit input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from imdb_deploy.images import build, scan
from imdb_deploy.images.platforms import PLATFORMS
from imdb_deploy.supply_chain import sbom


def test_image_id_from_docker_aux() -> None:
    log: list[str] = []
    lines: list[dict[str, Any]] = [{"stream": "Step 1/2\n"}, {"aux": {"ID": "sha256:" + "b" * 64}}]
    assert build.image_id_from(lines, log) == "sha256:" + "b" * 64
    assert log == ["Step 1/2\n"]


def test_image_id_from_classic_stream() -> None:
    assert build.image_id_from([{"stream": "Successfully built 0123456789ab\n"}], []) == (
        "0123456789ab"
    )


def test_build_errors_raise() -> None:
    with pytest.raises(build.BuildError, match="no such file"):
        build.image_id_from([{"stream": "x"}, {"error": "no such file"}], [])
    with pytest.raises(build.BuildError, match="without an image id"):
        build.image_id_from([{"stream": "x"}], [])


def test_platform_suffix() -> None:
    assert build.platform_suffix(PLATFORMS["linux/amd64"]) == ""
    assert build.platform_suffix(PLATFORMS["linux/arm64"]) == "-arm64"


INVENTORY = scan.Inventory(
    python="3.11.2",
    distributions=[
        {"name": "numpy", "version": "2.4.6", "record_sha256": "c" * 64},
        {"name": "imdb-api", "version": "0.1.0", "record_sha256": "d" * 64},
        {"name": "Pydantic_Core", "version": "2.50.5", "record_sha256": "e" * 64},
    ],
    debs=[{"name": "libgomp1", "version": "12.2.0-14+deb12u1", "arch": "amd64"}],
)


def test_sbom_of_an_inventory_is_valid(tmp_path: Path) -> None:
    text = scan.make_sbom(INVENTORY, "api", "1.0", "sha256:" + "f" * 64, "linux/amd64")
    path = tmp_path / "sbom.cdx.json"
    path.write_text(text)
    assert sbom.validate_file(path)
    document = json.loads(text)
    assert document["metadata"]["component"]["name"] == "mlops-imdb-api"
    purls = {c["purl"] for c in document["components"]}
    assert "pkg:pypi/numpy@2.4.6" in purls
    assert "pkg:deb/debian/libgomp1@12.2.0-14%2Bdeb12u1?arch=amd64" in purls


def test_audit_requirements_skip_our_own_packages() -> None:
    assert scan.audit_requirements(INVENTORY).splitlines() == [
        f"numpy==2.4.6 --hash=sha256:{'c' * 64}",
        f"pydantic-core==2.50.5 --hash=sha256:{'e' * 64}",
    ]


def test_trivy_fails_on_findings(tmp_path: Path) -> None:
    argv = scan.trivy_argv("trivy", tmp_path / "i.tar", tmp_path / "r.json")
    assert argv[argv.index("--exit-code") + 1] == "1"
    assert "--input" in argv
