"""The delivery pipeline, one nox session per step.

`nox -l` is the pipeline's table of contents. Sessions are thin: they install their tools from
uv.lock into their own virtualenv and call either a tool or project code (`imdb_deploy.*`), which
carries the logic and its tests. Tags group the sessions:

    quality   lint, typecheck, security
    tests     tests-3.10 ... tests-3.13, integration, coverage, gates
    build     sbom, images
    deploy    deliver, sandbox, deploy, promote, rollback, report, prune
    ci        everything GitHub CI runs (`make ci`)
    pipeline  the main job on its built-in defaults (`make pipeline`): quality, tests, train,
              build, deliver (sandbox staging, then promoted to sandbox production by digest,
              each benchmark-gated, report)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import nox

nox.needs_version = ">=2025.11.12"
nox.options.default_venv_backend = "uv"
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).resolve().parent
# Sessions write bytecode (into their virtualenvs and the gitignored __pycache__ folders) even
# where the machine sets PYTHONDONTWRITEBYTECODE, as ours do: without it every process a test
# starts compiles all it imports anew, and pytest's collection alone takes twice as long.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.path.insert(0, str(ROOT / "deploy" / "src"))  # the stage cache: stdlib only, tested there
from imdb_deploy import stagecache  # noqa: E402

REPORTS = ROOT / "reports"
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
PYTHON_VERSIONS = nox.project.python_versions(PYPROJECT)
DEFAULT_PYTHON = "3.11"

# Shipped services by short name and distribution; the model contract (imdb-model) ships in both.
SERVICES = {"api": "imdb-api", "trainer": "imdb-trainer"}
# What the audit covers: the services, plus the delivery tooling that runs with deploy credentials.
AUDITED = {**SERVICES, "deploy": "imdb-deploy"}
COVERAGE_DIR = REPORTS / "coverage"
# The main job's built-in default: generated data in the public IMDb format, and the model it makes.
GENERATED_DATA = ROOT / "data" / "generated"
GENERATED_ROWS = 200_000
MODEL_DIR = ROOT / "artifacts" / "model"
# In CD: the public IMDb files; the champion taken from the live release, for the gate.
IMDB_DATA = ROOT / "data" / "imdb"
CHAMPION_DIR = ROOT / "artifacts" / "champion"
CHAMPION_ENV_VAR = "MLOPS_CHAMPION_ENV"
# What a trained model depends on: a change anywhere else (the API, the deploy) reuses the model,
# and so makes a code-only release.
MODEL_SOURCES = ("services/trainer", "services/model", "pyproject.toml", "uv.lock", "noxfile.py")
# The sandbox's Pushgateway (`nox -s sandbox -- up` starts it), where deploys record markers.
SANDBOX_PUSHGATEWAY = "http://127.0.0.1:9091"
# The offline vulnerability database, chosen explicitly; unset means pip-audit's online service.
OSV_OFFLINE_DIR_VAR = "OSV_OFFLINE_DIR"
# Stamps of the stages that passed, for a warm `make pipeline` (MLOPS_STAGE_CACHE=1).
STAGE_STAMPS = ROOT / ".nox" / ".stages"
# With MLFLOW_TRACKING_URI, `train` logs its run there and `images` tags it with the release.
TRACKING = ["tracking"] if os.environ.get("MLFLOW_TRACKING_URI") else []
# The per-image scan reports `images` writes: (report kind, extension).
SCANS = (("sbom", "cdx.json"), ("pip-audit", "json"))


def sync_locked(
    session: nox.Session,
    *groups: str,
    workspace: bool = True,
    env_dir: Path | None = None,
    package: str | None = None,
) -> None:
    """Install exactly what uv.lock pins into the session's virtualenv (or `env_dir`).

    `workspace=False` installs only the dependency groups (tools), not the project packages.
    """
    target = str(env_dir or session.virtualenv.location)
    python = f"--python={session.virtualenv.location}"
    args = ["uv", "sync", "--locked", "--no-default-groups", python]
    group_flag = "--group" if workspace else "--only-group"
    args += [f"{group_flag}={group}" for group in groups]
    if package is not None:
        args += [f"--package={package}", "--no-install-project"]
    env = {"UV_PROJECT_ENVIRONMENT": target, "VIRTUAL_ENV": target}
    session.run_install(*args, env=env, external=True)


@contextlib.contextmanager
def reusable(
    session: nox.Session,
    *outputs: Path,
    reuse: bool = True,
    sources: Sequence[str] = (),
    stage: str | None = None,
    args: Sequence[str] | None = None,
    by_default: bool = False,
    **inputs: str,
) -> Iterator[bool]:
    """Yield True when this stage already passed on exactly these inputs, so the session can
    return at once; else yield False, run it, and stamp it as passed if it did.

    Only with MLOPS_STAGE_CACHE=1 (`make pipeline` sets it), or unless it is 0 for a stage
    reused `by_default` (the model). The inputs are the content of every file git would commit
    (or only those under `sources`), the stage's name (default: the session's), its arguments
    (default: the posargs) and interpreter, plus `inputs`; the `outputs` (files or directories)
    must still be as the passing run left them. `reuse=False` runs the stage whatever its stamp
    says (what it made elsewhere is gone, or it asks a service whose answers change).
    """
    if not stagecache.enabled(default=by_default):
        yield False
        return
    stage_name = stage or session.name
    python = subprocess.run(
        [str(Path(session.bin) / "python"), "-c", "import sys; print(sys.version)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        digest = stagecache.source_digest(ROOT, sources)
    except stagecache.StageCacheError as error:  # a source archive, say: just run the stage
        session.log(f"stage cache off: {error}")
        yield False
        return
    stamp = stagecache.Stage(
        stamp=STAGE_STAMPS / f"{stage_name}.json",
        inputs={
            "session": stage_name,
            "posargs": json.dumps(list(session.posargs if args is None else args)),
            "python": python,
            "sources": digest,
            **inputs,
        },
        outputs=outputs,
    )
    passed_at = stamp.passed_before() if reuse else None
    if passed_at is not None:
        session.log(
            f"reused: {stage_name} passed at {passed_at} on exactly these inputs "
            f"(key {stamp.key[:12]}); {stagecache.ENABLE_VAR}=0 runs it anyway"
        )
        yield True
        return
    yield False
    stamp.record_pass()


def measured_pytest(
    session: nox.Session, *args: str, engine: bool = False, groups: Sequence[str] = ()
) -> None:
    """pytest under coverage, its data in the session's own reports/coverage/<session>/ (emptied
    first; `coverage` combines them all); reused by a warm pipeline when nothing changed.

    `engine=True` first starts (or finds) the checkout's local engine and registry, which the
    integration and images sessions of a run share; `groups` are installed beside `test`.
    """
    data_dir = COVERAGE_DIR / session.name
    with reusable(session, data_dir) as reused:
        if reused:
            return
        sync_locked(session, "test", *groups)
        if engine:
            session.run("python", "-m", "imdb_deploy.engine", "up")
        shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir(parents=True)
        session.run(
            "pytest", "--cov", "--cov-report=", "--cov-fail-under=0", *own_basetemp(session),
            *args, env={"COVERAGE_FILE": str(data_dir / f".coverage.{session.name}")},
        )  # fmt: skip


def own_basetemp(session: nox.Session) -> list[str]:
    """pytest's temporary directory inside the session's own: pytest cleans up old numbered
    directories of every earlier run, and one holding a busy mount (container storage) must not
    fail an unrelated session."""
    # Outside the repository (tests need directories that are no git checkout), and not
    # session.create_tmp(), which also moves TMPDIR: Podman refuses a runroot over 50 characters.
    checkout = hashlib.sha256(str(ROOT).encode()).hexdigest()[:8]
    parent = Path(tempfile.gettempdir()) / f"mlops-imdb-{checkout}"
    parent.mkdir(exist_ok=True)  # pytest creates only the last level
    basetemp = parent / session.name.replace(".", "")
    if basetemp.exists():
        # pytest empties it first: container storage an earlier run left mounted there (conmon
        # mounts a stopped engine's store again) would make that fail.
        session.run("python", "-m", "imdb_deploy.engine", "unmount", str(basetemp), silent=True)
    return [f"--basetemp={basetemp}"]


@nox.session(python=DEFAULT_PYTHON, tags=["ci", "quality", "pipeline"])
def lint(session: nox.Session) -> None:
    """Lint: ruff and black on all Python, hadolint on Dockerfiles, zizmor and a schema on CI."""
    with reusable(session) as reused:
        if reused:
            return
        sync_locked(session, "lint", workspace=False)
        session.run("ruff", "check", ".")
        session.run("black", "--check", "--diff", "--quiet", ".")
        dockerfiles = sorted(
            str(path.relative_to(ROOT))
            for top in ("services", "deploy")
            for path in (ROOT / top).rglob("Dockerfile*")
        )
        if dockerfiles:
            session.run("hadolint", *dockerfiles)
        else:
            session.log("hadolint: no Dockerfiles in the repository yet")
        workflows = sorted(
            str(path.relative_to(ROOT)) for path in (ROOT / ".github").rglob("*.yml")
        )
        session.run("check-jsonschema", "--builtin-schema", "vendor.github-workflows", *workflows)
        session.run("zizmor", "--persona=regular", ".github")


@nox.session(python=DEFAULT_PYTHON, default=False)
def fmt(session: nox.Session) -> None:
    """Format in place: ruff's safe fixes (imports, upgrades), then black."""
    sync_locked(session, "lint", workspace=False)
    session.run("ruff", "check", "--fix-only", ".")
    session.run("black", ".")


