"""The fast predictor: the shared transformation plus an ONNX model run by onnxruntime.

ONNX is a data format (a protobuf graph), so loading one never executes code from the file, unlike
unpickling. onnxruntime's tree-ensemble kernel runs a single row in roughly 10 microseconds, so
the per-request cost is dominated by the pure-Python transform of one dict (a few microseconds).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort  # type: ignore[import-untyped]

from imdb_model.features import (
    FeatureMatrix,
    transform_columns,
    transform_record,
    transform_records,
)
from imdb_model.schema import FeatureSchema

Predictions = npt.NDArray[np.float32]


class Predictor:
    """Predicts averageRating from raw title fields, clipped to the schema's rating range.

    `threads` sets onnxruntime's intra-op threads: 1 is right for single rows and for a web
    server whose workers already use every core; more helps only large batches.
    """

    def __init__(
        self, model: bytes, schema: FeatureSchema, *, threads: int = 1, version: str = ""
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        # Idle worker threads spin by default; on 2 cores that steals the request workers' CPU.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            model, sess_options=options, providers=["CPUExecutionProvider"]
        )
        inputs = self._session.get_inputs()
        outputs = self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ValueError("the model must have exactly one input and at least one output")
        width = inputs[0].shape[-1]
        if isinstance(width, int) and width != schema.n_features:
            raise ValueError(
                f"the model expects {width} features, the schema has {schema.n_features}"
            )
        self._input: str = inputs[0].name
        self._outputs: list[str] = [outputs[0].name]
        self._low, self._high = schema.rating_range
        self.schema = schema
        self.version = version
        # Single rows reuse one input and one output buffer, bound to the session once: that
        # saves onnxruntime's per-call argument checks and allocations (a few microseconds).
        # The lock keeps concurrent callers (threads) off the shared buffers: they take the
        # ordinary path instead.
        self._lock = threading.Lock()
        self._row: FeatureMatrix = np.zeros((1, schema.n_features), dtype=np.float32)
        self._binding: Any = None
        self._run_bound: Callable[[], None] = lambda: None
        shape = outputs[0].shape
        if isinstance(shape, list) and len(shape) in (1, 2) and shape[1:] in ([], [1]):
            self._result: Predictions = np.zeros((1, *shape[1:]), dtype=np.float32)
            self._binding = self._session.io_binding()
            self._binding.bind_ortvalue_input(
                self._input, ort.OrtValue.ortvalue_from_numpy(self._row)
            )
            self._binding.bind_ortvalue_output(
                self._outputs[0], ort.OrtValue.ortvalue_from_numpy(self._result)
            )
            # Public API only: onnxruntime's private internals would save a little more, but
            # could change under any upgrade.
            bound = self._binding
            self._run_bound = lambda: self._session.run_with_iobinding(bound)

    def predict_matrix(self, features: npt.ArrayLike) -> Predictions:
        """Predictions for an already transformed (n, n_features) matrix."""
        matrix: FeatureMatrix = np.ascontiguousarray(features, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[1] != self.schema.n_features:
            raise ValueError(
                f"expected a matrix of shape (n, {self.schema.n_features}), got {matrix.shape}"
            )
        if matrix.shape[0] == 0:
            return np.empty(0, dtype=np.float32)
        raw = self._session.run(self._outputs, {self._input: matrix})[0]
        result: Predictions = np.clip(
            np.asarray(raw, dtype=np.float32).reshape(-1), self._low, self._high
        )
        return result

    def predict_one(self, record: Mapping[str, Any]) -> float:
        """Prediction for one record (raises FeatureError on invalid input)."""
        if self._binding is not None and self._lock.acquire(blocking=False):
            try:
                transform_record(record, self.schema, self._row)
                self._run_bound()
                value: float = self._result.item(0)
            finally:
                self._lock.release()
        else:
            raw = self._session.run(
                self._outputs, {self._input: transform_record(record, self.schema)}
            )
            value = float(raw[0].reshape(-1)[0])
        return float(np.float32(min(max(value, self._low), self._high)))

    def predict_records(self, records: Sequence[Mapping[str, Any]]) -> Predictions:
        """Predictions for a list of records."""
        return self.predict_matrix(transform_records(records, self.schema))

    def predict_columns(self, columns: Mapping[str, Any]) -> Predictions:
        """Predictions for a columnar batch (see `transform_columns`)."""
        return self.predict_matrix(transform_columns(columns, self.schema))
