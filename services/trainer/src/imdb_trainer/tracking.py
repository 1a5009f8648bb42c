"""Experiment tracking: `imdb-trainer train` logs its run to MLflow when MLFLOW_TRACKING_URI is set.

Without the variable nothing here touches mlflow: it is imported only by `MlflowBackend`, and
only once a tracking URI was found. With it, `train`

1. before training: connects, finds or creates the experiment (MLFLOW_EXPERIMENT_NAME, default
   `imdb-average-rating`), opens a run and logs the training options as params. A missing
   mlflow fails here (TrackingUnavailableError, exit 2), and so does an unreachable server
   (TrackingError, exit 7), before any time goes into training;
2. after training, whatever the gate said: logs the `data_fingerprint` (param and tag), LightGBM's
   effective parameters (`lightgbm.*` params), the manifest's evaluation metrics flattened
   (`test.model.rmse`, `valid.model.r2`, `gate.reference.rmse`, ...), and tags
   (`artifact_version`, `gate`, `manifest_sha256`, the git commit); when the artifact was
   published, its report directory (run artifacts under `report/`) and the whole artifact
   directory (under `artifact/`); then names the run after the artifact version and ends it,
   FINISHED when published, FAILED when the gate refused the model;
3. writes the run record `<out>.mlflow-run.json` beside the artifact directory, never inside it:
   the artifact's files are listed and hashed in its sealed manifest, and an extra file would
   fail `imdb_model.artifact.verify_artifact`.

A tracking failure after training never undoes the publication: `finish_training_run` reports it
and the CLI exits 7 with the artifact in place (and no run record, so `track-release --artifact`
refuses it rather than tag a half-logged run).

`tag_release` is `imdb-trainer track-release`: it tags the run of an artifact (found through its
run record, which must describe that very artifact) or of a run id with the release it became:
tags `release`, `release_digest` (the image digest, or empty) and `released_at`.
"""

from __future__ import annotations

import getpass
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import urlsplit, urlunsplit

from imdb_model.artifact import MANIFEST_NAME, verify_artifact

if TYPE_CHECKING:
    from imdb_trainer.train import TrainOptions, TrainOutcome

TRACKING_URI_VAR: Final[str] = "MLFLOW_TRACKING_URI"
EXPERIMENT_VAR: Final[str] = "MLFLOW_EXPERIMENT_NAME"
# The manifest's model name: one experiment gathers every training of the model.
DEFAULT_EXPERIMENT: Final[str] = "imdb-average-rating"
RUN_RECORD_SUFFIX: Final[str] = ".mlflow-run.json"
# Where the run keeps the artifact's files (see the module docstring).
REPORT_ARTIFACT_PATH: Final[str] = "report"
ARTIFACT_ARTIFACT_PATH: Final[str] = "artifact"
# MLflow's cap on params and tags per log_batch request (metrics allow 1000; 100 fits all three).
BATCH_SIZE: Final[int] = 100
# Set unless the caller's environment says otherwise: a CLI run does not report usage to MLflow's
# telemetry service, and MLflow does not print run URLs on stdout, which carries the metrics table.
MLFLOW_QUIET_DEFAULTS: Final[Mapping[str, str]] = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
INSTALL_HINT: Final[str] = (
    "install the trainer's `tracking` extra (`pip install 'imdb-trainer[tracking]'`; in this "
    "repository `uv sync` installs it with the `tracking` group)"
)

Log = Callable[[str], None]


class TrackingUnavailableError(Exception):
    """Tracking cannot even start: mlflow is not installed, or track-release has no tracking URI.
    A usage problem (exit 2), found before any work is done."""


class TrackingError(Exception):
    """Talking to the tracking server failed (unreachable, refused a request, unknown run), or
    an artifact has no run record that describes it (exit 7)."""


@dataclass(frozen=True)
class StartedRun:
    """The ids of a run that a backend opened."""

    run_id: str
    experiment_id: str


