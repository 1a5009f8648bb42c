"""Training: ingest -> features -> LightGBM and baselines -> gate -> artifact with report."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import polars as pl

from imdb_model.artifact import FORMAT_VERSION, seal_manifest, verify_artifact
from imdb_model.features import FeatureError, FeatureMatrix, transform_columns
from imdb_model.predictor import Predictor
from imdb_model.schema import INPUT_FIELDS, FeatureSchema
from imdb_trainer.evaluation import (
    GateResult,
    LinearBaseline,
    Split,
    fit_linear,
    gate,
    held_out_mask,
    make_split,
    prediction_distribution,
    regression_metrics,
)
from imdb_trainer.formats import DataError
from imdb_trainer.ingest import DataQuality, IngestResult, ingest
from imdb_trainer.onnx_export import INPUT_NAME, OUTPUT_NAME, booster_to_onnx
from imdb_trainer.publish import (
    check_target,
    git_revision,
    library_versions,
    make_version,
    publish,
    staging,
)

MODEL_FILE: Final[str] = "model.onnx"
NATIVE_FILE: Final[str] = "model.lightgbm.txt"
REPORT_DIR: Final[str] = "report"
# The ONNX model must reproduce the booster to this tolerance (float32 sums of leaf values).
ONNX_TOLERANCE: Final[float] = 1e-3
# Hand-written golden inputs: typical, quoted/sequel with genres as a string, and all-missing.
GOLDEN_RECORDS: Final[tuple[dict[str, Any], ...]] = (
    {
        "primaryTitle": "The Long Night",
        "originalTitle": "The Long Night",
        "isAdult": 0,
        "startYear": 1994,
        "runtimeMinutes": 142,
        "genres": ["Drama"],
    },
    {
        "primaryTitle": '"Weird" Horror 2',
        "originalTitle": "Horreur Bizarre 2",
        "isAdult": 0,
        "startYear": 2015,
        "runtimeMinutes": 88,
        "genres": "Horror,Thriller",
    },
    {"primaryTitle": "Untitled", "startYear": None, "runtimeMinutes": None, "genres": None},
)

ProgressFactory = Callable[[str, int], Callable[[int], None]]
Log = Callable[[str], None]


@dataclass
class TrainOptions:
    """Everything `train` needs; the CLI maps its options onto this."""

    data_dir: Path
    out: Path
    reference: Path | None = None
    title_types: tuple[str, ...] = ("movie",)
    max_bad_share: float = 0.02
    tolerance: float = 0.01
    test_share: float = 0.2
    valid_share: float = 0.1
    num_rounds: int = 200
    learning_rate: float = 0.15
    num_leaves: int = 31
    min_data_in_leaf: int = 40
    early_stopping: int = 20
    threads: int = field(default_factory=lambda: min(os.cpu_count() or 1, 4))
    seed: int = 0
    report: bool = True
    overwrite: bool = False


@dataclass
class TrainOutcome:
    """What happened: the manifest (also when nothing was published) and the gate's verdict."""

    manifest: dict[str, Any]
    gate: GateResult
    published: Path | None


@dataclass
class Timer:
    """Wall time per step, and the process's peak RSS so far."""

    steps: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time the enclosed block."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.steps[name] = round(time.perf_counter() - start, 3)

    @staticmethod
    def peak_rss_mb() -> float:
        """Peak resident set size of this process in MiB (Linux reports KiB)."""
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def frame_columns(frame: pl.DataFrame) -> dict[str, Any]:
    """Columnar input for `transform_columns` from ingested rows (no per-row dicts)."""
    numeric = ("isAdult", "startYear", "runtimeMinutes")
    columns: dict[str, Any] = {c: frame[c].cast(pl.Float64).to_numpy() for c in numeric}
    for name in ("primaryTitle", "originalTitle", "titleType", "genres"):
        columns[name] = frame[name].to_list()
    return columns


