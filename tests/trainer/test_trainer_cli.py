"""The CLI end to end on small generated data: train, verify, evaluate, gate, exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imdb_trainer.cli import (
    EXIT_ARTIFACT,
    EXIT_DATA,
    EXIT_EXISTS,
    EXIT_GATE,
    EXIT_OK,
    EXIT_USAGE,
    build_parser,
    main,
)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["--quiet", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_trained_artifact_layout(trained: Path) -> None:
    manifest = json.loads((trained / "manifest.json").read_text())
    names = {p.relative_to(trained).as_posix() for p in trained.rglob("*") if p.is_file()}
    assert names == {
        "manifest.json",
        "model.onnx",
        "model.lightgbm.txt",
        "report/report.md",
        "report/metrics.png",
        "report/predicted_vs_actual.png",
        "report/residuals.png",
        "report/feature_importance.png",
        "report/data_quality.png",
    }
    assert set(manifest["files"]) == names - {"manifest.json"}
    for png in trained.glob("report/*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Held-out metrics" in (trained / "report" / "report.md").read_text()
    test = manifest["metrics"]["test"]
    # The model clearly beats both baselines on generated data.
    assert test["model"]["rmse"] < test["linear_baseline"]["rmse"] < test["mean_baseline"]["rmse"]
    assert test["model"]["r2"] > 0.3
    assert "numVotes" not in manifest["features"]["feature_names"]
    assert manifest["features"]["genres"][0] == "Action"
    assert manifest["features"]["valid_ranges"]["runtimeMinutes"] == [1, 1000]
    assert manifest["data"]["bad_rows"] > 0
    assert manifest["model"]["onnx_max_abs_diff_vs_native"] < 1e-3
    assert len(manifest["golden"]) == 5
    assert sum(manifest["prediction_distribution"]["shares"]) == pytest.approx(1.0)
    assert manifest["version"].endswith(manifest["data"]["fingerprint"][:8])
    assert set(manifest["libraries"]) >= {"python", "lightgbm", "onnxruntime", "imdb-model"}
    assert manifest["gate"]["passed"] is True


def test_verify_and_evaluate(
    trained: Path,
    generated: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # CI sets FORCE_COLOR for readable logs: the JSON for scripts must stay plain all the same.
    monkeypatch.setenv("FORCE_COLOR", "1")
    code, out, _ = run(capsys, "verify", str(trained))
    assert code == EXIT_OK
    assert json.loads(out)["ok"] is True
    code, out, _ = run(capsys, "evaluate", "--artifact", str(trained), "--data", str(generated))
    assert code == EXIT_OK
    result = json.loads(out)
    manifest = json.loads((trained / "manifest.json").read_text())
    # The same held-out rows as at training time, so the same numbers.
    assert result["model"]["rmse"] == pytest.approx(manifest["metrics"]["test"]["model"]["rmse"])
    assert result["rows"]["evaluated"] == manifest["split"]["rows"]["test"]
    assert result["baselines"]["linear"]["rmse"] == pytest.approx(
        manifest["metrics"]["test"]["linear_baseline"]["rmse"]
    )
    code, out, _ = run(
        capsys, "evaluate", "--artifact", str(trained), "--data", str(generated), "--split", "all"
    )
    assert code == EXIT_OK
    assert json.loads(out)["rows"]["evaluated"] == result["rows"]["kept"]


def test_gate_failure_publishes_nothing(
    trained: Path, generated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "challenger"
    code, stdout, err = run(
        capsys,
        "train",
        "--data",
        str(generated),
        "--out",
        str(out),
        "--reference",
        str(trained),
        "--num-rounds",
        "3",
        "--no-report",
    )
    assert code == EXIT_GATE
    assert "worse than the reference" in err
    assert "nothing was published" in err
    assert "held-out metrics" in stdout
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no staging leftovers either


def test_gate_passes_against_itself_and_overwrite(
    trained: Path, generated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "artifact"
    out.mkdir()
    argv = ["train", "--data", str(generated), "--out", str(out), "--no-report"]
    code, _, err = run(capsys, *argv, "--reference", str(trained))
    assert code == EXIT_EXISTS
    assert "--overwrite" in err
    code, _, _ = run(capsys, *argv, "--reference", str(trained), "--overwrite")
    assert code == EXIT_OK
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["gate"]["reference"]["version"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


def test_data_errors(generated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "a"
    code, _, err = run(
        capsys, "train", "--data", str(generated), "--out", str(out), "--max-bad-share", "0"
    )
    assert code == EXIT_DATA
    assert "--max-bad-share" in err
    code, _, err = run(capsys, "train", "--data", str(tmp_path / "none"), "--out", str(out))
    assert code == EXIT_DATA
    assert not out.exists()


def test_tampered_artifacts(
    trained: Path, generated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    with (copy / "model.lightgbm.txt").open("a") as handle:
        handle.write("\n")
    code, _, err = run(capsys, "verify", str(copy))
    assert code == EXIT_ARTIFACT
    assert "model.lightgbm.txt was modified" in err
    code, _, _ = run(capsys, "evaluate", "--artifact", str(copy), "--data", str(generated))
    assert code == EXIT_ARTIFACT
    code, _, _ = run(
        capsys,
        "train",
        "--data",
        str(generated),
        "--out",
        str(tmp_path / "new"),
        "--reference",
        str(copy),
        "--no-report",
    )
    assert code == EXIT_ARTIFACT
    assert not (tmp_path / "new").exists()


def test_generate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["generate", "--out", str(tmp_path), "--rows", "300", "--plain"])
    assert code == EXIT_OK
    assert "title.basics.tsv" in capsys.readouterr().err
    assert (tmp_path / "title.ratings.tsv").is_file()
    code, _, err = run(capsys, "generate", "--out", str(tmp_path), "--unrated-ratio", "-1")
    assert code == EXIT_USAGE
    assert "unrated_ratio" in err


def test_help_and_usage(capsys: pytest.CaptureFixture[str]) -> None:
    text = build_parser().format_help()
    for line in ("3  data error", "4  gate failed", "5  artifact verification failed"):
        assert line in text
    for command in ("train", "evaluate", "generate", "verify"):
        with pytest.raises(SystemExit) as stop:
            main([command, "--help"])
        assert stop.value.code == 0
        assert "exit codes" in capsys.readouterr().out
    for argv in (
        ["train", "--data", "d"],
        ["train", "--data", "d", "--out", "o", "--title-types", "film"],
        ["train", "--data", "d", "--out", "o", "--max-bad-share", "2"],
        ["generate", "--out", "o", "--rows", "0"],
    ):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == EXIT_USAGE


def test_module_entry_point(trained: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "imdb_trainer.cli", "verify", str(trained)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["version"]