class TrackingBackend(Protocol):
    """What the trainer asks of a tracking server; `MlflowBackend` is the real one, tests pass a
    recording fake. Methods may raise anything: callers turn it into TrackingError."""

    tracking_uri: str

    def start_run(self, experiment_name: str, run_name: str, tags: Mapping[str, str]) -> StartedRun:
        """Open a run in the named experiment, creating the experiment if needed."""

    def log(
        self,
        run_id: str,
        *,
        params: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Log params (once each), metrics (at step 0) and tags (set or overwritten)."""

    def log_directory(self, run_id: str, directory: Path, artifact_path: str) -> None:
        """Upload every file under `directory` as run artifacts under `artifact_path`."""

    def end_run(self, run_id: str, status: str, name: str | None = None) -> None:
        """End the run with an MLflow status (FINISHED, FAILED, KILLED), renaming it if asked."""

    def run_tags(self, run_id: str) -> dict[str, str]:
        """The run's tags; raises when there is no such run."""


class MlflowBackend:
    """`TrackingBackend` over mlflow's `MlflowClient`: the only place that imports mlflow.

    mlflow-skinny (the `tracking` extra) is enough: it talks to a tracking server over REST and
    uploads artifacts through it (`mlflow-artifacts:`) or straight to the artifact store.
    """

    def __init__(self, tracking_uri: str) -> None:
        for name, value in MLFLOW_QUIET_DEFAULTS.items():
            os.environ.setdefault(name, value)
        try:
            from mlflow.tracking import MlflowClient  # noqa: PLC0415  (an optional dependency)
        except ImportError as exc:
            raise TrackingUnavailableError(
                f"{TRACKING_URI_VAR} is set but mlflow is not installed: {INSTALL_HINT}, "
                f"or unset {TRACKING_URI_VAR} to train without tracking"
            ) from exc
        self.tracking_uri = tracking_uri
        self._client = MlflowClient(tracking_uri=tracking_uri)

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException  # noqa: PLC0415

        experiment = self._client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        try:
            return str(self._client.create_experiment(name))
        except MlflowException as exc:  # another trainer created it in the meantime
            experiment = self._client.get_experiment_by_name(name)
            if experiment is None:
                raise exc from None
            return str(experiment.experiment_id)

    def start_run(self, experiment_name: str, run_name: str, tags: Mapping[str, str]) -> StartedRun:
        """Open a run (see TrackingBackend)."""
        experiment_id = self._experiment_id(experiment_name)
        run = self._client.create_run(experiment_id, tags=dict(tags), run_name=run_name)
        return StartedRun(run_id=str(run.info.run_id), experiment_id=experiment_id)

    def log(
        self,
        run_id: str,
        *,
        params: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Log in batches of at most BATCH_SIZE of each kind (see TrackingBackend)."""
        from mlflow.entities import Metric, Param, RunTag  # noqa: PLC0415

        now_ms = int(datetime.now(timezone.utc).timestamp() * 1000)
        param_list = [Param(k, v) for k, v in (params or {}).items()]
        metric_list = [Metric(k, v, now_ms, 0) for k, v in (metrics or {}).items()]
        tag_list = [RunTag(k, v) for k, v in (tags or {}).items()]
        longest = max(len(param_list), len(metric_list), len(tag_list))
        for start in range(0, longest, BATCH_SIZE):
            window = slice(start, start + BATCH_SIZE)
            self._client.log_batch(
                run_id,
                metrics=metric_list[window],
                params=param_list[window],
                tags=tag_list[window],
            )

    def log_directory(self, run_id: str, directory: Path, artifact_path: str) -> None:
        """Upload a directory tree (see TrackingBackend)."""
        self._client.log_artifacts(run_id, str(directory), artifact_path)

    def end_run(self, run_id: str, status: str, name: str | None = None) -> None:
        """End and optionally rename the run (see TrackingBackend)."""
        if name is not None:
            self._client.update_run(run_id, name=name)
        self._client.set_terminated(run_id, status)

    def run_tags(self, run_id: str) -> dict[str, str]:
        """The run's tags (see TrackingBackend)."""
        return {str(k): str(v) for k, v in self._client.get_run(run_id).data.tags.items()}


Connect = Callable[[str], TrackingBackend]


@dataclass(frozen=True)
class TrainingRun:
    """The run that `train` opened before training and ends after it."""

    backend: TrackingBackend
    run_id: str
    experiment_id: str
    experiment_name: str


@dataclass(frozen=True)
class RunRecord:
    """`<artifact dir>.mlflow-run.json`: which run logged the artifact, for `track-release`."""

    run_id: str
    experiment_id: str
    tracking_uri: str  # without user name or password
    artifact_version: str
    manifest_sha256: str  # identifies the artifact the record belongs to

    def write(self, path: Path) -> None:
        """Write the record atomically (a reader sees the old record or the new one)."""
        staged = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        staged.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n", "utf-8")
        staged.replace(path)

    @classmethod
    def read(cls, path: Path) -> RunRecord:
        """Read a record; TrackingError when it is missing or malformed."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**{f.name: str(data[f.name]) for f in fields(cls)})
        except FileNotFoundError:
            raise TrackingError(
                f"no run record {path}: the artifact was trained without {TRACKING_URI_VAR}, or "
                "its tracking failed; pass --run-id instead"
            ) from None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise TrackingError(f"unreadable run record {path}: {exc!r}") from exc


def tracking_uri(environ: Mapping[str, str] | None = None) -> str | None:
    """MLFLOW_TRACKING_URI, or None when it is unset or blank (tracking off)."""
    value = (os.environ if environ is None else environ).get(TRACKING_URI_VAR, "").strip()
    return value or None


def public_uri(uri: str) -> str:
    """`uri` without a user name or password, fit for files and messages."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit(parts._replace(netloc=netloc))


def run_record_path(artifact_dir: Path) -> Path:
    """Where the run record of `artifact_dir` lives: beside it, `<name>.mlflow-run.json`."""
    directory = artifact_dir.resolve()
    return directory.parent / f"{directory.name}{RUN_RECORD_SUFFIX}"


def _param_text(value: Any) -> str:
    """MLflow params are strings: tuples as comma lists, other non-scalars as JSON."""
    if isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    if isinstance(value, (str, int, float, bool, Path)):
        return str(value)
    return json.dumps(value, sort_keys=True, default=str)


def training_params(options: TrainOptions) -> dict[str, str]:
    """Every training option as a param (None, i.e. no --reference, is left out)."""
    return {
        f.name: _param_text(getattr(options, f.name))
        for f in fields(options)
        if getattr(options, f.name) is not None
    }


def result_params(manifest: Mapping[str, Any]) -> dict[str, str]:
    """Params known once the data is read: its fingerprint and LightGBM's effective parameters."""
    params = {"data_fingerprint": str(manifest["data"]["fingerprint"])}
    for name, value in sorted(manifest["model"].get("params", {}).items()):
        params[f"lightgbm.{name}"] = _param_text(value)
    return params


def flatten_numbers(tree: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """`{"test": {"model": {"rmse": 0.8}}}` -> `{"test.model.rmse": 0.8}`; only finite numbers
    (booleans and texts are left out)."""
    flat: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_numbers(value, name))
        elif (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ):
            flat[name] = float(value)
    return flat


def evaluation_metrics(manifest: Mapping[str, Any]) -> dict[str, float]:
    """The manifest's evaluation metrics: `metrics` (test, valid and train sample, model and
    baselines) and, when gated against a champion, its metrics as `gate.reference.*`."""
    metrics = flatten_numbers(manifest["metrics"])
    reference = (manifest.get("gate") or {}).get("reference")
    if isinstance(reference, Mapping) and isinstance(reference.get("metrics"), Mapping):
        metrics.update(flatten_numbers(reference["metrics"], "gate.reference"))
    return metrics


def result_tags(manifest: Mapping[str, Any], manifest_sha256: str | None) -> dict[str, str]:
    """Tags to find the run by: data fingerprint, artifact version, gate verdict, git commit, and
    the sealed manifest's digest when the artifact was published."""
    tags = {
        "data_fingerprint": str(manifest["data"]["fingerprint"]),
        "artifact_version": str(manifest["version"]),
        "gate": "passed" if manifest["gate"]["passed"] else "failed",
    }
    git = manifest.get("git") or {}
    if git.get("revision"):
        tags["mlflow.source.git.commit"] = str(git["revision"])
        tags["git_dirty"] = str(git.get("dirty")).lower()
    if manifest_sha256 is not None:
        tags["manifest_sha256"] = manifest_sha256
    return tags


def _start_tags() -> dict[str, str]:
    """MLflow's source tags (the fluent API sets them; the client API leaves them to us)."""
    tags = {"mlflow.source.name": "imdb-trainer train", "mlflow.source.type": "LOCAL"}
    with suppress(KeyError, OSError):  # no user name in a container without a passwd entry
        tags["mlflow.user"] = getpass.getuser()
    return tags


@contextmanager
def _tracking_step(what: str) -> Iterator[None]:
    """Turn whatever the backend raises into TrackingError("<what>: ...").

    Deliberately broad: mlflow raises its own exceptions, requests', botocore's or OSError
    depending on the stores, and none of them may cost the caller a published artifact.
    """
    try:
        yield
    except (TrackingError, TrackingUnavailableError):
        raise
    except Exception as exc:
        raise TrackingError(f"{what}: {type(exc).__name__}: {exc}") from exc


def start_training_run(
    options: TrainOptions,
    environ: Mapping[str, str] | None = None,
    connect: Connect | None = None,
) -> TrainingRun | None:
    """Open the run before training, or return None when MLFLOW_TRACKING_URI is unset.

    Raises TrackingUnavailableError without mlflow, TrackingError when the server cannot be
    reached or refuses (mlflow retries first: MLFLOW_HTTP_REQUEST_MAX_RETRIES, _TIMEOUT).
    """
    env = os.environ if environ is None else environ
    uri = tracking_uri(env)
    if uri is None:
        return None
    with _tracking_step(f"could not connect to {public_uri(uri)}"):
        backend = (connect or MlflowBackend)(uri)
    experiment_name = env.get(EXPERIMENT_VAR, "").strip() or DEFAULT_EXPERIMENT
    with _tracking_step(f"could not start an MLflow run at {public_uri(uri)}"):
        started = backend.start_run(experiment_name, options.out.name, _start_tags())
    run = TrainingRun(backend, started.run_id, started.experiment_id, experiment_name)
    what = f"could not log the options to MLflow run {run.run_id}"
    with ending_run_on_error(run), _tracking_step(what):
        backend.log(run.run_id, params=training_params(options))
    return run


@contextmanager
def ending_run_on_error(run: TrainingRun | None) -> Iterator[None]:
    """End the run FAILED (KILLED on Ctrl-C) when the block raises, then let the error go on.

    The block's error is what the user needs to see, so failing to end the run is ignored.
    """
    try:
        yield
    except BaseException as exc:
        if run is not None:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            with suppress(Exception):
                run.backend.end_run(run.run_id, status)
        raise


def _log_outcome(run: TrainingRun, outcome: TrainOutcome) -> str | None:
    """Log the results and end the run (step 2 of the module docstring); return the sealed
    manifest's digest when the artifact was published."""
    from imdb_trainer.train import REPORT_DIR  # noqa: PLC0415  (train imports lightgbm)

    backend, run_id, manifest = run.backend, run.run_id, outcome.manifest
    published = outcome.published
    sealed_sha256: str | None = None
    if published is not None:  # the outcome's manifest is the one before sealing
        sealed = json.loads((published / MANIFEST_NAME).read_text(encoding="utf-8"))
        sealed_sha256 = str(sealed["manifest_sha256"])
    with _tracking_step(f"could not log the results to MLflow run {run_id}"):
        backend.log(
            run_id,
            params=result_params(manifest),
            metrics=evaluation_metrics(manifest),
            tags=result_tags(manifest, sealed_sha256),
        )
    if published is not None:
        if (published / REPORT_DIR).is_dir():
            with _tracking_step(f"could not upload the report to MLflow run {run_id}"):
                backend.log_directory(run_id, published / REPORT_DIR, REPORT_ARTIFACT_PATH)
        with _tracking_step(f"could not upload the artifact to MLflow run {run_id}"):
            backend.log_directory(run_id, published, ARTIFACT_ARTIFACT_PATH)
    status = "FINISHED" if published is not None else "FAILED"
    with _tracking_step(f"could not end MLflow run {run_id}"):
        backend.end_run(run_id, status, name=str(manifest["version"]))
    return sealed_sha256


def _write_run_record(run: TrainingRun, published: Path, version: str, sealed_sha256: str) -> Path:
    """Step 3 of the module docstring: the run record beside the published artifact."""
    path = run_record_path(published)
    record = RunRecord(
        run_id=run.run_id,
        experiment_id=run.experiment_id,
        tracking_uri=public_uri(run.backend.tracking_uri),
        artifact_version=version,
        manifest_sha256=sealed_sha256,
    )
    try:
        record.write(path)
    except OSError as exc:
        raise TrackingError(f"could not write the run record {path}: {exc}") from exc
    return path


def finish_training_run(
    run: TrainingRun | None, outcome: TrainOutcome, *, log: Log | None, warn: Log
) -> bool:
    """Log the outcome to the run, end it and write the run record; True when all of that
    worked (or tracking is off).

    On failure `warn` says what failed and that the artifact (if any) stays published, a run
    that was not ended yet is ended FAILED if the server still answers (one that was, with
    everything logged, keeps its status when only the local record could not be written), and
    False is returned: the caller decides the exit code, the artifact is never touched.
    """
    if run is None:
        return True
    ended = False
    record_path: Path | None = None
    try:
        sealed_sha256 = _log_outcome(run, outcome)
        ended = True
        if outcome.published is not None and sealed_sha256 is not None:
            version = str(outcome.manifest["version"])
            record_path = _write_run_record(run, outcome.published, version, sealed_sha256)
    except (TrackingError, OSError, ValueError, KeyError) as exc:
        if not ended:
            with suppress(Exception):
                run.backend.end_run(run.run_id, "FAILED")
        warn(f"tracking error: {exc}")
        if outcome.published is not None:
            warn(
                f"the artifact {outcome.published} was published all the same, without a run "
                f"record; tag its release with `track-release --run-id {run.run_id}`"
            )
        return False
    if log is not None:
        where = f"experiment {run.experiment_name!r} at {public_uri(run.backend.tracking_uri)}"
        log(f"logged MLflow run {run.run_id} in {where}")
        if record_path is not None:
            log(f"run record: {record_path}")
    return True


def recorded_run_id(artifact: Path) -> str:
    """The run id in the run record of `artifact`, after verifying the artifact and checking
    that the record names its manifest (a replaced artifact keeps its predecessor's record
    when the new one was trained without tracking)."""
    manifest_sha256 = str(verify_artifact(artifact).manifest["manifest_sha256"])
    path = run_record_path(artifact)
    record = RunRecord.read(path)
    if record.manifest_sha256 != manifest_sha256:
        raise TrackingError(
            f"the run record {path} belongs to another artifact (version "
            f"{record.artifact_version}): {artifact} was replaced since, without tracking or "
            "with failed tracking; pass --run-id instead"
        )
    return record.run_id


def tag_release(
    *,
    release: str,
    digest: str | None = None,
    run_id: str | None = None,
    artifact: Path | None = None,
    environ: Mapping[str, str] | None = None,
    connect: Connect | None = None,
) -> dict[str, Any]:
    """Tag a run with the release it became; the run is `run_id`, or the one in the run record
    of `artifact` (verified first, and the record must name its manifest).

    Raises TrackingUnavailableError (no MLFLOW_TRACKING_URI, no mlflow), ArtifactVerificationError
    (a broken artifact), TrackingError (no matching record, unknown run, server trouble).
    Returns what was done, for the CLI to print.
    """
    if run_id is not None and artifact is not None:
        raise ValueError("give run_id or artifact, not both")
    uri = tracking_uri(environ)
    if uri is None:
        raise TrackingUnavailableError(
            f"track-release needs {TRACKING_URI_VAR}: the URI of the MLflow server"
        )
    target = recorded_run_id(artifact) if artifact is not None else run_id
    if target is None:
        raise ValueError("give run_id or artifact")
    with _tracking_step(f"could not connect to {public_uri(uri)}"):
        backend = (connect or MlflowBackend)(uri)
    with _tracking_step(f"no MLflow run {target} at {public_uri(uri)}"):
        backend.run_tags(target)
    tags = {
        "release": release,
        "release_digest": digest or "",  # cleared when a later release of the run has none
        "released_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    with _tracking_step(f"could not tag MLflow run {target}"):
        backend.log(target, tags=tags)
    return {"run_id": target, "tracking_uri": public_uri(uri), "tags": tags}
