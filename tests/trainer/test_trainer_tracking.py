"""MLflow tracking without a server: flattening, the run record, and the CLI against a recording
fake backend (what is logged when, exit codes, the artifact left intact on tracking failures)."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from imdb_model.artifact import verify_artifact
from imdb_trainer import tracking
from imdb_trainer.cli import (
    EXIT_ARTIFACT,
    EXIT_DATA,
    EXIT_GATE,
    EXIT_OK,
    EXIT_TRACKING,
    EXIT_USAGE,
    main,
)
from imdb_trainer.evaluation import GateResult
from imdb_trainer.tracking import (
    RunRecord,
    StartedRun,
    TrackingError,
    TrackingUnavailableError,
    TrainingRun,
    evaluation_metrics,
    flatten_numbers,
    public_uri,
    result_params,
    result_tags,
    run_record_path,
    tag_release,
    tracking_uri,
    training_params,
)
from imdb_trainer.train import TrainOptions, TrainOutcome

URI = "http://127.0.0.1:9"  # never contacted: every test here uses FakeBackend
DIGEST = "sha256:" + "ab" * 32


@dataclass
class FakeRun:
    """What a run received."""

    experiment: str
    name: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    uploads: dict[str, list[str]] = field(default_factory=dict)  # artifact path -> file names
    status: str = "RUNNING"


@dataclass
class FakeBackend:
    """A TrackingBackend that records calls; `fail` names a method that raises instead."""

    tracking_uri: str = URI
    fail: str | None = None
    runs: dict[str, FakeRun] = field(default_factory=dict)

    def _maybe_fail(self, method: str) -> None:
        if self.fail == method:
            raise ConnectionError(f"{method} failed on purpose")

    def start_run(self, experiment_name: str, run_name: str, tags: Mapping[str, str]) -> StartedRun:
        self._maybe_fail("start_run")
        run_id = f"run{len(self.runs)}"
        self.runs[run_id] = FakeRun(experiment_name, run_name, tags=dict(tags))
        return StartedRun(run_id=run_id, experiment_id="7")

    def log(
        self,
        run_id: str,
        *,
        params: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self._maybe_fail("log")
        run = self.runs[run_id]
        for key in params or {}:
            assert key not in run.params, f"param {key} logged twice (MLflow refuses that)"
        run.params.update(params or {})
        run.metrics.update(metrics or {})
        run.tags.update(tags or {})

    def log_directory(self, run_id: str, directory: Path, artifact_path: str) -> None:
        self._maybe_fail("log_directory")
        files = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*"))
        self.runs[run_id].uploads[artifact_path] = [f for f in files if (directory / f).is_file()]

    def end_run(self, run_id: str, status: str, name: str | None = None) -> None:
        self._maybe_fail("end_run")
        self.runs[run_id].status = status
        if name is not None:
            self.runs[run_id].name = name

    def run_tags(self, run_id: str) -> dict[str, str]:
        self._maybe_fail("run_tags")
        if run_id not in self.runs:
            raise LookupError(f"RESOURCE_DOES_NOT_EXIST: run {run_id}")
        return dict(self.runs[run_id].tags)

    def only_run(self) -> FakeRun:
        assert len(self.runs) == 1
        return next(iter(self.runs.values()))


def hide_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every `import mlflow...` fail, as without the `tracking` extra (None in sys.modules
    stops an import even of a submodule an earlier test loaded)."""
    for name in ("mlflow", "mlflow.tracking", "mlflow.entities", "mlflow.exceptions"):
        monkeypatch.setitem(sys.modules, name, None)


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> FakeBackend:
    """Tracking on (MLFLOW_TRACKING_URI set), talking to a fresh FakeBackend."""
    fake = FakeBackend()
    monkeypatch.setenv(tracking.TRACKING_URI_VAR, URI)
    monkeypatch.delenv(tracking.EXPERIMENT_VAR, raising=False)

    def connect(uri: str) -> FakeBackend:
        fake.tracking_uri = uri
        return fake

    monkeypatch.setattr(tracking, "MlflowBackend", connect)
    return fake


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["--quiet", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--no-report", *extra]


# ---------------------------------------------------------------- what is logged


def test_training_params_are_every_option_as_text() -> None:
    options = TrainOptions(
        data_dir=Path("data"), out=Path("artifacts/v1"), title_types=("movie", "tvMovie")
    )
    options.threads = 3
    params = training_params(options)
    assert params["data_dir"] == "data"
    assert params["out"] == str(Path("artifacts/v1"))
    assert params["title_types"] == "movie,tvMovie"
    assert params["learning_rate"] == "0.15"
    assert params["num_rounds"] == "200"
    assert params["threads"] == "3"
    assert params["report"] == "True"
    assert "reference" not in params  # None: no --reference
    assert all(isinstance(value, str) for value in params.values())


def manifest_like(reference: bool = False) -> dict[str, Any]:
    model = {"rmse": 0.8, "mae": 0.6, "r2": 0.4, "rows": 300}
    return {
        "version": "20250101.120000-abcdef12",
        "data": {"fingerprint": "abcdef12" * 8},
        "git": {"revision": "f" * 40, "dirty": True},
        "model": {
            "params": {"num_leaves": 31, "metric": ["l2"], "interaction_constraints": [[0, 1]]}
        },
        "metrics": {
            "test": {"model": model, "mean_baseline": {**model, "rmse": float("nan")}},
            "valid": {"model": {**model, "rows": 100}},
        },
        "gate": {
            "passed": not reference,
            "reasons": [],
            "reference": (
                {"path": "x", "version": "v0", "metrics": {"rmse": 0.7, "rows": 290}}
                if reference
                else None
            ),
        },
    }


def test_metrics_are_the_manifests_evaluation_metrics_flattened() -> None:
    metrics = evaluation_metrics(manifest_like())
    assert metrics["test.model.rmse"] == 0.8
    assert metrics["test.model.rows"] == 300.0
    assert metrics["valid.model.rows"] == 100.0
    assert "test.mean_baseline.rmse" not in metrics  # not finite
    assert metrics["test.mean_baseline.mae"] == 0.6
    assert not any(key.startswith("gate.") for key in metrics)
    with_reference = evaluation_metrics(manifest_like(reference=True))
    assert with_reference["gate.reference.rmse"] == 0.7
    assert with_reference["gate.reference.rows"] == 290.0
    # Booleans and texts are no metrics.
    assert flatten_numbers({"a": {"ok": True, "name": "x", "n": 2}}) == {"a.n": 2.0}


def test_result_params_and_tags() -> None:
    manifest = manifest_like(reference=True)
    params = result_params(manifest)
    assert params == {
        "data_fingerprint": "abcdef12" * 8,
        "lightgbm.interaction_constraints": "[[0, 1]]",
        "lightgbm.metric": "l2",
        "lightgbm.num_leaves": "31",
    }
    tags = result_tags(manifest, "d" * 64)
    assert tags == {
        "data_fingerprint": "abcdef12" * 8,
        "artifact_version": "20250101.120000-abcdef12",
        "gate": "failed",
        "mlflow.source.git.commit": "f" * 40,
        "git_dirty": "true",
        "manifest_sha256": "d" * 64,
    }
    manifest["git"] = {"revision": None, "dirty": None}
    assert set(result_tags(manifest, None)) == {"data_fingerprint", "artifact_version", "gate"}


def test_tracking_uri_and_public_uri() -> None:
    assert tracking_uri({}) is None
    assert tracking_uri({"MLFLOW_TRACKING_URI": "  "}) is None
    assert tracking_uri({"MLFLOW_TRACKING_URI": " http://h:5000 "}) == "http://h:5000"
    assert public_uri("https://user:secret@mlflow.example:8443/x?y=1") == (
        "https://mlflow.example:8443/x?y=1"
    )
    assert public_uri("https://token@mlflow.example/") == "https://mlflow.example/"
    assert public_uri("sqlite:///tmp/db.sqlite") == "sqlite:///tmp/db.sqlite"


def test_the_run_record_lives_beside_the_artifact(tmp_path: Path) -> None:
    artifact = tmp_path / "artifacts" / "v1"
    artifact.mkdir(parents=True)
    path = run_record_path(Path(f"{artifact}/"))
    assert path == tmp_path.resolve() / "artifacts" / "v1.mlflow-run.json"
    record = RunRecord("r1", "7", URI, "v1", "d" * 64)
    record.write(path)
    assert RunRecord.read(path) == record
    assert sorted(p.name for p in path.parent.iterdir()) == ["v1", "v1.mlflow-run.json"]
    path.write_text("{}")
    with pytest.raises(TrackingError, match="unreadable run record"):
        RunRecord.read(path)
    path.unlink()
    with pytest.raises(TrackingError, match="--run-id"):
        RunRecord.read(path)


# ---------------------------------------------------------------- train


def test_without_the_variable_mlflow_is_never_imported(
    generated: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(tracking.TRACKING_URI_VAR, raising=False)
    hide_mlflow(monkeypatch)

    def no_backend(uri: str) -> FakeBackend:
        raise AssertionError("tracking is off: no backend may be made")

    monkeypatch.setattr(tracking, "MlflowBackend", no_backend)
    out = tmp_path / "artifact"
    code, _, _ = run(capsys, *train_argv(generated, out))
    assert code == EXIT_OK
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]  # no run record


def test_without_mlflow_the_variable_is_a_usage_error_before_training(
    generated: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(tracking.TRACKING_URI_VAR, URI)
    hide_mlflow(monkeypatch)
    out = tmp_path / "artifact"
    code, stdout, err = run(capsys, *train_argv(generated, out))
    assert code == EXIT_USAGE
    assert "MLFLOW_TRACKING_URI is set but mlflow is not installed" in err
    assert "imdb-trainer[tracking]" in err
    assert stdout == ""  # no metrics table: nothing was trained
    assert not out.exists()
    for name, value in tracking.MLFLOW_QUIET_DEFAULTS.items():
        monkeypatch.setenv(name, value)  # what the backend sets by default, undone after
    with pytest.raises(TrackingUnavailableError):
        tracking.MlflowBackend(URI)


def test_train_logs_options_results_and_the_artifact(
    backend: FakeBackend,
    generated: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(tracking.EXPERIMENT_VAR, "nightly")
    out = tmp_path / "artifact"
    code, stdout, _ = run(capsys, *train_argv(generated, out, "--num-leaves", "15"))
    assert code == EXIT_OK
    assert "held-out metrics" in stdout
    manifest = verify_artifact(out).manifest  # nothing was added to the artifact
    logged = backend.only_run()
    assert logged.experiment == "nightly"
    assert logged.status == "FINISHED"
    assert logged.name == manifest["version"]
    assert logged.params["num_leaves"] == "15"
    assert logged.params["lightgbm.num_leaves"] == "15"
    assert logged.params["data_fingerprint"] == manifest["data"]["fingerprint"]
    assert logged.tags["data_fingerprint"] == manifest["data"]["fingerprint"]
    assert logged.tags["manifest_sha256"] == manifest["manifest_sha256"]
    assert logged.tags["gate"] == "passed"
    assert logged.tags["mlflow.source.name"] == "imdb-trainer train"
    assert logged.metrics["test.model.rmse"] == manifest["metrics"]["test"]["model"]["rmse"]
    assert logged.metrics == evaluation_metrics(manifest)
    # --no-report: no report to upload, the artifact as published.
    assert logged.uploads == {"artifact": sorted(["manifest.json", *manifest["files"]])}
    record = RunRecord.read(run_record_path(out))
    assert record == RunRecord("run0", "7", URI, manifest["version"], manifest["manifest_sha256"])


def test_the_report_and_the_artifact_are_uploaded(
    backend: FakeBackend, trained: Path, tmp_path: Path
) -> None:
    published = tmp_path / "champion"
    shutil.copytree(trained, published)
    manifest = json.loads((published / "manifest.json").read_text())
    options = TrainOptions(data_dir=tmp_path, out=published)
    started = tracking.start_training_run(options)
    assert started is not None
    outcome = TrainOutcome(manifest=manifest, gate=GateResult(), published=published)
    said: list[str] = []
    assert tracking.finish_training_run(started, outcome, log=said.append, warn=said.append)
    uploads = backend.only_run().uploads
    assert uploads["report"] == sorted(p.name for p in (trained / "report").iterdir())
    assert uploads["artifact"] == sorted(["manifest.json", *manifest["files"]])
    assert said[0] == f"logged MLflow run run0 in experiment 'imdb-average-rating' at {URI}"
    assert said[1] == f"run record: {run_record_path(published)}"


def test_an_unreachable_server_fails_before_training(
    backend: FakeBackend, generated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backend.fail = "start_run"
    out = tmp_path / "artifact"
    code, stdout, err = run(capsys, *train_argv(generated, out))
    assert code == EXIT_TRACKING
    assert f"tracking error: could not start an MLflow run at {URI}" in err
    assert "start_run failed on purpose" in err
    assert stdout == ""
    assert not out.exists()
    backend.fail = "log"  # the run opens, its options cannot be logged: it is ended at once
    code, _, err = run(capsys, *train_argv(generated, out))
    assert code == EXIT_TRACKING
    assert "could not log the options to MLflow run run0" in err
    assert backend.only_run().status == "FAILED"
    assert not out.exists()


def test_a_tracking_failure_after_training_keeps_the_artifact(
    backend: FakeBackend, generated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backend.fail = "log_directory"
    out = tmp_path / "artifact"
    code, stdout, err = run(capsys, *train_argv(generated, out))
    assert code == EXIT_TRACKING
    assert "held-out metrics" in stdout
    verify_artifact(out)
    assert "could not upload the artifact to MLflow run run0" in err
    assert f"the artifact {out} was published all the same" in err
    assert "track-release --run-id run0" in err
    logged = backend.only_run()
    assert logged.status == "FAILED"
    assert "test.model.rmse" in logged.metrics  # what got through stays logged
    assert not run_record_path(out).exists()


def test_an_unwritable_run_record_keeps_the_finished_run(
    backend: FakeBackend, generated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "artifact"
    run_record_path(out).mkdir()  # a directory where the record goes: the rename onto it fails
    code, _, err = run(capsys, *train_argv(generated, out))
    assert code == EXIT_TRACKING
    verify_artifact(out)
    assert f"tracking error: could not write the run record {run_record_path(out)}" in err
    assert "track-release --run-id run0" in err
    assert backend.only_run().status == "FINISHED"  # everything was logged: it stays so


def test_a_failed_gate_is_logged_as_a_failed_run(
    backend: FakeBackend,
    trained: Path,
    generated: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "challenger"
    argv = train_argv(generated, out, "--reference", str(trained), "--num-rounds", "3")
    code, _, err = run(capsys, *argv)
    assert code == EXIT_GATE
    assert "nothing was published" in err
    logged = backend.only_run()
    assert logged.status == "FAILED"
    assert logged.tags["gate"] == "failed"
    assert "manifest_sha256" not in logged.tags
    assert logged.params["reference"] == str(trained)
    assert logged.metrics["gate.reference.rmse"] > 0
    assert logged.uploads == {}
    assert list(tmp_path.iterdir()) == []  # neither artifact nor run record


def test_a_gate_failure_outranks_a_tracking_failure(
    backend: FakeBackend,
    trained: Path,
    generated: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    backend.fail = "end_run"
    argv = train_argv(generated, tmp_path / "c", "--reference", str(trained), "--num-rounds", "3")
    code, _, err = run(capsys, *argv)
    assert code == EXIT_GATE
    assert "tracking error: could not end MLflow run run0" in err
    assert "published all the same" not in err


def test_a_training_error_ends_the_run_failed(
    backend: FakeBackend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = run(capsys, *train_argv(tmp_path / "no-data", tmp_path / "artifact"))
    assert code == EXIT_DATA
    assert backend.only_run().status == "FAILED"


def test_an_interrupt_ends_the_run_killed(backend: FakeBackend, tmp_path: Path) -> None:
    started = tracking.start_training_run(TrainOptions(data_dir=tmp_path, out=tmp_path / "a"))
    assert isinstance(started, TrainingRun)
    with pytest.raises(KeyboardInterrupt), tracking.ending_run_on_error(started):
        raise KeyboardInterrupt
    assert backend.only_run().status == "KILLED"
    with tracking.ending_run_on_error(None):  # tracking off: nothing to end
        pass


# ---------------------------------------------------------------- track-release


@pytest.fixture
def tracked(backend: FakeBackend, trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained artifact with the run record of a run that logged it."""
    artifact = tmp_path / "artifact"
    shutil.copytree(trained, artifact)
    manifest = json.loads((artifact / "manifest.json").read_text())
    backend.runs["logged"] = FakeRun("imdb-average-rating", manifest["version"])
    record = RunRecord("logged", "7", URI, manifest["version"], manifest["manifest_sha256"])
    record.write(run_record_path(artifact))
    return artifact


def test_track_release_tags_the_run_of_an_artifact(
    backend: FakeBackend, tracked: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, _ = run(
        capsys, "track-release", "--artifact", str(tracked), "--release", "v1.2", "--digest", DIGEST
    )
    assert code == EXIT_OK
    tags = backend.runs["logged"].tags
    assert tags["release"] == "v1.2"
    assert tags["release_digest"] == DIGEST
    assert json.loads(stdout) == {"run_id": "logged", "tracking_uri": URI, "tags": tags}
    # A later release of the same run without a digest clears the old one.
    code, _, _ = run(capsys, "track-release", "--run-id", "logged", "--release", "v1.3")
    assert code == EXIT_OK
    assert (tags["release"], tags["release_digest"]) == ("v1.3", "")


def test_track_release_refuses_what_it_cannot_match(
    backend: FakeBackend, tracked: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def release(*argv: str) -> tuple[int, str]:
        code, _, err = run(capsys, "track-release", *argv, "--release", "v1")
        return code, err

    code, err = release("--run-id", "nosuchrun")
    assert code == EXIT_TRACKING
    assert "no MLflow run nosuchrun" in err
    record = RunRecord.read(run_record_path(tracked))
    RunRecord(record.run_id, "7", URI, "old", "0" * 64).write(run_record_path(tracked))
    code, err = release("--artifact", str(tracked))
    assert code == EXIT_TRACKING
    assert "belongs to another artifact (version old)" in err
    run_record_path(tracked).unlink()
    code, err = release("--artifact", str(tracked))
    assert code == EXIT_TRACKING
    assert f"tracking error: no run record {run_record_path(tracked)}" in err
    code, err = release("--artifact", str(tmp_path / "nothing"))
    assert code == EXIT_ARTIFACT
    assert not backend.runs["logged"].tags


def test_track_release_usage_errors(
    tracked: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for argv in (
        ["--run-id", "r", "--artifact", str(tracked), "--release", "v1"],
        ["--run-id", "r", "--release", "v1", "--digest", "sha256:abc"],
        ["--run-id", "r"],
    ):
        with pytest.raises(SystemExit) as exited:
            main(["track-release", *argv])
        assert exited.value.code == EXIT_USAGE
    assert "is not an image digest" in capsys.readouterr().err
    monkeypatch.delenv(tracking.TRACKING_URI_VAR)
    code, _, err = run(capsys, "track-release", "--run-id", "logged", "--release", "v1")
    assert code == EXIT_USAGE
    assert "track-release needs MLFLOW_TRACKING_URI" in err
    with pytest.raises(ValueError, match="not both"):
        tag_release(release="v1", run_id="r", artifact=tracked, environ={})
    with pytest.raises(ValueError, match="give run_id or artifact"):
        tag_release(release="v1", environ={"MLFLOW_TRACKING_URI": URI})
