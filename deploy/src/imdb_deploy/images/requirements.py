"""Requirements and wheels: the lock's hashed pins, their wheels (cached), our project wheels."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename

from imdb_deploy.images.platforms import Platform

PYTHON_VERSION = "3.11"
# Marks a cache entry whose download finished; a half-filled directory is never used.
COMPLETE_MARKER = ".complete"


class RequirementsError(RuntimeError):
    """Exporting requirements, downloading or building wheels failed."""


def _run(argv: Sequence[str], cwd: Path | None = None) -> str:
    """Run a tool with a fixed argv (no shell); its stderr goes into the error on failure."""
    result = subprocess.run(  # noqa: S603 - fixed argv, no shell
        list(argv), cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RequirementsError(
            f"`{' '.join(argv)}` failed ({result.returncode}):\n{result.stderr[-3000:]}"
        )
    return result.stdout


def uv_executable() -> str:
    """uv on PATH, else the one installed next to this interpreter."""
    found = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    if found is None:
        raise RequirementsError("`uv` is not on PATH")
    return found


def export_argv(distribution: str, output: Path) -> list[str]:
    """`uv export` of a distribution's third-party pins with hashes, without our own packages."""
    return [
        uv_executable(), "export", "--locked", "--quiet", f"--package={distribution}",
        "--no-dev", "--no-emit-workspace", "--format=requirements-txt", "--no-header",
        f"--output-file={output}",
    ]  # fmt: skip


def export_requirements(root: Path, distribution: str, output: Path) -> Path:
    """Write the hashed requirements of `distribution` from uv.lock to `output`."""
    output.parent.mkdir(parents=True, exist_ok=True)
    _run(export_argv(distribution, output), cwd=root)
    return output


def wheel_cache_key(requirements: str, platform: Platform) -> str:
    """Cache key: what pip is asked for (pins, hashes, markers) and for which target."""
    text = "\n".join([requirements, platform.docker, PYTHON_VERSION, *platform.pip_platforms()])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def download_argv(requirements: Path, target: Path, platform: Platform) -> list[str]:
    """pip download of binary wheels for the target, every file checked against its hash."""
    argv = [
        sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
        "--only-binary=:all:", "--no-deps", "--require-hashes",
        f"--python-version={PYTHON_VERSION}", "--implementation=cp",
        f"--abi=cp{PYTHON_VERSION.replace('.', '')}", "--abi=abi3", "--abi=none",
        f"--dest={target}", f"--requirement={requirements}",
    ]  # fmt: skip
    for tag in platform.pip_platforms():
        argv.append(f"--platform={tag}")
    # Pure-Python wheels are tagged `any`; pip needs the tag listed once --platform is given.
    argv.append("--platform=any")
    return argv


def cached_wheels(requirements: Path, platform: Platform, cache_dir: Path) -> Path:
    """The directory of wheels for `requirements` on `platform`, downloaded once per key.

    A warm build downloads nothing: the key changes only when the lock's pins do.
    """
    key = wheel_cache_key(requirements.read_text(), platform)
    directory = cache_dir / "wheels" / platform.suffix / key
    if (directory / COMPLETE_MARKER).is_file():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=f".{key}-") as work:
        partial = Path(work) / "wheels"
        partial.mkdir()
        _run(download_argv(requirements, partial, platform))
        (partial / COMPLETE_MARKER).write_text(requirements.read_text())
        if directory.exists():  # a concurrent build finished first: keep its copy
            shutil.rmtree(directory)
        partial.replace(directory)
    return directory


def build_project_wheels(root: Path, distributions: Sequence[str], out_dir: Path) -> list[Path]:
    """`uv build --wheel` of each workspace member into `out_dir`; returns the wheel files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    wheels = []
    for distribution in distributions:
        before = set(out_dir.glob("*.whl"))
        _run(
            [uv_executable(), "build", "--quiet", f"--package={distribution}", "--wheel",
             f"--out-dir={out_dir}"],
            cwd=root,
        )  # fmt: skip
        built = [
            path
            for path in set(out_dir.glob("*.whl")) - before
            if parse_wheel_filename(path.name)[0] == canonicalize_name(distribution)
        ]
        if len(built) != 1:
            raise RequirementsError(f"uv build of {distribution} gave {built or 'no wheel'}")
        wheels.append(built[0])
    return wheels


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hashed_requirements(wheels: Sequence[Path]) -> str:
    """A requirements file pinning each wheel by name, version and sha256 (for --require-hashes)."""
    lines = []
    for wheel in sorted(wheels, key=lambda path: path.name):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        lines.append(f"{name}=={version} --hash=sha256:{sha256_file(wheel)}\n")
    return "".join(lines)


def pinned_names(requirements: str) -> set[str]:
    """Canonical names pinned in a requirements text (continuation lines and hashes ignored)."""
    names: set[str] = set()
    for line in requirements.splitlines():
        text = line.strip()
        if not text or text.startswith(("#", "-")):
            continue
        names.add(canonicalize_name(text.split("==", 1)[0].split(";", 1)[0].strip()))
    return names
