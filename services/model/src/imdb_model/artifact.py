"""The artifact contract: manifest layout, sealing (hashes) and verification.

An artifact is a directory::

    manifest.json        everything below plus `files` (sha256 and size of every other file)
                         and `manifest_sha256` (sha256 of the manifest's canonical JSON without
                         that key, so an edited manifest is detected)
    model.onnx           the served model
    ...                  any other files (native booster text, report) are listed and hashed too

Verification refuses an artifact with any missing, extra, modified or symlinked file, an edited
manifest, an unknown format or transform version, or a model that does not reproduce the golden
predictions stored in the manifest. The hashes detect corruption and accidental or careless edits;
they are not a signature: whoever can rewrite the whole directory can also recompute them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final

from imdb_model.features import FeatureError
from imdb_model.predictor import Predictor
from imdb_model.schema import FeatureSchema, SchemaError

MANIFEST_NAME: Final[str] = "manifest.json"
FORMAT_VERSION: Final[int] = 1
# Golden predictions must match to this absolute tolerance (onnxruntime sums float32 leaf values
# in a fixed order with one thread, so in practice they match exactly).
GOLDEN_TOLERANCE: Final[float] = 1e-4
REQUIRED_KEYS: Final[tuple[str, ...]] = (
    "format_version",
    "version",
    "created_at",
    "model",
    "features",
    "metrics",
    "golden",
    "prediction_distribution",
    "files",
    "manifest_sha256",
)


class ArtifactVerificationError(Exception):
    """The artifact is incomplete, tampered with or unusable; `problems` lists every finding."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"artifact {path} failed verification: " + "; ".join(problems))


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} in JSON")


def canonical_json(data: Any) -> str:
    """The one JSON encoding that digests are computed over (sorted keys, no NaN)."""
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON, without its own `manifest_sha256` entry."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return sha256_bytes(canonical_json(body).encode("utf-8"))


def _walk_files(directory: Path) -> dict[str, Path]:
    """Every file or symlink under `directory` by POSIX relative path (symlinks not followed)."""
    found: dict[str, Path] = {}
    for root, dirs, files in os.walk(directory, followlinks=False):
        base = Path(root)
        for name in files + [d for d in dirs if (base / d).is_symlink()]:
            path = base / name
            found[path.relative_to(directory).as_posix()] = path
    return found


def file_index(directory: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file in `directory` except the manifest."""
    index: dict[str, dict[str, Any]] = {}
    for name, path in sorted(_walk_files(directory).items()):
        if name == MANIFEST_NAME:
            continue
        if path.is_symlink() or not path.is_file():
            raise ValueError(f"{name} is not a regular file")
        index[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return index


def seal_manifest(manifest: Mapping[str, Any], directory: Path) -> dict[str, Any]:
    """Add `files` (hashes of everything in `directory`) and `manifest_sha256`; write it."""
    sealed = {k: v for k, v in manifest.items() if k not in ("files", "manifest_sha256")}
    sealed["files"] = file_index(directory)
    sealed["manifest_sha256"] = manifest_digest(sealed)
    text = json.dumps(sealed, indent=2, sort_keys=True, allow_nan=False) + "\n"
    (directory / MANIFEST_NAME).write_text(text, encoding="utf-8")
    return sealed


@dataclass(frozen=True)
class Artifact:
    """A verified artifact: its manifest, schema and the model bytes that were hashed."""

    path: Path
    manifest: dict[str, Any]
    schema: FeatureSchema
    model_bytes: bytes

    @property
    def version(self) -> str:
        """The artifact's version string (see the trainer's `artifact.make_version`)."""
        return str(self.manifest["version"])

    def predictor(self, threads: int = 1) -> Predictor:
        """A predictor for this artifact's model."""
        return Predictor(self.model_bytes, self.schema, threads=threads, version=self.version)