@nox.session(python=DEFAULT_PYTHON, tags=["ci", "quality", "pipeline"])
def typecheck(session: nox.Session) -> None:
    """Type-check services, deploy, tests and this noxfile with mypy --strict."""
    with reusable(session) as reused:
        if reused:
            return
        sync_locked(session, "typecheck")
        session.run("mypy", *session.posargs)


@nox.session(python=DEFAULT_PYTHON, tags=["ci", "quality", "pipeline"])
def security(session: nox.Session) -> None:
    """Security: bandit over the code, pip-audit over each service's locked requirements.

    Offline mode (machines without pip-audit's online service): set OSV_OFFLINE_DIR to a
    directory of OSV records, which a local OSV-compatible endpoint then serves.
    """
    osv_dir = os.environ.get(OSV_OFFLINE_DIR_VAR)
    bandit_report = REPORTS / "bandit-report.json"
    audits = {name: REPORTS / f"pip-audit-{name}.json" for name in AUDITED}
    # The online service's advisories change under the same inputs: only offline runs are reused.
    advisories = stagecache.directory_digest(Path(osv_dir)) if osv_dir else "online"
    with reusable(
        session, bandit_report, *audits.values(), reuse=bool(osv_dir), advisories=advisories
    ) as reused:
        if reused:
            return
        sync_locked(session, "security")
        REPORTS.mkdir(exist_ok=True)
        bandit = ["bandit", "-c", "pyproject.toml", "-r", "services", "deploy"]
        # The JSON report keeps every finding; the gate (and the screen) counts medium and up.
        session.run(*bandit, "--format", "json", "--output", str(bandit_report), "--exit-zero")
        session.run(*bandit, "--severity-level", "medium", "--quiet")
        session.log(f"pip-audit database: {osv_dir or 'online (OSV_OFFLINE_DIR not set)'}")
        for name, distribution in AUDITED.items():
            requirements = REPORTS / f"requirements-{name}.txt"
            session.run(
                "uv", "export", "--locked", "--quiet", f"--package={distribution}", "--no-dev",
                "--no-emit-workspace", "--format=requirements-txt",
                f"--output-file={requirements}", external=True,
            )  # fmt: skip
            session.run(
                "python", "-m", "imdb_deploy.supply_chain.audit",
                f"--requirements={requirements}", f"--report={audits[name]}",
            )  # fmt: skip


