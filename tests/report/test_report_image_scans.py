"""What the deployment report says of the images' vulnerability scans (reports/image-scan.json):
in plain words, per image, in Markdown and HTML; nothing when the file is not there."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from imdb_deploy.report import cli, render
from imdb_deploy.report.cli import ImageScan, ImageScanError, read_image_scans

GENERATED = datetime(2026, 11, 26, 16, 0, 0, tzinfo=timezone.utc)
NOT_SCANNED = (
    "OS packages of mlops-imdb-api were not scanned for vulnerabilities "
    "(trivy not installed where the image was built)"
)
SCANNED = (
    "OS packages of mlops-imdb-trainer were scanned for vulnerabilities: "
    "Trivy report trivy-image-trainer.json"
)
# The entries `imdb_deploy.images.scan.ScanResult.record` writes.
SUMMARY: dict[str, Any] = {
    "images": [
        {
            "name": "mlops-imdb-api", "reference": "r/mlops-imdb-api:1", "platform": "linux/amd64",
            "scanned_at": "2026-11-26T15:00:00+00:00", "sbom": "sbom-image-api.cdx.json",
            "pip_audit": "pip-audit-image-api.json", "trivy": None, "trivy_installed": False,
            "os_packages_scanned": False,
            "reason": "trivy is not installed here (pip-audit covered the Python packages)",
            "passed": True,
        },
        {
            "name": "mlops-imdb-trainer", "reference": "r/mlops-imdb-trainer:1",
            "platform": "linux/amd64", "scanned_at": "2026-11-26T15:00:00+00:00",
            "sbom": "sbom-image-trainer.cdx.json", "pip_audit": "pip-audit-image-trainer.json",
            "trivy": "trivy-image-trainer.json", "trivy_installed": True,
            "os_packages_scanned": True, "reason": "", "passed": True,
        },
    ]
}  # fmt: skip


@pytest.fixture
def summary(tmp_path: Path) -> Path:
    path = tmp_path / "image-scan.json"
    path.write_text(json.dumps(SUMMARY))
    return path


def test_the_summary_is_read_per_image(summary: Path) -> None:
    assert read_image_scans(summary) == [
        ImageScan("mlops-imdb-api", False, False, None, SUMMARY["images"][0]["reason"]),
        ImageScan("mlops-imdb-trainer", True, True, "trivy-image-trainer.json", ""),
    ]


def test_no_summary_is_no_scans(tmp_path: Path) -> None:
    assert read_image_scans(tmp_path / "image-scan.json") == []


@pytest.mark.parametrize(
    "text", ["{", "[]", '{"images": {}}', '{"images": [{"name": "x"}]}', '{"images": [1]}']
)
def test_a_broken_summary_is_named(tmp_path: Path, text: str) -> None:
    path = tmp_path / "image-scan.json"
    path.write_text(text)
    with pytest.raises(ImageScanError, match=r"image-scan\.json"):
        read_image_scans(path)


def test_the_sentences_say_what_was_and_was_not_scanned(summary: Path) -> None:
    api, trainer = read_image_scans(summary)
    assert render.image_scan_sentence(api) == NOT_SCANNED
    assert render.image_scan_sentence(trainer) == SCANNED
    failed = ImageScan("mlops-imdb-api", False, True, None, "trivy failed (exit 1) before ...")
    assert render.image_scan_sentence(failed) == (
        "OS packages of mlops-imdb-api were not scanned for vulnerabilities "
        "(trivy failed (exit 1) before ...)"
    )


def test_markdown_and_html_say_it_in_plain_words(summary: Path) -> None:
    scans = read_image_scans(summary)
    text = render.markdown([], GENERATED, scans)
    assert "## Image scans" in text
    assert f"- {NOT_SCANNED}\n" in text
    assert f"- {SCANNED}\n" in text
    page = render.html_page([], GENERATED, scans)
    assert "<h2>Image scans</h2>" in page
    assert f'<li class="unscanned">{NOT_SCANNED}</li>' in page
    assert f'<li class="scanned">{SCANNED}</li>' in page


def test_without_a_summary_the_report_says_nothing_of_scans() -> None:
    assert "scan" not in render.markdown([], GENERATED).lower()
    assert "Image scans" not in render.html_page([], GENERATED)


def test_names_from_the_summary_are_escaped() -> None:
    hostile = [ImageScan("<b>x</b>|*y*", False, False, None, "")]
    assert "<b>" not in render.markdown([], GENERATED, hostile)
    assert "\\|\\*y\\*" in render.markdown([], GENERATED, hostile)
    assert "&lt;b&gt;x&lt;/b&gt;" in render.html_page([], GENERATED, hostile)


@pytest.fixture
def timeline(tmp_path: Path) -> Path:
    """A minimal deploy timeline (the shape `bluegreen.cli.save_outcome` writes)."""
    path = tmp_path / "deploys" / "t.json"
    path.parent.mkdir()
    path.write_text(
        json.dumps(
            {
                "id": "d00000000004", "action": "deploy", "environment": "sandbox-staging",
                "user": "root", "started": "2026-11-26T15:47:38+00:00",
                "from_versions": {"staging-1": "v0"}, "to_version": "v1",
                "result": "ok", "detail": "", "seconds": 1.0,
                "events": [
                    {"at": 0.1, "host": "*", "step": "deploy", "detail": "", "ok": True},
                    {"at": 1.0, "host": "*", "step": "deploy ok", "detail": "", "ok": True},
                ],
            }
        )
    )  # fmt: skip
    return path


def test_the_cli_reports_the_scans_it_finds(
    timeline: Path, summary: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    out = tmp_path / "out"
    assert cli.main([str(timeline), "--out", str(out), "--image-scan", str(summary)]) == 0
    assert NOT_SCANNED in (out / "deployment-report.md").read_text()
    assert SCANNED in (out / "deployment-report.html").read_text()


def test_the_cli_says_nothing_of_scans_it_does_not_find(
    timeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    out = tmp_path / "out"
    missing = tmp_path / "image-scan.json"
    assert cli.main([str(timeline), "--out", str(out), "--image-scan", str(missing)]) == 0
    assert "Image scans" not in (out / "deployment-report.md").read_text()
    assert "Image scans" not in (out / "deployment-report.html").read_text()


def test_the_cli_leaves_out_a_broken_summary_with_a_warning(
    timeline: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    broken = tmp_path / "image-scan.json"
    broken.write_text("[]")
    out = tmp_path / "out"
    assert cli.main([str(timeline), "--out", str(out), "--image-scan", str(broken)]) == 0
    assert "warning: image scans left out of the report" in capsys.readouterr().err
    assert "Image scans" not in (out / "deployment-report.md").read_text()


def test_the_default_summary_is_the_one_in_reports() -> None:
    assert cli.IMAGE_SCAN.parts[-2:] == ("reports", "image-scan.json")
