"""Artifact verification (tamper detection), the schema contract and the predictor."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from imdb_model import (
    ArtifactVerificationError,
    FeatureError,
    FeatureSchema,
    Predictor,
    SchemaError,
    load_predictor,
    verify_artifact,
)
from imdb_model.artifact import MANIFEST_NAME, file_index, manifest_digest, seal_manifest

SCHEMA = FeatureSchema()


def tiny_model(
    n_features: int, old: float = 7.0, new: float = 5.0, output_shape: Any = (None, 1)
) -> bytes:
    """One tree: start_year <= 1990 (missing years are 0) -> `old`, else `new`."""
    node = helper.make_node(
        "TreeEnsembleRegressor",
        ["features"],
        ["rating"],
        domain="ai.onnx.ml",
        n_targets=1,
        aggregate_function="SUM",
        post_transform="NONE",
        base_values=[0.0],
        nodes_treeids=[0, 0, 0],
        nodes_nodeids=[0, 1, 2],
        nodes_featureids=[0, 0, 0],
        nodes_values=[1990.0, 0.0, 0.0],
        nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF"],
        nodes_truenodeids=[1, 0, 0],
        nodes_falsenodeids=[2, 0, 0],
        nodes_missing_value_tracks_true=[0, 0, 0],
        target_treeids=[0, 0],
        target_nodeids=[1, 2],
        target_ids=[0, 0],
        target_weights=[old, new],
    )
    graph = helper.make_graph(
        [node],
        "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("rating", TensorProto.FLOAT, output_shape)],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def make_artifact(path: Path, schema: FeatureSchema = SCHEMA) -> Path:
    path.mkdir()
    (path / "model.onnx").write_bytes(tiny_model(schema.n_features))
    (path / "report").mkdir()
    (path / "report" / "report.md").write_text("# report\n")
    manifest = {
        "format_version": 1,
        "version": "20250101.000000-abcdef12",
        "created_at": "2025-01-01T00:00:00+00:00",
        "model": {"file": "model.onnx", "format": "onnx"},
        "features": schema.to_dict(),
        "metrics": {},
        "golden": [
            {"input": {"primaryTitle": "Old", "startYear": 1950}, "expected": 7.0},
            {"input": {"primaryTitle": "New", "startYear": 2010}, "expected": 5.0},
        ],
        "prediction_distribution": {},
    }
    seal_manifest(manifest, path)
    return path


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    return make_artifact(tmp_path / "artifact")


def problems(path: Path) -> str:
    with pytest.raises(ArtifactVerificationError) as caught:
        verify_artifact(path)
    assert caught.value.problems
    return str(caught.value)


def rewrite_manifest(path: Path, change: Any, reseal: bool = True) -> None:
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    change(manifest)
    if reseal:
        manifest["manifest_sha256"] = manifest_digest(manifest)
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_verified_artifact_predicts(artifact: Path) -> None:
    loaded = verify_artifact(artifact)
    assert loaded.version == "20250101.000000-abcdef12"
    assert loaded.schema == SCHEMA
    predictor = load_predictor(artifact)
    assert predictor.predict_one({"primaryTitle": "A", "startYear": 1980}) == 7.0
    assert predictor.predict_one({"primaryTitle": "A", "startYear": 2000}) == 5.0
    records = [{"primaryTitle": "A", "startYear": 1980}, {"primaryTitle": "B", "startYear": 2001}]
    assert predictor.predict_records(records).tolist() == [7.0, 5.0]
    columns = {"primaryTitle": ["A", "B"], "startYear": np.array([1980.0, np.nan])}
    assert predictor.predict_columns(columns).tolist() == [7.0, 7.0]
    assert predictor.predict_matrix(np.zeros((0, SCHEMA.n_features))).shape == (0,)
    with pytest.raises(ValueError, match="shape"):
        predictor.predict_matrix(np.zeros((2, 3)))
    with pytest.raises(FeatureError, match="genres"):
        predictor.predict_one({"primaryTitle": "A", "genres": "Cyberpunk"})


def test_predictions_are_clipped_to_the_rating_range() -> None:
    predictor = Predictor(tiny_model(SCHEMA.n_features, old=12.5, new=-3.0), SCHEMA)
    assert predictor.predict_one({"primaryTitle": "A", "startYear": 1950}) == 10.0
    assert predictor.predict_one({"primaryTitle": "A", "startYear": 2000}) == 1.0
    assert predictor.predict_records([{"primaryTitle": "A"}]).tolist() == [10.0]


@pytest.mark.parametrize("output_shape", [(None, 1), (None,), ("rows", "targets")])
def test_single_rows_with_and_without_the_shared_buffers(output_shape: Any) -> None:
    predictor = Predictor(tiny_model(SCHEMA.n_features, output_shape=output_shape), SCHEMA)
    records = [{"primaryTitle": "A", "startYear": year} for year in (1950, 2000, None, 1990)]
    expected = predictor.predict_records(records).tolist()
    assert [predictor.predict_one(r) for r in records] == expected
    # While another thread holds the shared buffers, a call takes the ordinary path.
    with predictor._lock:
        assert [predictor.predict_one(r) for r in records] == expected
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(predictor.predict_one, records * 50)) == expected * 50
    with pytest.raises(FeatureError, match="startYear"):
        predictor.predict_one({"primaryTitle": "A", "startYear": 1})
    assert predictor.predict_one(records[0]) == expected[0]  # the buffer is refilled


def test_predictor_rejects_bad_setup() -> None:
    with pytest.raises(ValueError, match="threads"):
        Predictor(tiny_model(SCHEMA.n_features), SCHEMA, threads=0)
    with pytest.raises(ValueError, match="expects 5 features"):
        Predictor(tiny_model(5), SCHEMA)


def test_modified_file(artifact: Path) -> None:
    with (artifact / "report" / "report.md").open("a") as handle:
        handle.write("tampered\n")
    assert "report/report.md was modified" in problems(artifact)


def test_modified_model(artifact: Path) -> None:
    (artifact / "model.onnx").write_bytes(tiny_model(SCHEMA.n_features, old=9.0))
    message = problems(artifact)
    assert "model.onnx was modified" in message


def test_missing_file(artifact: Path) -> None:
    (artifact / "report" / "report.md").unlink()
    assert "missing file report/report.md" in problems(artifact)


def test_missing_model(artifact: Path) -> None:
    (artifact / "model.onnx").unlink()
    assert "missing file model.onnx" in problems(artifact)


def test_extra_file(artifact: Path) -> None:
    (artifact / "notes.txt").write_text("hello")
    assert "unexpected file notes.txt" in problems(artifact)


def test_symlinks_are_refused(artifact: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.md"
    target.write_text((artifact / "report" / "report.md").read_text())
    (artifact / "report" / "report.md").unlink()
    (artifact / "report" / "report.md").symlink_to(target)
    assert "report/report.md is not a regular file" in problems(artifact)
    (artifact / "linked_dir").symlink_to(tmp_path)
    assert "unexpected file linked_dir" in problems(artifact)


def test_edited_manifest(artifact: Path) -> None:
    rewrite_manifest(artifact, lambda m: m.update(metrics={"rmse": 0.1}), reseal=False)
    assert "manifest.json was modified" in problems(artifact)


def test_wrong_size_is_reported(artifact: Path) -> None:
    def shrink(manifest: dict[str, Any]) -> None:
        manifest["files"]["model.onnx"]["bytes"] += 1

    rewrite_manifest(artifact, shrink)
    assert "model.onnx has the wrong size" in problems(artifact)


def test_golden_mismatch(artifact: Path) -> None:
    rewrite_manifest(artifact, lambda m: m["golden"][0].update(expected=6.0))
    assert "golden example 0: model predicts 7.0, manifest says 6.0" in problems(artifact)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(golden=[]), "no golden examples"),
        (lambda m: m.update(golden=[{"input": {}}]), "golden example 0 cannot be evaluated"),
        (
            lambda m: m.update(
                golden=[{"input": {"primaryTitle": "A", "genres": "X"}, "expected": 1}]
            ),
            "unknown genre",
        ),
        (lambda m: m.update(format_version=2), "unsupported format_version 2"),
        (lambda m: m.update(model={"file": "model.onnx", "format": "pickle"}), "ONNX file"),
        (lambda m: m.update(model={"file": "other.onnx", "format": "onnx"}), "not listed"),
        (lambda m: m["features"].update(transform_version=99), "transform version 99"),
        (lambda m: m["features"].update(feature_names=["a"]), "feature_names do not match"),
        (lambda m: m["features"].pop("genres"), "malformed feature schema"),
        (lambda m: m.update(files={}), "lists no files"),
        (lambda m: m["files"].update({"../escape": {"sha256": "0", "bytes": 0}}), "invalid path"),
        (lambda m: m.pop("golden"), "lacks ['golden']"),
    ],
)
def test_inconsistent_manifest(artifact: Path, change: Any, message: str) -> None:
    rewrite_manifest(artifact, change)
    assert message in problems(artifact)


def test_unloadable_model(artifact: Path) -> None:
    (artifact / "model.onnx").write_bytes(b"not a model")
    rewrite_manifest(artifact, lambda m: m.update(files=file_index(artifact)))
    assert "the model cannot be loaded" in problems(artifact)


def test_manifest_problems(artifact: Path, tmp_path: Path) -> None:
    assert "not a directory" in problems(tmp_path / "nothing")
    (artifact / MANIFEST_NAME).write_text("{not json")
    assert "not valid JSON" in problems(artifact)
    (artifact / MANIFEST_NAME).write_text('{"a": NaN}')
    assert "not valid JSON" in problems(artifact)
    (artifact / MANIFEST_NAME).write_text("[1, 2]")
    assert "not a JSON object" in problems(artifact)
    (artifact / MANIFEST_NAME).unlink()
    assert "manifest.json is missing" in problems(artifact)


def test_copy_of_artifact_still_verifies(artifact: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    assert verify_artifact(copy).version == verify_artifact(artifact).version


def test_file_index_refuses_symlinks(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("x")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(ValueError, match="b is not a regular file"):
        file_index(tmp_path)


def test_schema_round_trip_and_validation() -> None:
    schema = FeatureSchema(title_types=("movie", "tvMovie"))
    assert FeatureSchema.from_dict(schema.to_dict()) == schema
    assert schema.to_dict()["valid_ranges"]["startYear"] == [1870, 2050]
    assert schema.type_index == {"movie": schema.n_features - 2, "tvMovie": schema.n_features - 1}
    assert SCHEMA.type_index == {"movie": None}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"title_types": ()}, "title_types is empty"),
        ({"title_types": ("film",)}, "unknown title types"),
        ({"title_types": ("movie", "movie")}, "duplicates"),
        ({"genres": ("A", "A")}, "without duplicates"),
        ({"genres": ("A,B",)}, "comma"),
        ({"start_year_range": (2000, 1900)}, "start_year_range is empty"),
        ({"transform_version": 0}, "transform version 0"),
    ]
    for kwargs, message in cases:
        with pytest.raises(SchemaError, match=message):
            FeatureSchema(**kwargs)
    with pytest.raises(SchemaError, match="malformed"):
        FeatureSchema.from_dict({"valid_ranges": {}})