@nox.session(python=PYTHON_VERSIONS, tags=["ci", "tests", "pipeline"])
def tests(session: nox.Session) -> None:
    """The unit layer (tests/layers.py) under coverage on one Python, one worker per CPU
    (posargs go to pytest: `-- -k features -x`, `-- -n 0` for one process)."""
    measured_pytest(session, "--layer=unit", "--numprocesses=auto", *session.posargs)


@nox.session(
    python=DEFAULT_PYTHON,
    tags=["ci", "tests", "pipeline"],
    requires=[*(f"tests-{version}" for version in PYTHON_VERSIONS), "integration"],
)
def coverage(session: nox.Session) -> None:
    """Combine the coverage of all Pythons; fail under 90% lines or 90% branches."""
    data_dirs = sorted(
        path for path in COVERAGE_DIR.glob("*") if path.is_dir() and path.name != "html"
    )
    measured = {path.name: stagecache.directory_digest(path) for path in data_dirs}
    summary = COVERAGE_DIR / "coverage.json"
    with reusable(session, summary, measured=json.dumps(measured, sort_keys=True)) as reused:
        if reused:
            return
        sync_locked(session, "test")
        env = {"COVERAGE_FILE": str(COVERAGE_DIR / ".coverage")}
        no_fail = ["--fail-under=0"]
        # --keep: a warm pipeline reuses the data of the test sessions it did not run again.
        session.run("coverage", "combine", "--keep", *map(str, data_dirs), env=env)
        # Reports first, whatever the figures; the gate below decides.
        html = f"--directory={COVERAGE_DIR / 'html'}"
        session.run("coverage", "html", html, *no_fail, env=env)
        session.run("coverage", "json", "-o", str(summary), *no_fail, env=env)
        session.run("coverage", "report", *no_fail, env=env)
        session.run(
            "python", "-m", "imdb_deploy.supply_chain.coverage_gate",
            str(summary), "--line=90", "--branch=90",
        )  # fmt: skip


