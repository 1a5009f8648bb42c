"""The training report: Markdown plus PNG plots, written into the artifact's `report/` folder.

Figures are drawn with matplotlib's object API on the Agg backend (no pyplot global state, no
display needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy.typing as npt
from matplotlib.figure import Figure

from imdb_trainer.ingest import DataQuality

DPI = 110
TOP_FEATURES = 20


def _save(figure: Figure, path: Path) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    return path.name


def _predicted_vs_actual(
    folder: Path, actual: npt.NDArray[Any], predicted: npt.NDArray[Any]
) -> str:
    figure = Figure(figsize=(6.5, 6))
    axes = figure.subplots()
    hexes = axes.hexbin(actual, predicted, gridsize=45, bins="log", cmap="viridis", mincnt=1)
    figure.colorbar(hexes, ax=axes, label="titles (log)")
    axes.plot([1, 10], [1, 10], color="crimson", linewidth=1, label="perfect prediction")
    axes.set(
        xlabel="actual averageRating",
        ylabel="predicted averageRating",
        title="Predicted vs actual (held-out titles)",
        xlim=(1, 10),
        ylim=(1, 10),
    )
    axes.legend(loc="upper left")
    return _save(figure, folder / "predicted_vs_actual.png")


def _residuals(folder: Path, actual: npt.NDArray[Any], predicted: npt.NDArray[Any]) -> str:
    residual = actual - predicted
    figure = Figure(figsize=(11, 4.5))
    left, right = figure.subplots(1, 2)
    left.hist(residual, bins=60, color="steelblue")
    left.axvline(0, color="crimson", linewidth=1)
    left.set(xlabel="actual - predicted", ylabel="titles", title="Residual distribution")
    right.hexbin(predicted, residual, gridsize=45, bins="log", cmap="viridis", mincnt=1)
    right.axhline(0, color="crimson", linewidth=1)
    right.set(xlabel="predicted", ylabel="actual - predicted", title="Residuals vs prediction")
    return _save(figure, folder / "residuals.png")


def _importance(folder: Path, gains: dict[str, float]) -> str:
    total = sum(gains.values()) or 1.0
    top = sorted(gains.items(), key=lambda kv: kv[1], reverse=True)[:TOP_FEATURES]
    names = [name for name, _ in reversed(top)]
    shares = [100 * value / total for _, value in reversed(top)]
    figure = Figure(figsize=(7.5, 6.5))
    axes = figure.subplots()
    axes.barh(names, shares, color="darkcyan")
    axes.set(xlabel="share of total gain (%)", title=f"Feature importance (top {len(top)})")
    return _save(figure, folder / "feature_importance.png")


def _metrics(folder: Path, test: dict[str, dict[str, float]]) -> str:
    models = [
        ("model", "LightGBM"),
        ("linear_baseline", "linear (ridge)"),
        ("mean_baseline", "mean"),
    ]
    figure = Figure(figsize=(10, 4))
    for axes, metric in zip(figure.subplots(1, 3), ("rmse", "mae", "r2"), strict=True):
        values = [test[key][metric] for key, _ in models]
        bars = axes.bar(
            [label for _, label in models], values, color=["seagreen", "gray", "silver"]
        )
        axes.bar_label(bars, fmt="%.3f")
        axes.set(title=metric.upper() if metric != "r2" else "R²")
        axes.margins(y=0.15)
    figure.suptitle("Held-out metrics: model vs baselines")
    return _save(figure, folder / "metrics.png")


def _quality(folder: Path, quality: DataQuality) -> str:
    counts = quality.bad_by_reason()
    figure = Figure(figsize=(8, max(2.5, 0.35 * len(counts) + 1.2)))
    axes = figure.subplots()
    if counts:
        names = list(counts)
        bars = axes.barh(names, [counts[n] for n in names], color="indianred")
        axes.bar_label(bars, fmt="%d")
        axes.margins(x=0.15)
    else:
        axes.text(0.5, 0.5, "no bad rows", ha="center", va="center")
    axes.set(
        xlabel="rows",
        title=f"Bad rows by reason: {quality.bad_rows} of {quality.examined_rows} examined "
        f"({quality.bad_share:.3%})",
    )
    return _save(figure, folder / "data_quality.png")


def _table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def write_report(
    folder: Path,
    *,
    manifest: dict[str, Any],
    actual: npt.NDArray[Any],
    predicted: npt.NDArray[Any],
    quality: DataQuality,
) -> list[Path]:
    """Write `report.md` and its plots into `folder`; return the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    test = manifest["metrics"]["test"]
    images = [
        _metrics(folder, test),
        _predicted_vs_actual(folder, actual, predicted),
        _residuals(folder, actual, predicted),
        _importance(folder, manifest["model"]["feature_importance_gain"]),
        _quality(folder, quality),
    ]
    metric_rows = [["", "RMSE", "MAE", "R²", "rows"]]
    for key, label in (
        ("model", "LightGBM (served via ONNX)"),
        ("linear_baseline", "linear baseline (ridge)"),
        ("mean_baseline", "global-mean baseline"),
    ):
        m = test[key]
        metric_rows.append(
            [label, f"{m['rmse']:.4f}", f"{m['mae']:.4f}", f"{m['r2']:.4f}", str(m["rows"])]
        )
    quality_rows = [["file", "reason", "rows"]]
    for name, report in (("title.basics", quality.basics), ("title.ratings", quality.ratings)):
        quality_rows += [[name, k, str(v)] for k, v in sorted(report.bad.items())]
        quality_rows += [[name, f"(info) {k}", str(v)] for k, v in sorted(report.info.items())]
    gate = manifest["gate"]
    lines = [
        f"# Training report: {manifest['model_name']} {manifest['version']}",
        "",
        f"Created {manifest['created_at']} from data `{manifest['data']['fingerprint'][:16]}` "
        f"(git {manifest['git']['revision'] or 'unknown'}).",
        f"Gate: **{'passed' if gate['passed'] else 'FAILED'}**"
        + (f" ({'; '.join(gate['reasons'])})" if gate["reasons"] else ""),
        "",
        "## Held-out metrics",
        "",
        _table(metric_rows),
        "",
        f"Split: {manifest['split']['method']}; rows {manifest['split']['rows']}.",
        "",
        "![metrics](metrics.png)",
        "",
        "## Predictions",
        "",
        "![predicted vs actual](predicted_vs_actual.png)",
        "",
        "![residuals](residuals.png)",
        "",
        "## Features",
        "",
        f"{len(manifest['features']['feature_names'])} features, no post-release information "
        "(numVotes is not used). Importance by total split gain:",
        "",
        "![feature importance](feature_importance.png)",
        "",
        "## Data quality",
        "",
        f"{quality.examined_rows} rows examined, {quality.kept_rows} kept, {quality.bad_rows} bad "
        f"({quality.bad_share:.3%}).",
        "",
        _table(quality_rows),
        "",
        "![data quality](data_quality.png)",
        "",
    ]
    (folder / "report.md").write_text("\n".join(lines), encoding="utf-8")
    return [folder / "report.md", *(folder / image for image in images)]
