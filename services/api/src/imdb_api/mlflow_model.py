"""The benchmark's peer: the same artifact as an MLflow pyfunc model, for `mlflow models serve`.

Only the benchmark imports this module, with the `benchmark` dependency group installed; the
service never does. mlflow is imported dynamically so that type checks and the service's image
do not need it.
"""

from __future__ import annotations

import importlib
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from imdb_model import verify_artifact


def _missing(value: Any) -> bool:
    """pandas hands over absent values as None or NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _wrapper_class() -> type:
    pyfunc = importlib.import_module("mlflow.pyfunc")

    class ImdbRatingModel(pyfunc.PythonModel):  # type: ignore[misc,name-defined]
        """Raw title.basics fields in (a DataFrame), ratings out, through imdb_model."""

        def load_context(self, context: Any) -> None:
            self.predictor = verify_artifact(context.artifacts["artifact"]).predictor(threads=1)

        def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
            columns: dict[str, Any] = {}
            for name in model_input.columns:
                values = model_input[name].tolist()
                columns[name] = [None if _missing(v) else v for v in values]
            for name in ("startYear", "runtimeMinutes", "isAdult"):
                if name in columns:
                    columns[name] = np.array(
                        [np.nan if v is None else float(v) for v in columns[name]]
                    )
            return self.predictor.predict_columns(columns)

    return ImdbRatingModel


def save(artifact: Path, target: Path) -> Path:
    """Write `artifact` as an MLflow model directory at `target`."""
    pyfunc = importlib.import_module("mlflow.pyfunc")
    with warnings.catch_warnings():
        # mlflow warns that it cannot infer a signature from the untyped predict(): expected.
        warnings.simplefilter("ignore", UserWarning)
        pyfunc.save_model(
            path=str(target),
            python_model=_wrapper_class()(),
            artifacts={"artifact": str(artifact)},
        )
    return target