@nox.session(python=DEFAULT_PYTHON, tags=["ci", "tests", "pipeline"])
def integration(session: nox.Session) -> None:
    """The integration layer (real parts) on one Python, in the engine `images` shares. Deploys:
    their own sandbox fleets (sshd, Podman, nginx per host) and releases; deploy, redeploy,
    rollback, the fault matrix, zero dropped requests. Monitoring: a real Prometheus and
    Pushgateway scraping a real API. The API's server process, Podman, the advisory snapshot."""
    # Two workers, each with a fleet of its own (tests/sandbox/conftest.py), modules kept whole:
    # the deploys mostly wait (readiness, drains), so two fleets fit on two cores.
    # The slowest tests and fixtures are printed: where the layer's 5-minute budget goes.
    measured_pytest(
        session, "--layer=integration", "--numprocesses=2", "--dist=loadscope",
        "-p", "no:cacheprovider", "--durations=15", *session.posargs, engine=True,
        groups=["tracking", "mlflow-server"],
    )  # fmt: skip


@nox.session(python=DEFAULT_PYTHON, tags=["ci", "tests"], default=False)
def gates(session: nox.Session) -> None:
    """Prove the gates can fail: inject faults into throw-away copies and run the sessions."""
    sync_locked(session, "test")
    session.run(
        "pytest", "--layer=gates", "-p", "no:cacheprovider", *own_basetemp(session),
        *session.posargs,
    )  # fmt: skip


