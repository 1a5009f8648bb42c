"""LightGBM booster -> ONNX TreeEnsembleRegressor, exact for float32 inputs.

A small converter of our own rather than onnxmltools: it is ~100 lines over LightGBM's documented
JSON dump, and it handles thresholds exactly. LightGBM compares a (float32) feature with a float64
threshold; ONNX's kernel compares in float32. Rounding the threshold to the *largest float32 not
above it* makes `x <= t32` equivalent to `x <= t` for every float32 x, so the ONNX model routes
every row to the same leaves as the booster (a naive float32 cast sends values that fall between
the two roundings the wrong way; onnxmltools showed differences of 0.06 rating points).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Final

import lightgbm as lgb
import numpy as np
import onnx
from onnx import TensorProto, helper

INPUT_NAME: Final[str] = "features"
OUTPUT_NAME: Final[str] = "rating"
OPSET: Final[int] = 17
ML_OPSET: Final[int] = 3
# IR version 8 is read by every onnxruntime release that has wheels for Python 3.10-3.13.
IR_VERSION: Final[int] = 8
_FLOAT32_MAX: Final[float] = float(np.finfo(np.float32).max)


class ConversionError(ValueError):
    """The booster uses a construct the converter does not support (categorical splits...)."""


def float32_at_most(threshold: float) -> float:
    """The largest float32 value <= threshold."""
    if threshold >= _FLOAT32_MAX:
        return _FLOAT32_MAX
    rounded = np.float32(threshold)
    if float(rounded) > threshold:
        rounded = np.nextafter(rounded, np.float32(-np.inf))
    return float(rounded)


@dataclass
class _Nodes:
    tree_ids: list[int] = field(default_factory=list)
    node_ids: list[int] = field(default_factory=list)
    feature_ids: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)
    true_ids: list[int] = field(default_factory=list)
    false_ids: list[int] = field(default_factory=list)
    missing_true: list[int] = field(default_factory=list)
    leaf_tree_ids: list[int] = field(default_factory=list)
    leaf_node_ids: list[int] = field(default_factory=list)
    leaf_weights: list[float] = field(default_factory=list)

    def add_tree(self, tree_id: int, root: dict[str, Any]) -> None:
        counter = iter(range(1 << 30))
        stack: list[tuple[dict[str, Any], int]] = [(root, next(counter))]
        while stack:
            node, node_id = stack.pop()
            self.tree_ids.append(tree_id)
            self.node_ids.append(node_id)
            if "leaf_value" in node:
                self.feature_ids.append(0)
                self.values.append(0.0)
                self.modes.append("LEAF")
                self.true_ids.append(0)
                self.false_ids.append(0)
                self.missing_true.append(0)
                self.leaf_tree_ids.append(tree_id)
                self.leaf_node_ids.append(node_id)
                self.leaf_weights.append(float(node["leaf_value"]))
                continue
            if node.get("decision_type") != "<=":
                raise ConversionError(f"unsupported decision type {node.get('decision_type')!r}")
            if node.get("missing_type") == "Zero":
                raise ConversionError("zero_as_missing splits are not supported")
            left_id, right_id = next(counter), next(counter)
            self.feature_ids.append(int(node["split_feature"]))
            self.values.append(float32_at_most(float(node["threshold"])))
            self.modes.append("BRANCH_LEQ")
            self.true_ids.append(left_id)
            self.false_ids.append(right_id)
            nan_left = node.get("missing_type") == "NaN" and bool(node.get("default_left"))
            self.missing_true.append(1 if nan_left else 0)
            stack.append((node["left_child"], left_id))
            stack.append((node["right_child"], right_id))


def booster_to_onnx(booster: lgb.Booster, n_features: int, feature_names: list[str]) -> bytes:
    """Serialized ONNX model computing the booster's raw prediction, shape (n, 1)."""
    dump = booster.dump_model()
    if dump.get("objective", "").split(" ")[0] not in ("regression", "regression_l1", "huber"):
        raise ConversionError(f"unsupported objective {dump.get('objective')!r}")
    if dump.get("average_output"):
        raise ConversionError("random-forest (average_output) boosters are not supported")
    nodes = _Nodes()
    for tree in dump["tree_info"]:
        nodes.add_tree(int(tree["tree_index"]), tree["tree_structure"])
    if not all(math.isfinite(w) for w in nodes.leaf_weights):
        raise ConversionError("the booster has non-finite leaf values")
    ensemble = helper.make_node(
        "TreeEnsembleRegressor",
        [INPUT_NAME],
        [OUTPUT_NAME],
        domain="ai.onnx.ml",
        n_targets=1,
        aggregate_function="SUM",
        post_transform="NONE",
        base_values=[0.0],
        nodes_treeids=nodes.tree_ids,
        nodes_nodeids=nodes.node_ids,
        nodes_featureids=nodes.feature_ids,
        nodes_values=nodes.values,
        nodes_modes=nodes.modes,
        nodes_truenodeids=nodes.true_ids,
        nodes_falsenodeids=nodes.false_ids,
        nodes_missing_value_tracks_true=nodes.missing_true,
        target_treeids=nodes.leaf_tree_ids,
        target_nodeids=nodes.leaf_node_ids,
        target_ids=[0] * len(nodes.leaf_node_ids),
        target_weights=nodes.leaf_weights,
    )
    graph = helper.make_graph(
        [ensemble],
        "imdb_rating",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
        producer_name="imdb-trainer",
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {"feature_names": json.dumps(feature_names)})
    onnx.checker.check_model(model)
    serialized: bytes = model.SerializeToString()
    return serialized
