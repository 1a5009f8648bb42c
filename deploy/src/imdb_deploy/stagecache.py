"""Reuse of pipeline stages that already passed on exactly the same inputs.

A warm `make pipeline` should not lint, type-check and test a tree it has already checked. Each
stage that can be reused has a *key*: the sha256 of its inputs (the content of every file git
would commit, plus what else the stage reads, such as the interpreter or the advisory database).
When a stage passes, a stamp records the key and the digests of the files it produced. The next
run with the same key, and with those files still in place and unchanged, reuses the stage
instead of running it. Any change to an input, including an uncommitted edit or a new untracked
file, changes the key, so the stage runs again and can fail again.

Only stdlib: the noxfile imports this before any session virtualenv exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

# `make pipeline` sets it to 1; any other value runs every stage. Unset, only the stages reused by
# default are (the trained model, so that a rebuilt release keeps its model version).
ENABLE_VAR = "MLOPS_STAGE_CACHE"
CHUNK = 1 << 20
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


class StageCacheError(Exception):
    """The inputs cannot be fingerprinted (for example: not a git checkout)."""


def enabled(environ: Mapping[str, str] | None = None, *, default: bool = False) -> bool:
    """Whether stages may be reused: MLOPS_STAGE_CACHE=1, or `default` where it is unset."""
    value = (os.environ if environ is None else environ).get(ENABLE_VAR)
    return default if value is None else value == "1"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tree_digest(paths: Iterable[Path], root: Path) -> str:
    """sha256 over the relative path and content of each file (a missing file counts as such)."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        relative = path.relative_to(root).as_posix()
        content = file_digest(path) if path.is_file() else "missing"
        digest.update(f"{relative}\0{content}\n".encode())
    return digest.hexdigest()


def source_files(root: Path) -> list[Path]:
    """Every file git would commit: tracked ones (even if deleted since) and new, unignored ones."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],  # noqa: S607
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        raise StageCacheError(
            f"{root} is not a git checkout: its sources cannot be fingerprinted"
        ) from error
    return [root / name for name in sorted(set(filter(None, listed.decode().split("\0"))))]


def source_digest(root: Path, only: Sequence[str] = ()) -> str:
    """Digest of the sources; `only` (paths relative to `root`) narrows them to what a stage
    reads, so a change elsewhere does not run it again."""
    files = source_files(root)
    if only:
        files = [p for p in files if any(p.relative_to(root).is_relative_to(o) for o in only)]
    return tree_digest(files, root)


def directory_digest(directory: Path) -> str:
    """Digest of every file under `directory` ("missing" when it does not exist)."""
    if not directory.is_dir():
        return "missing"
    return tree_digest((path for path in directory.rglob("*") if path.is_file()), directory)


def _expand(outputs: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for output in outputs:
        if output.is_dir():
            files.extend(sorted(path for path in output.rglob("*") if path.is_file()))
        else:
            files.append(output)
    return files


@dataclass(frozen=True)
class Stage:
    """A stage's stamp: `inputs` name what it read, `outputs` the files or directories it wrote."""

    stamp: Path
    inputs: Mapping[str, str]
    outputs: Sequence[Path] = ()

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(dict(self.inputs), sort_keys=True).encode()).hexdigest()

    def passed_before(self) -> str | None:
        """When this stage passed on these very inputs and its outputs are still as it left them:
        the time it passed (ISO 8601). Otherwise None: it has to run."""
        try:
            record = json.loads(self.stamp.read_text())
            if record["key"] != self.key:
                return None
            produced: dict[str, str] = record["outputs"]
            passed_at = str(record["passed_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # no stamp, or one this version cannot read: run the stage
        expected = {str(path) for path in _expand(self.outputs)}
        if set(produced) != expected:
            return None
        for name, digest in produced.items():
            path = Path(name)
            if not path.is_file() or file_digest(path) != digest:
                return None
        return passed_at

    def record_pass(self) -> None:
        """Write the stamp (atomically) after the stage passed."""
        missing = [str(path) for path in self.outputs if not path.exists()]
        if missing:
            raise StageCacheError(f"the stage passed but did not write {', '.join(missing)}")
        record = {
            "key": self.key,
            "inputs": dict(self.inputs),
            "outputs": {str(path): file_digest(path) for path in _expand(self.outputs)},
            "passed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self.stamp.parent.mkdir(parents=True, exist_ok=True)
        partial = self.stamp.with_name(self.stamp.name + ".partial")
        partial.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        partial.replace(self.stamp)


def registry_has(reference: str, timeout: float = 5.0) -> bool:
    """Whether the registry (plain HTTP on loopback) still serves `host:port/repository:tag`."""
    location, _, tag = reference.rpartition(":")
    host, _, repository = location.partition("/")
    if not (host and repository and tag):
        return False
    request = urllib.request.Request(
        f"http://{host}/v2/{repository}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": ", ".join(MANIFEST_TYPES)},
    )
    try:
        # The URL is built above with a fixed http:// scheme.
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 # nosec B310
            return bool(answer.status == 200)
    except (OSError, ValueError):
        return False
