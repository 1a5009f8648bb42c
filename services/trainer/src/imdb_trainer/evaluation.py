"""Deterministic split, metrics, baselines and the champion/challenger gate."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import polars as pl

from imdb_model.schema import FeatureSchema

FloatArray = npt.NDArray[np.float64]
BUCKETS: Final[int] = 1000
SPLIT_METHOD: Final[str] = "splitmix64(int(tconst[2:])) % 1000: test below test_buckets, then valid"


def split_buckets(tconst: pl.Series) -> npt.NDArray[np.uint64]:
    """A bucket 0..999 per row from a hash of the tconst number.

    Depends on the title alone (not on row order, file contents or library versions), so a title
    stays in the same split across data refreshes and reruns. splitmix64 is a fixed, well-mixed
    64-bit hash that is trivial to reimplement anywhere.
    """
    x = tconst.str.slice(2).cast(pl.UInt64).to_numpy().astype(np.uint64)
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    buckets: npt.NDArray[np.uint64] = z % np.uint64(BUCKETS)
    return buckets


@dataclass(frozen=True)
class Split:
    """Boolean masks of the three parts."""

    train: npt.NDArray[np.bool_]
    valid: npt.NDArray[np.bool_]
    test: npt.NDArray[np.bool_]
    test_buckets: int
    valid_buckets: int

    def describe(self) -> dict[str, Any]:
        """For the manifest."""
        return {
            "method": SPLIT_METHOD,
            "buckets": BUCKETS,
            "test_buckets": self.test_buckets,
            "valid_buckets": self.valid_buckets,
            "rows": {
                "train": int(self.train.sum()),
                "valid": int(self.valid.sum()),
                "test": int(self.test.sum()),
            },
        }


def make_split(tconst: pl.Series, test_share: float, valid_share: float) -> Split:
    """Test and validation (early stopping) parts by hash bucket; the rest is training."""
    test_buckets = round(test_share * BUCKETS)
    valid_buckets = round(valid_share * BUCKETS)
    buckets = split_buckets(tconst)
    test = buckets < test_buckets
    valid = ~test & (buckets < test_buckets + valid_buckets)
    return Split(~(test | valid), valid, test, test_buckets, valid_buckets)


def held_out_mask(tconst: pl.Series, test_buckets: int) -> npt.NDArray[np.bool_]:
    """The held-out rows of an earlier split, from its manifest's `test_buckets`."""
    mask: npt.NDArray[np.bool_] = split_buckets(tconst) < test_buckets
    return mask


def regression_metrics(actual: npt.ArrayLike, predicted: npt.ArrayLike) -> dict[str, float]:
    """RMSE, MAE and R^2 (R^2 against the mean of `actual` itself)."""
    y = np.asarray(actual, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    if y.size == 0:
        raise ValueError("no rows to evaluate")
    error = p - y
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(error**2)) / total if total > 0 else 0.0
    return {
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mae": float(np.mean(np.abs(error))),
        "r2": r2,
        "rows": int(y.size),
    }


@dataclass(frozen=True)
class LinearBaseline:
    """A linear model in raw feature units: prediction = intercept + features @ coefficients."""

    intercept: float
    coefficients: tuple[float, ...]

    def predict(self, features: npt.ArrayLike, clip: tuple[float, float]) -> FloatArray:
        """Predictions clipped to the rating range, like the served model's."""
        raw = np.asarray(features, dtype=np.float64) @ np.asarray(self.coefficients)
        result: FloatArray = np.clip(raw + self.intercept, *clip)
        return result

    def to_dict(self, names: tuple[str, ...]) -> dict[str, Any]:
        """For the manifest: named coefficients."""
        return {
            "intercept": self.intercept,
            "coefficients": dict(zip(names, self.coefficients, strict=True)),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], names: tuple[str, ...]) -> LinearBaseline:
        """Inverse of `to_dict`."""
        coefficients = data["coefficients"]
        return cls(float(data["intercept"]), tuple(float(coefficients[n]) for n in names))


def fit_linear(
    features: npt.ArrayLike, target: npt.ArrayLike, alpha: float = 1.0, block: int = 65_536
) -> LinearBaseline:
    """Ridge regression on standardised features (as sklearn's Ridge after a StandardScaler),
    folded back to raw units.

    Solved in closed form from the Gram matrix, accumulated in float64 blocks: memory stays at
    one block however many rows there are, and no heavy dependency is needed for a baseline.
    """
    x = np.asarray(features)
    y = np.asarray(target, dtype=np.float64)
    n, k = x.shape
    mean = x.mean(axis=0, dtype=np.float64)
    y_mean = float(y.mean())
    gram = np.zeros((k, k))
    moment = np.zeros(k)
    for start in range(0, n, block):
        centred = x[start : start + block].astype(np.float64) - mean
        gram += centred.T @ centred
        moment += centred.T @ (y[start : start + block] - y_mean)
    scale = np.sqrt(np.diag(gram) / n)
    scale[scale == 0] = 1.0
    standardised = gram / np.outer(scale, scale) + alpha * np.eye(k)
    coefficients = np.linalg.solve(standardised, moment / scale) / scale
    intercept = y_mean - float(mean @ coefficients)
    return LinearBaseline(intercept, tuple(float(c) for c in coefficients))


@dataclass
class GateResult:
    """Outcome of the champion/challenger gate."""

    passed: bool = True
    reasons: list[str] = field(default_factory=list)
    reference: dict[str, Any] | None = None

    def fail(self, reason: str) -> None:
        """Record a failed condition."""
        self.passed = False
        self.reasons.append(reason)

    def to_dict(self) -> dict[str, Any]:
        """For the manifest and the CLI output."""
        return {"passed": self.passed, "reasons": self.reasons, "reference": self.reference}


def gate(
    model: Mapping[str, float],
    linear: Mapping[str, float],
    reference: Mapping[str, float] | None = None,
    challenger_on_reference_rows: Mapping[str, float] | None = None,
    tolerance: float = 0.01,
) -> GateResult:
    """Fail when the model's RMSE is worse than the linear baseline's, or worse than the
    reference's (on the same rows) by more than `tolerance` RMSE points."""
    result = GateResult()
    if model["rmse"] > linear["rmse"]:
        result.fail(
            f"model RMSE {model['rmse']:.4f} is worse than the linear baseline's "
            f"{linear['rmse']:.4f}"
        )
    if reference is not None:
        challenger = challenger_on_reference_rows or model
        if challenger["rmse"] > reference["rmse"] + tolerance:
            result.fail(
                f"model RMSE {challenger['rmse']:.4f} is worse than the reference's "
                f"{reference['rmse']:.4f} by more than the tolerance {tolerance}"
            )
    return result


def prediction_distribution(predictions: npt.ArrayLike, schema: FeatureSchema) -> dict[str, Any]:
    """Histogram shares and quantiles of predictions: the baseline for drift alerts."""
    p = np.asarray(predictions, dtype=np.float64)
    low, high = schema.rating_range
    edges = np.linspace(low, high, round((high - low) * 2) + 1)
    counts, _ = np.histogram(p, bins=edges)
    quantiles = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]
    return {
        "source": "model predictions on the held-out test split",
        "rows": int(p.size),
        "bin_edges": [float(e) for e in edges],
        "shares": [float(c) / max(int(p.size), 1) for c in counts],
        "mean": float(p.mean()),
        "std": float(p.std()),
        "quantiles": {f"p{round(q * 100):02d}": float(np.quantile(p, q)) for q in quantiles},
    }