def frame_records(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """The same rows as API-style records (tests and golden examples)."""
    return frame.select(INPUT_FIELDS).to_dicts()


def check_quality(quality: DataQuality, max_bad_share: float) -> None:
    """Raise DataError when too many rows are bad or nothing usable is left."""
    if quality.bad_share > max_bad_share:
        worst = sorted(quality.bad_by_reason().items(), key=lambda kv: -kv[1])[:5]
        raise DataError(
            f"{quality.bad_rows} of {quality.examined_rows} examined rows are bad "
            f"({quality.bad_share:.2%} > --max-bad-share {max_bad_share:.2%}); "
            f"most frequent: {', '.join(f'{k}={v}' for k, v in worst)}"
        )
    if quality.kept_rows == 0:
        raise DataError("no usable rated titles of the requested types")


def _fit_booster(
    options: TrainOptions,
    *,
    x: FeatureMatrix,
    y: npt.NDArray[np.float64],
    split: Split,
    names: tuple[str, ...],
    progress: ProgressFactory | None,
) -> lgb.Booster:
    params: dict[str, Any] = {
        "objective": "regression",
        "learning_rate": options.learning_rate,
        "num_leaves": options.num_leaves,
        "min_data_in_leaf": options.min_data_in_leaf,
        "lambda_l2": 1.0,
        "feature_fraction": 0.9,
        "max_bin": 255,
        "num_threads": options.threads,
        "seed": options.seed,
        "deterministic": True,
        "force_col_wise": True,
        "verbosity": -1,
    }
    train_set = lgb.Dataset(x[split.train], y[split.train], feature_name=list(names))
    callbacks: list[Any] = []
    valid_sets = []
    if split.valid.any():
        valid_sets.append(lgb.Dataset(x[split.valid], y[split.valid], reference=train_set))
        callbacks.append(lgb.early_stopping(options.early_stopping, verbose=False))
    if progress is not None:
        advance = progress("boosting rounds", options.num_rounds)
        callbacks.append(lambda env: advance(env.iteration + 1))
    booster = lgb.train(
        params,
        train_set,
        num_boost_round=options.num_rounds,
        valid_sets=valid_sets,
        callbacks=callbacks,
    )
    if progress is not None:
        advance(options.num_rounds)  # early stopping ends before the bar is full
    return booster


def _golden(
    predictor: Predictor, frame: pl.DataFrame, schema: FeatureSchema
) -> list[dict[str, Any]]:
    records = [{**r, "titleType": schema.title_types[0]} for r in GOLDEN_RECORDS]
    records += frame_records(frame.head(2))
    return [{"input": r, "expected": predictor.predict_one(r)} for r in records]


def _reference_gate(
    reference: Path,
    frame: pl.DataFrame,
    test: npt.NDArray[np.bool_],
    y: npt.NDArray[np.float64],
    predictions: npt.NDArray[np.float32],
) -> tuple[dict[str, Any], dict[str, float], dict[str, float]]:
    # `predictions` covers every row (0 where not predicted); only test rows are read.
    """Reference and challenger metrics on the test rows that both can score."""
    artifact = verify_artifact(reference)
    usable = test & frame["titleType"].is_in(list(artifact.schema.title_types)).to_numpy()
    if not usable.any():
        raise DataError(f"the reference {reference} cannot score any held-out row")
    rows = frame.filter(pl.Series(usable))
    try:
        reference_predictions = artifact.predictor(threads=1).predict_columns(frame_columns(rows))
    except FeatureError as exc:  # e.g. a reference with narrower valid ranges
        raise DataError(f"the reference {reference} cannot score the held-out rows: {exc}") from exc
    reference_metrics = regression_metrics(y[usable], reference_predictions)
    challenger_metrics = regression_metrics(y[usable], predictions[usable])
    info = {"path": str(reference), "version": artifact.version, "metrics": reference_metrics}
    return info, reference_metrics, challenger_metrics


@dataclass
class _Fit:
    """Models and held-out results of one training run."""

    booster: lgb.Booster
    onnx_bytes: bytes
    mean: float
    linear: LinearBaseline
    predictions: npt.NDArray[np.float32]
    linear_test: npt.NDArray[np.float64]
    onnx_gap: float
    metrics: dict[str, Any]


def _fit(
    options: TrainOptions,
    schema: FeatureSchema,
    data: tuple[FeatureMatrix, npt.NDArray[np.float64], Split],
    timer: Timer,
    progress: ProgressFactory | None,
) -> _Fit:
    x, y, split = data
    with timer.step("train_model"):
        booster = _fit_booster(
            options, x=x, y=y, split=split, names=schema.feature_names, progress=progress
        )
    with timer.step("train_baselines"):
        mean = float(y[split.train].mean())
        linear = fit_linear(x[split.train], y[split.train])
    with timer.step("export_onnx"):
        onnx_bytes = booster_to_onnx(booster, schema.n_features, list(schema.feature_names))
        predictor = Predictor(onnx_bytes, schema, threads=options.threads)
        native = np.clip(booster.predict(x[split.test]), *schema.rating_range)
    with timer.step("evaluate"):
        # Scored: held-out rows, validation rows, and a sample of training rows (for the
        # train/test gap) - predicting every training row would cost seconds at full size.
        train_sample = split.train & (np.cumsum(split.train) <= 100_000)
        scored = split.test | split.valid | train_sample
        predictions = np.zeros(len(y), dtype=np.float32)
        predictions[scored] = predictor.predict_matrix(x[scored])
        onnx_gap = float(np.max(np.abs(predictions[split.test] - native), initial=0.0))
        if onnx_gap > ONNX_TOLERANCE:  # the converter is exact by design: a bug, if ever
            raise RuntimeError(f"the ONNX export differs from the booster by {onnx_gap}")
        y_test = y[split.test]
        linear_test = linear.predict(x[split.test], schema.rating_range)
        metrics: dict[str, Any] = {
            "test": {
                "model": regression_metrics(y_test, predictions[split.test]),
                "mean_baseline": regression_metrics(y_test, np.full(y_test.size, mean)),
                "linear_baseline": regression_metrics(y_test, linear_test),
            },
            "train_sample": {
                "model": regression_metrics(y[train_sample], predictions[train_sample])
            },
        }
        if split.valid.any():
            metrics["valid"] = {
                "model": regression_metrics(y[split.valid], predictions[split.valid])
            }
    return _Fit(booster, onnx_bytes, mean, linear, predictions, linear_test, onnx_gap, metrics)


def _manifest(
    *,
    created: datetime,
    data: IngestResult,
    schema: FeatureSchema,
    split: Split,
    fit: _Fit,
    verdict: GateResult,
) -> dict[str, Any]:
    fingerprint = data.quality.fingerprint
    importance = fit.booster.feature_importance(importance_type="gain")
    return {
        "format_version": FORMAT_VERSION,
        "model_name": "imdb-average-rating",
        "version": make_version(created, fingerprint),
        "created_at": created.isoformat(timespec="seconds"),
        "git": git_revision(Path.cwd()),
        "data": data.quality.to_dict(),
        "features": schema.to_dict(),
        "split": split.describe(),
        "model": {
            "file": MODEL_FILE,
            "format": "onnx",
            "input": INPUT_NAME,
            "output": OUTPUT_NAME,
            "native_file": NATIVE_FILE,
            "library": "lightgbm",
            "params": fit.booster.params,
            "num_trees": fit.booster.num_trees(),
            "best_iteration": fit.booster.best_iteration or fit.booster.current_iteration(),
            "onnx_max_abs_diff_vs_native": fit.onnx_gap,
            "feature_importance_gain": {
                n: float(v) for n, v in zip(schema.feature_names, importance, strict=True)
            },
        },
        "metrics": fit.metrics,
        "baselines": {"mean": fit.mean, "linear": fit.linear.to_dict(schema.feature_names)},
        "gate": verdict.to_dict(),
        "golden": _golden(Predictor(fit.onnx_bytes, schema, threads=1), data.frame, schema),
        "prediction_distribution": prediction_distribution(fit.predictions[split.test], schema),
        "libraries": library_versions(),
    }


def train(
    options: TrainOptions,
    progress: ProgressFactory | None = None,
    log: Log | None = None,
) -> TrainOutcome:
    """Run the whole job. Raises DataError, OutputExistsError, ArtifactVerificationError.

    A failed gate returns an outcome with `published=None`; nothing is written then.
    """
    say = log or (lambda _: None)
    check_target(options.out, options.overwrite)
    timer = Timer()
    created = datetime.now(timezone.utc)
    schema = FeatureSchema(title_types=options.title_types)

    with timer.step("ingest"):
        data = ingest(options.data_dir, options.title_types, progress)
    check_quality(data.quality, options.max_bad_share)
    say(f"ingested {data.quality.kept_rows} rated titles ({data.quality.bad_rows} bad rows)")
    with timer.step("features"):
        x = transform_columns(frame_columns(data.frame), schema)
        y = data.frame["averageRating"].to_numpy().astype(np.float64)
        split = make_split(data.frame["tconst"], options.test_share, options.valid_share)
    if not split.train.any() or not split.test.any():
        raise DataError("too few rows for a train/test split")
    fit = _fit(options, schema, (x, y, split), timer, progress)

    with timer.step("gate"):
        reference_metrics = challenger_metrics = None
        reference_info = None
        if options.reference is not None:
            reference_info, reference_metrics, challenger_metrics = _reference_gate(
                options.reference, data.frame, split.test, y, fit.predictions
            )
        verdict = gate(
            fit.metrics["test"]["model"],
            fit.metrics["test"]["linear_baseline"],
            reference_metrics,
            challenger_metrics,
            options.tolerance,
        )
        verdict.reference = reference_info
    manifest = _manifest(
        created=created, data=data, schema=schema, split=split, fit=fit, verdict=verdict
    )
    manifest["training"] = {"rows": split.describe()["rows"], "threads": options.threads}
    if not verdict.passed:
        manifest["training"].update(timings_s=timer.steps, peak_rss_mb=timer.peak_rss_mb())
        return TrainOutcome(manifest=manifest, gate=verdict, published=None)

    with staging(options.out) as stage:
        with timer.step("write_artifact"):
            (stage / MODEL_FILE).write_bytes(fit.onnx_bytes)
            fit.booster.save_model(str(stage / NATIVE_FILE))
            if options.report:
                from imdb_trainer.report import write_report  # noqa: PLC0415  (matplotlib is slow)

                write_report(
                    stage / REPORT_DIR,
                    manifest=manifest,
                    actual=y[split.test],
                    predicted=fit.predictions[split.test],
                    quality=data.quality,
                )
        manifest["training"].update(timings_s=timer.steps, peak_rss_mb=timer.peak_rss_mb())
        seal_manifest(manifest, stage)
        verify_artifact(stage)  # the loader the API uses must accept what we publish
        publish(stage, options.out, options.overwrite)
    say(f"published {options.out} (version {manifest['version']})")
    return TrainOutcome(manifest=manifest, gate=verdict, published=options.out)


def evaluate(
    artifact_dir: Path,
    data_dir: Path,
    split: str = "test",
    max_bad_share: float = 0.02,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Metrics of a verified artifact on a data set (`split`: "test" rows by the artifact's own
    split rule, or "all")."""
    artifact = verify_artifact(artifact_dir)
    data = ingest(data_dir, artifact.schema.title_types, progress)
    check_quality(data.quality, max_bad_share)
    frame = data.frame
    if split == "test":
        mask = held_out_mask(frame["tconst"], int(artifact.manifest["split"]["test_buckets"]))
        frame = frame.filter(pl.Series(mask))
    if frame.height == 0:
        raise DataError("no rows to evaluate")
    try:
        x = transform_columns(frame_columns(frame), artifact.schema)
    except FeatureError as exc:
        raise DataError(f"the artifact cannot score these rows: {exc}") from exc
    y = frame["averageRating"].to_numpy().astype(np.float64)
    baselines = artifact.manifest["baselines"]
    linear = LinearBaseline.from_dict(baselines["linear"], artifact.schema.feature_names)
    return {
        "artifact": artifact.version,
        "data_fingerprint": data.quality.fingerprint,
        "split": split,
        "rows": {
            "evaluated": int(y.size),
            "kept": data.quality.kept_rows,
            "examined": data.quality.examined_rows,
            "bad": data.quality.bad_rows,
        },
        "model": regression_metrics(y, artifact.predictor(threads=2).predict_matrix(x)),
        "baselines": {
            "mean": regression_metrics(y, np.full(y.size, float(baselines["mean"]))),
            "linear": regression_metrics(y, linear.predict(x, artifact.schema.rating_range)),
        },
        "data_quality": data.quality.to_dict(),
    }