def _read_manifest(path: Path, problems: list[str]) -> dict[str, Any] | None:
    manifest_path = path / MANIFEST_NAME
    if manifest_path.is_symlink() or not manifest_path.is_file():
        problems.append(f"{MANIFEST_NAME} is missing")
        return None
    try:
        data = json.loads(
            manifest_path.read_text(encoding="utf-8"), parse_constant=_reject_constant
        )
    except (UnicodeDecodeError, ValueError) as exc:
        problems.append(f"{MANIFEST_NAME} is not valid JSON: {exc}")
        return None
    if not isinstance(data, dict):
        problems.append(f"{MANIFEST_NAME} is not a JSON object")
        return None
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        problems.append(f"{MANIFEST_NAME} lacks {missing}")
        return None
    if data["manifest_sha256"] != manifest_digest(data):
        problems.append(f"{MANIFEST_NAME} was modified (manifest_sha256 does not match)")
    if data["format_version"] != FORMAT_VERSION:
        problems.append(f"unsupported format_version {data['format_version']!r}")
    return data


def _check_files(path: Path, listed: Any, problems: list[str], keep: str | None) -> bytes | None:
    """Compare the directory with the manifest's file list; return the bytes of `keep`."""
    if not isinstance(listed, dict) or not listed:
        problems.append("the manifest lists no files")
        return None
    present = _walk_files(path)
    kept: bytes | None = None
    for name, entry in sorted(listed.items()):
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts or name == MANIFEST_NAME:
            problems.append(f"the manifest lists an invalid path {name!r}")
            continue
        file_path = present.pop(name, None)
        if file_path is None:
            problems.append(f"missing file {name}")
            continue
        if file_path.is_symlink() or not file_path.is_file():
            problems.append(f"{name} is not a regular file")
            continue
        data = file_path.read_bytes()
        if not isinstance(entry, dict) or entry.get("sha256") != sha256_bytes(data):
            problems.append(f"{name} was modified (sha256 mismatch)")
        elif entry.get("bytes") != len(data):
            problems.append(f"{name} has the wrong size")
        if name == keep:
            kept = data
    present.pop(MANIFEST_NAME, None)
    problems.extend(f"unexpected file {name}" for name in sorted(present))
    return kept


def _check_golden(predictor: Predictor, golden: Any, problems: list[str]) -> None:
    if not isinstance(golden, list) or not golden:
        problems.append("the manifest has no golden examples")
        return
    for i, example in enumerate(golden):
        try:
            expected = float(example["expected"])
            got = predictor.predict_one(example["input"])
        except (KeyError, TypeError, ValueError, FeatureError) as exc:
            problems.append(f"golden example {i} cannot be evaluated: {exc}")
            continue
        if not math.isclose(got, expected, rel_tol=0.0, abs_tol=GOLDEN_TOLERANCE):
            problems.append(
                f"golden example {i}: model predicts {got!r}, manifest says {expected!r}"
            )


def verify_artifact(path: str | os.PathLike[str]) -> Artifact:
    """Load and fully verify an artifact, or raise ArtifactVerificationError listing why not."""
    root = Path(path)
    problems: list[str] = []
    if not root.is_dir():
        raise ArtifactVerificationError(root, ["not a directory"])
    manifest = _read_manifest(root, problems)
    if manifest is None:
        raise ArtifactVerificationError(root, problems)
    model = manifest["model"]
    model_file = model.get("file") if isinstance(model, dict) else None
    if not isinstance(model_file, str) or model.get("format") != "onnx":
        problems.append("the manifest's model entry must name an ONNX file")
        model_file = None
    model_bytes = _check_files(root, manifest["files"], problems, model_file)
    if model_file is not None and model_bytes is None and model_file not in manifest["files"]:
        problems.append(f"the model file {model_file} is not listed in the manifest")
    schema: FeatureSchema | None = None
    try:
        schema = FeatureSchema.from_dict(manifest["features"])
    except SchemaError as exc:
        problems.append(str(exc))
    if problems or model_bytes is None or schema is None:
        raise ArtifactVerificationError(root, problems or ["the model could not be read"])
    try:
        predictor = Predictor(model_bytes, schema, threads=1, version=str(manifest["version"]))
    except Exception as exc:  # onnxruntime raises its own unrelated exception types
        raise ArtifactVerificationError(root, [f"the model cannot be loaded: {exc}"]) from exc
    _check_golden(predictor, manifest["golden"], problems)
    if problems:
        raise ArtifactVerificationError(root, problems)
    return Artifact(path=root, manifest=manifest, schema=schema, model_bytes=model_bytes)


def load_predictor(path: str | os.PathLike[str], threads: int = 1) -> Predictor:
    """Verify the artifact at `path` and return its predictor (the API's entry point)."""
    return verify_artifact(path).predictor(threads=threads)