@nox.session(python=DEFAULT_PYTHON, tags=["ci", "build", "pipeline"])
def sbom(session: nox.Session) -> None:
    """One CycloneDX JSON SBOM per service, from its locked environment, schema-validated."""
    sboms = {name: REPORTS / f"sbom-{name}.cdx.json" for name in SERVICES}
    with reusable(session, *sboms.values()) as reused:
        if reused:
            return
        sync_locked(session, "sbom")
        REPORTS.mkdir(exist_ok=True)
        for name, distribution in SERVICES.items():
            env_dir = Path(session.virtualenv.location) / "services" / name
            sync_locked(session, env_dir=env_dir, package=distribution)
            session.run(
                "cyclonedx-py", "environment", str(env_dir / "bin" / "python"),
                f"--pyproject={ROOT / 'services' / name / 'pyproject.toml'}",
                "--mc-type=application", "--spec-version=1.6", "--output-format=JSON",
                f"--output-file={sboms[name]}", "--no-validate",  # validated below, strictly
            )  # fmt: skip
        session.run(
            "python", "-m", "imdb_deploy.supply_chain.sbom", "validate", *map(str, sboms.values())
        )


@nox.session(python=DEFAULT_PYTHON, tags=["pipeline", "model"], default=False)
def train(session: nox.Session) -> None:
    """Train the model into artifacts/model, gated against the champion: the model live on
    MLOPS_CHAMPION_ENV (default sandbox-production; CD sets production).

    Data: generated (the default), `-- --imdb` (the public IMDb files, downloaded into data/imdb
    with a size bound and their fingerprint recorded), or `-- --data DIR`. A challenger worse
    than the champion on the same held-out rows (or than the linear baseline) fails the session,
    leaves artifacts/model as it was, and the notification says why. With no release live there
    (a new environment, a sandbox not up yet), the last local model is the champion. A model
    already trained on the same data by the same code is reused (MLOPS_STAGE_CACHE=0 retrains).
    """
    sync_locked(session, *TRACKING)
    train_model(session, session.posargs)


def train_model(session: nox.Session, args: Sequence[str]) -> None:
    """`train`'s work, also done by `images` when it has no model to publish: with a session's
    own arguments only, never another session's (nox hands every session the command line's).

    Reused, by default, when the model sources, the data and the champion's environment are
    those of the model already in artifacts/model: a rebuilt release then keeps its model
    version. The public IMDb files (`--imdb`) change upstream: that model is trained each time.
    """
    data_dir, imdb = training_data(session, args)
    target = os.environ.get(CHAMPION_ENV_VAR, "sandbox-production")
    if data_dir == GENERATED_DATA and not (GENERATED_DATA / "title.ratings.tsv.gz").is_file():
        session.run(
            "imdb-trainer", "generate", f"--out={GENERATED_DATA}", f"--rows={GENERATED_ROWS}"
        )
    # The IMDb files are downloaded afresh (never reused): no need to read them here.
    data = "imdb" if imdb else stagecache.directory_digest(data_dir)
    with reusable(
        session, MODEL_DIR, reuse=not imdb, sources=MODEL_SOURCES, stage="train", args=args,
        by_default=True, champion=target, data=data,
    ) as reused:  # fmt: skip
        if not reused:
            if imdb:
                session.run("imdb-trainer", "download", f"--out={IMDB_DATA}")
            session.run(
                "python", "-m", "imdb_deploy.champion", "train", target, f"--out={CHAMPION_DIR}",
                f"--fallback={MODEL_DIR}", "--", f"--data={data_dir}", f"--out={MODEL_DIR}",
                "--overwrite",
            )  # fmt: skip
    session.log(f"model and report: {MODEL_DIR} (report: {MODEL_DIR / 'report' / 'report.md'})")


