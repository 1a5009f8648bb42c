"""CycloneDX SBOM validation against cyclonedx-python-lib's bundled schemas (offline)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imdb_deploy.supply_chain import sbom

MINIMAL_1_6: dict[str, Any] = {
    "bomFormat": "CycloneDX",
    "specVersion": "1.6",
    "serialNumber": "urn:uuid:3e671687-395b-41f5-a30f-a58921a69b79",
    "version": 1,
    "metadata": {
        "timestamp": "2024-10-10T12:00:00Z",
        "component": {
            "type": "application",
            "bom-ref": "imdb-api",
            "name": "imdb-api",
            "version": "0.1.0",
        },
    },
    "components": [
        {
            "type": "library",
            "bom-ref": "pkg:pypi/jinja2@3.1.4",
            "name": "jinja2",
            "version": "3.1.4",
            "purl": "pkg:pypi/jinja2@3.1.4",
            "externalReferences": [{"type": "website", "url": "https://palletsprojects.com/"}],
        }
    ],
    "dependencies": [{"ref": "imdb-api", "dependsOn": ["pkg:pypi/jinja2@3.1.4"]}],
}


@pytest.fixture(scope="module", autouse=True)
def validator_loaded() -> None:
    """The schema validator's first use imports jsonschema's format checkers (seconds): once
    for the module, not inside the first test."""
    assert sbom.validate_document(json.dumps(MINIMAL_1_6))[0] == []


def bom(**changes: Any) -> dict[str, Any]:
    document = copy.deepcopy(MINIMAL_1_6)
    document.update(changes)
    return document


def write(tmp_path: Path, name: str, content: object) -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_a_minimal_1_6_sbom_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "ok.cdx.json", MINIMAL_1_6)
    assert sbom.main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"valid {path} (CycloneDX 1.6, root imdb-api 0.1.0, 1 components)" in out


def test_older_spec_versions_use_their_own_schema(tmp_path: Path) -> None:
    document = bom(specVersion="1.3")
    del document["metadata"]["timestamp"]
    del document["components"][0]["externalReferences"]
    errors, description = sbom.validate_document(json.dumps(document))
    assert (errors, description) == ([], "CycloneDX 1.3, root imdb-api 0.1.0, 1 components")
    # 1.3's strict schema refuses a property that came with 1.5:
    document["metadata"]["lifecycles"] = [{"phase": "build"}]  # a 1.5 field
    errors, _ = sbom.validate_document(json.dumps(document))
    assert any("lifecycles" in error for error in errors)


BROKEN: dict[str, tuple[object, str]] = {
    "no-root": (bom(metadata={"timestamp": "2024-10-10T12:00:00Z"}), "no root component"),
    "no-metadata": ({k: v for k, v in MINIMAL_1_6.items() if k != "metadata"}, "no root component"),
    "no-components": (bom(components=[], dependencies=[]), "no components"),
    "unknown-property": (bom(extra=1), "Additional properties are not allowed"),
    "bad-type": (
        bom(components=[{"type": "gadget", "name": "x"}], dependencies=[]),
        "$.components[0].type: 'gadget' is not one of",
    ),
    "bad-spec": (bom(specVersion="1.6.1"), "specVersion '1.6.1' is not a CycloneDX JSON version"),
    "json-1-1": (bom(specVersion="1.1"), "not a CycloneDX JSON version"),
    "not-cyclonedx": (bom(bomFormat="SPDX"), "bomFormat is 'SPDX'"),
    "not-object": ([MINIMAL_1_6], "not a JSON object"),
    "not-json": ("{", "not JSON"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_sboms_are_invalid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    content, message = BROKEN[name]
    path = write(tmp_path, f"{name}.json", content)
    assert sbom.main(["validate", str(path)]) == 1
    captured = capsys.readouterr()
    assert f"INVALID {path}" in captured.out
    assert message in captured.out
    assert "1 of 1 SBOMs invalid" in captured.err


def test_many_schema_errors_are_cut_short() -> None:
    components = [{"type": "gadget", "name": str(index)} for index in range(30)]
    errors, _ = sbom.validate_document(json.dumps(bom(components=components, dependencies=[])))
    assert len(errors) == sbom.MAX_SCHEMA_ERRORS + 1
    assert errors[-1] == "... (more schema errors)"


def test_one_invalid_file_fails_the_lot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, "good.json", MINIMAL_1_6)
    unreadable = tmp_path / "directory.json"
    unreadable.mkdir()
    assert sbom.main(["validate", str(good), str(unreadable), str(tmp_path / "missing")]) == 1
    captured = capsys.readouterr()
    assert "cannot read" in captured.out
    assert "2 of 3 SBOMs invalid" in captured.err


def test_cli_needs_a_command_and_files() -> None:
    with pytest.raises(SystemExit) as caught:
        sbom.main([])
    assert caught.value.code == 2
    with pytest.raises(SystemExit):
        sbom.main(["validate"])


def test_python_dash_m(tmp_path: Path) -> None:
    path = write(tmp_path, "ok.json", MINIMAL_1_6)
    command = [sys.executable, "-m", "imdb_deploy.supply_chain.sbom", "validate", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 SBOMs valid" in done.stdout
