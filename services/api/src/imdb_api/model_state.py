"""The served model's lifecycle: not configured -> loading -> ready, or failed with the reasons.

The artifact is verified in a background thread so that the server answers `/health` (and a
`/ready` that says "loading") at once. Nothing is ever served from an artifact that failed
verification: without a verified predictor every prediction request gets 503.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any, Final

from imdb_model import (
    Artifact,
    ArtifactVerificationError,
    FeatureSchema,
    Predictor,
    verify_artifact,
)
from imdb_model.artifact import GOLDEN_TOLERANCE

logger = logging.getLogger("imdb_api.model")

# Manifest entries that /model/info publishes. The rest stays private: local paths of the
# training data, the git revision, library versions, file hashes and the golden examples.
PUBLIC_KEYS: Final[tuple[str, ...]] = (
    "version",
    "model_name",
    "created_at",
    "format_version",
    "manifest_sha256",
    "model",
    "features",
    "metrics",
    "prediction_distribution",
    "gate",
)


def check_golden(predictor: Predictor, golden: list[dict[str, Any]]) -> list[str]:
    """Problems with the predictor's answers to the manifest's golden examples (none: [])."""
    problems = []
    for i, example in enumerate(golden):
        got = predictor.predict_one(example["input"])
        if not math.isclose(got, float(example["expected"]), rel_tol=0.0, abs_tol=GOLDEN_TOLERANCE):
            problems.append(
                f"golden example {i}: predicted {got!r}, expected {example['expected']!r}"
            )
    return problems


def read_release(path: Path | None, artifact: Artifact) -> dict[str, Any] | None:
    """The release record an image was built as (None without one). It must name this artifact:
    a record of another model (a mislabelled image) is a verification failure."""
    if path is None:
        return None
    try:
        record = json.loads(path.read_text())
        release, model = str(record["release"]), record["model"]
        manifest_sha256 = str(model["manifest_sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactVerificationError(
            artifact.path, [f"release record {path} is unreadable: {exc!r}"]
        ) from None
    if manifest_sha256 != artifact.manifest["manifest_sha256"]:
        raise ArtifactVerificationError(
            artifact.path,
            [f"release {release} names model manifest {manifest_sha256[:12]}, "
             f"the artifact is {str(artifact.manifest['manifest_sha256'])[:12]}"],
        )  # fmt: skip
    return dict(record)


class Status(str, enum.Enum):
    """Where the model is in its lifecycle."""

    NOT_CONFIGURED = "not_configured"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class ModelState:
    """Holds the predictor once the artifact has been verified, or why there is none."""

    def __init__(
        self, artifact: Path | None, threads: int = 1, release_file: Path | None = None
    ) -> None:
        self.artifact = artifact
        self.threads = threads
        self.release_file = release_file
        self.status = Status.NOT_CONFIGURED if artifact is None else Status.LOADING
        self.reasons: list[str] = (
            ["no artifact configured (set IMDB_API_ARTIFACT or --artifact)"]
            if artifact is None
            else ["the artifact is being verified"]
        )
        self.predictor: Predictor | None = None
        self.schema: FeatureSchema = FeatureSchema()
        self.version: str = ""
        self.public_manifest: dict[str, Any] = {}
        self._done = threading.Event()
        if artifact is None:
            self._done.set()
            logger.error("not ready: %s", self.reasons[0])

    @property
    def ready(self) -> bool:
        """True once a verified predictor is in place."""
        return self.status is Status.READY

    def load(self) -> None:
        """Verify the artifact and build the predictor (blocking); record why when it fails."""
        if self.artifact is None:
            return
        start = time.perf_counter()
        try:
            artifact = verify_artifact(self.artifact)
            predictor = artifact.predictor(threads=self.threads)
            # verify_artifact checked the golden examples on its own one-thread predictor; the
            # serving predictor (maybe more threads) must reproduce them too.
            problems = check_golden(predictor, artifact.manifest["golden"])
            if problems:
                raise ArtifactVerificationError(artifact.path, problems)
            release = read_release(self.release_file, artifact)
        except ArtifactVerificationError as exc:
            self._fail(exc.problems)
        except Exception as exc:  # any other failure must also leave the service unready
            logger.exception("artifact could not be loaded")
            self._fail([f"the artifact could not be loaded: {exc!r}"])
        else:
            self._succeed(artifact, predictor, time.perf_counter() - start, release)
        finally:
            self._done.set()

    def load_in_background(self) -> threading.Thread:
        """Start `load` in a daemon thread and return it."""
        thread = threading.Thread(target=self.load, name="artifact-loader", daemon=True)
        thread.start()
        return thread

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until loading has finished (either way); False on timeout."""
        return self._done.wait(timeout)

    def _succeed(
        self,
        artifact: Artifact,
        predictor: Predictor,
        seconds: float,
        release: dict[str, Any] | None = None,
    ) -> None:
        self.schema = artifact.schema
        self.version = artifact.version
        self.public_manifest = {
            k: artifact.manifest[k] for k in PUBLIC_KEYS if k in artifact.manifest
        }
        self.public_manifest["release"] = release
        self.predictor = predictor
        self.reasons = []
        # Published last: request handlers read `status` without a lock.
        self.status = Status.READY
        logger.info(
            "model ready",
            extra={
                "version": self.version,
                "artifact": str(artifact.path),
                "load_s": round(seconds, 3),
            },
        )

    def _fail(self, problems: list[str]) -> None:
        self.reasons = problems or ["unknown failure"]
        self.status = Status.FAILED
        logger.error(
            "not ready: artifact verification failed",
            extra={"artifact": str(self.artifact), "problems": self.reasons},
        )