def training_data(session: nox.Session, args: Sequence[str]) -> tuple[Path, bool]:
    """The data `train` is asked for (generated by default) and whether it is the IMDb files."""
    if not args:
        return GENERATED_DATA, False
    if list(args) == ["--imdb"]:
        return IMDB_DATA, True
    if len(args) == 1 and args[0].startswith("--data="):
        return Path(args[0].removeprefix("--data=")), False
    if len(args) == 2 and args[0] == "--data":
        return Path(args[1]), False
    return session.error("usage: nox -s train [-- --imdb | -- --data DIR]")


@nox.session(python=DEFAULT_PYTHON, tags=["ci", "build", "pipeline"])
def images(session: nox.Session) -> None:
    """Container images, one release: build both through the Docker API, push, SBOM and scan,
    then test them.

    The API image serves the model MLOPS_ARTIFACT names, else artifacts/model, trained first as
    `nox -s train` does (reused when nothing it depends on changed, so a rebuild is the same
    release). The release is that model plus this tree, its record (digests included) in
    reports/release.json and the registry. Starts (or reuses) the local engine and registry first
    (`integration` shares them: one layer cache, one base image, one registry); the tests build
    there too. Posargs go to the build only (`--platform=linux/amd64,linux/arm64`, `--export=DIR`,
    `--no-cache`, ...). MLOPS_PLATFORMS (default linux/amd64; `make pipeline` and CD:
    linux/amd64,linux/arm64) names the platforms too: each release tag is one signed manifest
    list of them, and an emulated arm64 API image must give the model's golden answers first.
    """
    sync_locked(session, "test", *TRACKING)
    if not os.environ.get("MLOPS_ARTIFACT"):
        train_model(session, [])
    artifact = Path(os.environ.get("MLOPS_ARTIFACT") or MODEL_DIR)
    if not (artifact / "manifest.json").is_file():
        session.error(
            f"no trained model in {artifact}: a release serves one (MLOPS_ARTIFACT names an "
            "artifact directory)"
        )
    session.run("python", "-m", "imdb_deploy.engine", "up")
    summary = REPORTS / "images-amd64.json"
    scans = [REPORTS / f"{kind}-image-{name}.{ext}" for name in SERVICES for kind, ext in SCANS]
    osv_dir = os.environ.get(OSV_OFFLINE_DIR_VAR)
    reuse = not session.posargs and bool(osv_dir) and pushed_images_present(summary)
    platforms = os.environ.get("MLOPS_PLATFORMS", "linux/amd64")
    with reusable(
        session, summary, REPORTS / "release.json", REPORTS / "image-scan.json", *scans,
        reuse=reuse, model=stagecache.directory_digest(artifact), platforms=platforms,
        advisories=stagecache.directory_digest(Path(osv_dir)) if osv_dir else "online",
    ) as reused:  # fmt: skip
        if reused:
            return
        session.run(
            "python", "-m", "imdb_deploy.images", "build", "--service=all", "--push", "--scan",
            f"--artifact={artifact}", *session.posargs,
        )  # fmt: skip
        session.run("pytest", "--layer=images", "-p", "no:cacheprovider", *own_basetemp(session))


def pushed_images_present(summary: Path) -> bool:
    """Whether every tag `images` pushed (its summary lists them) is still in the registry."""
    try:
        built = json.loads(summary.read_text())
        tags = [tag for image in built for tag in image["pushed"]]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return bool(tags) and all(stagecache.registry_has(tag) for tag in tags)


@nox.session(python=DEFAULT_PYTHON, default=False)
def serve(session: nox.Session) -> None:
    """Serve artifacts/model on http://127.0.0.1:8000 (after `nox -s train`); posargs: imdb-api."""
    sync_locked(session)
    if not (MODEL_DIR / "manifest.json").is_file():
        session.error(f"no model in {MODEL_DIR}: run `nox -s train` (or `make train`) first")
    args = session.posargs or ["--host=127.0.0.1", "--port=8000"]
    session.run("imdb-api", f"--artifact={MODEL_DIR}", *args)


@nox.session(python=DEFAULT_PYTHON, default=False)
def benchmark(session: nox.Session) -> None:
    """Benchmarks, figures side by side in one run: `-- trainer|api|hosts [ARGS]`.

    trainer: ingest rows/s, end-to-end training wall time and peak RSS on 1.6 M rated titles.
    api: throughput and latency of /predict and /predict/batch against a no-op endpoint on the
    same stack and against `mlflow models serve` on the same model, driven by wrk.
    hosts: deploy and rollback under load on light Podman hosts, booting machines (non-root,
    rootless) and Docker Engine hosts, and reboots of a machine under load on the other
    (MLOPS_HOSTS_BENCHMARK_ROUNDS, default 3); reports/benchmark-hosts.{md,json}.
    """
    if not session.posargs or session.posargs[0] not in {"trainer", "api", "hosts"}:
        session.error("usage: nox -s benchmark -- trainer|api|hosts [ARGS]")
    target, *args = session.posargs
    REPORTS.mkdir(exist_ok=True)
    out = f"--out={REPORTS / f'benchmark-{target}.json'}"
    if target == "trainer":
        sync_locked(session)
        session.run("python", "-m", "imdb_trainer.benchmark", out, *args)
        return
    if target == "hosts":
        sync_locked(session, "test")
        session.run(
            "pytest", "--layer=benchmark", "-p", "no:cacheprovider", "-s",
            "tests/sandbox/test_sandbox_hosts_benchmark.py", *args,
        )  # fmt: skip
        return
    sync_locked(session, "test", "benchmark")
    session.run("pytest", "--layer=benchmark", "-p", "no:cacheprovider", "tests/api")
    session.run("python", "-m", "imdb_api.benchmark", out, *args)


@nox.session(python=DEFAULT_PYTHON, default=False)
def engine(session: nox.Session) -> None:
    """Local container engine: Podman's Docker API, a registry on 127.0.0.1, the base image.

    `nox -s engine -- up|down|status`; `up` reuses a Docker engine that already answers.
    """
    sync_locked(session)
    session.run("python", "-m", "imdb_deploy.engine", *(session.posargs or ["status"]))


@nox.session(python=DEFAULT_PYTHON, default=False)
def fresh(session: nox.Session) -> None:
    """A fresh Debian 12 machine runs the README's two commands: debootstrap's minimal base,
    booted, in a network namespace of its own that reaches only the package registries, clones
    HEAD and runs the Quick start exactly as written. Prints each stage's time (apt, each nox
    session, the test command) and the verdict; reports/fresh/. Needs root; about an hour.

    `-- --keep` keeps the machine afterwards; `-- down` removes what an interrupted run left.
    """
    sync_locked(session)
    session.run("python", "-m", "imdb_deploy.fresh", *session.posargs)


@nox.session(python=DEFAULT_PYTHON, default=False)
def rehearse(session: nox.Session) -> None:
    """The CD rehearsal: `-- --dry [SCENARIO ...]` walks ci.yml's and cd.yml's job graph as
    GitHub does for each scenario (a push to develop or main, a fix on main, a rejected
    approval, a pull request) and prints which jobs run, which are skipped and why, and what a
    later push does to the run. The run against production-shaped machines is still to come."""
    sync_locked(session)
    session.run("python", "-m", "imdb_deploy.rehearsal", *session.posargs)


@nox.session(python=DEFAULT_PYTHON, tags=["pipeline", "deploy"], default=False)
def deliver(session: nox.Session) -> None:
    """The pipeline's deploy stage on the built-in default: the sandbox fleet up, the release
    `images` built deployed to sandbox-staging, then promoted by digest to sandbox-production
    (approved by flag), each benchmark-gated; then the deployment report (its path last)."""
    sync_locked(session)
    session.run("python", "-m", "imdb_deploy.sandbox", "up")
    markers = {"MLOPS_PUSHGATEWAY_URL": SANDBOX_PUSHGATEWAY}  # `sandbox up` started it
    release = ["python", "-m", "imdb_deploy.bluegreen"]
    session.run(*release, "deploy", "sandbox-staging", env=markers)
    session.run(*release, "promote", "--approve", "sandbox-production", env=markers)
    session.run("python", "-m", "imdb_deploy.report", "--latest")


@nox.session(python=DEFAULT_PYTHON, tags=["deploy"], default=False)
def report(session: nox.Session) -> None:
    """Deployment report (Markdown, HTML with plots, JSON) of the newest deploy per environment,
    or of the timelines given: `nox -s report -- [reports/deploys/X.json ...]`."""
    sync_locked(session)
    session.run("python", "-m", "imdb_deploy.report", *(session.posargs or ["--latest"]))


@nox.session(python=DEFAULT_PYTHON, tags=["deploy"], default=False)
def sandbox(session: nox.Session) -> None:
    """The sandbox fleet, the built-in deploy target: `nox -s sandbox -- up|down|status`, or
    `-- reboot HOST` to reboot one machine host.

    sandbox-staging's hosts are light: an sshd on its own 127.0.0.x address, its own Podman
    storage and (after `up`'s setup over SSH) its own nginx. sandbox-production's are whole
    machines that boot (systemd, users, sudo), set up from bare by root, deployed to by `deploy`.
    """
    sync_locked(session)
    session.run("python", "-m", "imdb_deploy.sandbox", *(session.posargs or ["status"]))


def _release(session: nox.Session, action: str) -> None:
    if not session.posargs or session.posargs[0].startswith("-"):
        session.error(f"usage: nox -s {action} -- ENVIRONMENT [--version V] [--approve]")
    environment, *args = session.posargs
    session.run("python", "-m", "imdb_deploy.bluegreen", action, *args, environment)


@nox.session(python=DEFAULT_PYTHON, tags=["deploy"], default=False)
def deploy(session: nox.Session) -> None:
    """Blue-green deploy: `nox -s deploy -- ENVIRONMENT [--version V] [--approve]`.

    The version defaults to the API image the last `nox -s images` built.
    """
    sync_locked(session)
    _release(session, "deploy")


@nox.session(python=DEFAULT_PYTHON, tags=["deploy"], default=False)
def promote(session: nox.Session) -> None:
    """Promote: `nox -s promote -- ENVIRONMENT [--approve]` deploys, by digest, exactly the
    release live and benchmark-passed on the environment ENVIRONMENT promotes from (its
    `promote_from`: production from staging); refused when that release has not passed there."""
    sync_locked(session)
    if not session.posargs or session.posargs[0].startswith("-"):
        session.error("usage: nox -s promote -- ENVIRONMENT [--approve]")
    environment, *args = session.posargs
    session.run("python", "-m", "imdb_deploy.bluegreen", "promote", *args, environment)


@nox.session(python=DEFAULT_PYTHON, tags=["deploy"], default=False)
def rollback(session: nox.Session) -> None:
    """Roll back: `nox -s rollback -- ENVIRONMENT [--version V] [--approve]` (default: the
    previous release, by a proxy switch when every host still has it)."""
    sync_locked(session)
    _release(session, "rollback")


@nox.session(python=DEFAULT_PYTHON, tags=["deploy"], default=False)
def prune(session: nox.Session) -> None:
    """Retention: `nox -s prune -- [ENVIRONMENT ...] [--keep N]` (default: the sandbox ones).

    Releases beyond N on each environment's hosts, in the local engine and in the registry, and
    old deploy timelines; never what a host runs or would roll back to.
    """
    sync_locked(session)
    args = session.posargs or ["sandbox-staging", "sandbox-production"]
    session.run("python", "-m", "imdb_deploy.bluegreen", "prune", *args)
