"""Fixtures for the deploy integration tests: an isolated registry and build engine, the release
images (two good versions and the broken ones of the fault matrix), and a sandbox fleet of two
hosts (sshd, Podman storage and nginx each) with an environment file pointing at it."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import http.client
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import tarfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import bcrypt
import docker
import pytest
import yaml

from imdb_deploy.bluegreen import commands
from imdb_deploy.bluegreen.config import Environment, load_environment
from imdb_deploy.bluegreen.errors import DeployError
from imdb_deploy.bluegreen.orchestrator import Orchestrator
from imdb_deploy.engine.processes import ManagedProcess
from imdb_deploy.engine.registry import registry_config
from imdb_deploy.images import build, manifest_list, metadata, publish, services
from imdb_deploy.images import release as release_identity
from imdb_deploy.images.platforms import PLATFORMS
from imdb_deploy.sandbox.fleet import Fleet
from imdb_deploy.sandbox.inventory import fleet_of
from imdb_deploy.supply_chain import signing
from imdb_model import verify_artifact
from tests.support import (
    SharedEngine,
    fixture_artifact,
    loopback,
    registry_storage,
    shared_engine,
)

# Ports of the test fleets, on addresses apart from the sandbox environments' (test_hosts()).
SSH_PORT = 2261
HTTP_PORT = 8261
APP_PORTS = {"blue": 8271, "green": 8272}
# The environment passes this deployer variable to its containers as a secret.
SECRET_VARIABLE = "MLOPS_E2E_TOKEN"
# The test releases live under <registry>/tests/e2e/; the models of v1, v2 and the slow one.
NAMESPACE = "e2e"
SEEDS = (7, 8, 10)


@dataclass(frozen=True)
class Releases:
    """Versions pushed to the test registry, by role."""

    registry: str
    image: str
    v1: str
    v2: str
    never_ready: str  # its process hangs: /ready never answers
    tampered: str  # a model file changed after the build: verification fails, never ready
    mislabelled: str  # ready, but serves another version than its tag: the smoke test fails
    corrupt: str  # a layer's bytes changed in the registry after the push: the pull refuses it
    slow: str  # a good release whose every prediction takes 150 ms: the benchmark gate fails
    # Every release above is signed with the key at `signing_key` (its public half); these are
    # refused by the hosts' engines at pull:
    signing_key: str
    unsigned: str  # pushed without signatures
    foreign: str  # signed, by another key
    moved: str  # its carrier holds v1's valid signature, moved to this digest's place


def derived_image(
    client: docker.DockerClient,
    base: str,
    tag: str,
    dockerfile: str,
    *,
    model: Path | None = None,
    files: dict[str, bytes] | None = None,
) -> None:
    """Build a thin image FROM `base`: `dockerfile`'s lines, with `model/` and `files` in the
    context."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in {"Dockerfile": f"FROM {base}\n{dockerfile}".encode(),
                           **(files or {})}.items():  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if model is not None:
            tar.add(model, arcname="model")
    context.seek(0)
    client.images.build(fileobj=context, custom_context=True, tag=tag, pull=False, rm=True)


def model_release(
    client: docker.DockerClient,
    base: str,
    image: str,
    model: Path,
    *,
    revision: metadata.Revision,
    extra: str = "",
) -> str:
    """Another release of `base`'s code: `model` as its own top layer with its release record
    (same tree, another model: another release tag, which is also its tag). Returns the tag."""
    release = release_identity.new_release(verify_artifact(model).manifest, revision)
    tag, model_version = release.release, release.model.version
    identity = json.dumps(release.identity()).encode()
    labels = (
        f'org.opencontainers.image.version="{tag}" io.mlops-imdb.model.version="{model_version}"'
    )
    derived_image(
        client, base, f"{image}:{tag}",
        "USER 0\nRUN rm -rf /opt/model\nCOPY model/ /opt/model/\n"
        f"COPY release.json /opt/release.json\nUSER 10001:10001\nLABEL {labels}\n{extra}",
        model=model, files={"release.json": identity},
    )  # fmt: skip
    return tag


MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])  # fmt: skip


def corrupt_top_layer(address: str, storage: Path, repository: str, tag: str) -> None:
    """Flip bytes of the tag's newest layer in the registry's own files, as an attacker with
    access to its storage would: the registry still serves it, the digest no longer matches."""
    url = f"http://{address}/v2/{repository}/manifests/{tag}"
    request = urllib.request.Request(url, headers={"Accept": MANIFEST_TYPES})
    with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310 - loopback
        digest = json.loads(reply.read())["layers"][-1]["digest"].removeprefix("sha256:")
    blob = storage / "docker/registry/v2/blobs/sha256" / digest[:2] / digest / "data"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))


def build_releases(engine: SharedEngine, repo_root: Path, work: Path) -> Releases:
    """The releases of the fault matrix, in the shared engine and registry: one API image built
    as `nox -s images` builds it (its layers cached there), the others thin layers over it
    (another model, a setting, a fault), as a release that differs only by those would be."""
    client, namespace = engine.client, engine.namespace(NAMESPACE)
    engine.clear(NAMESPACE, ["mlops-imdb-api"])  # what earlier runs left
    with ThreadPoolExecutor(max_workers=3) as pool:  # seed 9 trains a model its gate rejects
        trained = dict(zip(SEEDS, pool.map(lambda seed: demo(work, seed), SEEDS), strict=True))
    revision = metadata.git_revision(repo_root)
    built = build.build_service(
        client, repo_root, services.SERVICES["api"], PLATFORMS["linux/amd64"],
        base_image=engine.base_image, revision=revision,
        cache_dir=engine.cache_dir, registry=namespace, artifact=trained[7],
    )  # fmt: skip
    image, v1 = built.reference.rpartition(":")[0], built.version
    base = f"{image}:{v1}"
    v2 = model_release(client, base, image, trained[8], revision=revision)
    # A good model, slowed down, under its own version (it passes the smoke test).
    slow = model_release(
        client, base, image, trained[10], revision=revision, extra="ENV IMDB_API_DEBUG_DELAY_S=0.15"
    )
    faults = {
        "never-ready": 'ENTRYPOINT ["sleep", "infinity"]',
        "tampered": "USER 0\nRUN echo tampered >> /opt/model/model.onnx\nUSER 10001",
        "mislabelled": "LABEL io.mlops-imdb.note=mislabelled",
        # A layer of its own, unlike any earlier run's: the registry keeps blobs by digest.
        "corrupt": "USER 0\nRUN echo " + secrets.token_hex(8) + " > /opt/.corrupt-me\nUSER 10001",
    }
    for name, dockerfile in faults.items():
        derived_image(client, base, f"{image}:{v1}-{name}", dockerfile)
    untrusted = ("unsigned", "foreign", "moved")
    for name in untrusted:
        derived_image(client, base, f"{image}:{v1}-{name}", f"LABEL io.mlops-imdb.note={name}")
    tags = [
        f"{image}:{tag}" for tag in (v1, v2, slow, *(f"{v1}-{n}" for n in (*faults, *untrusted)))
    ]
    digests = {
        tag.rpartition(":")[2]: build.pushed_digest(tag, d)
        for tag, d in build.push(client, tags).items()
    }
    public_key = sign_releases(client, image, digests, work, v1)
    repository = image.partition("/")[2]
    corrupt_top_layer(engine.registry, engine.registry_storage, repository, f"{v1}-corrupt")
    return Releases(
        engine.registry, image, v1, v2,
        f"{v1}-never-ready", f"{v1}-tampered", f"{v1}-mislabelled", f"{v1}-corrupt", slow,
        str(public_key), f"{v1}-unsigned", f"{v1}-foreign", f"{v1}-moved",
    )  # fmt: skip


def sign_releases(
    client: docker.DockerClient, image: str, digests: dict[str, str], work: Path, v1: str
) -> Path:
    """Sign every release in `digests` (tag -> digest) as `nox -s images` does, except the
    untrusted ones; returns the public key file the test environment trusts."""
    signer = signing.new_key(work / "gnupg", "mlops-imdb e2e releases")
    public_key = work / "signing.asc"
    public_key.write_text(signer.public_key())
    env = dict(os.environ)
    for tag, digest in digests.items():
        if tag.endswith(("-unsigned", "-foreign", "-moved")):
            continue
        publish.attach_signatures(client, signer, image, digest, [digest], environ=env)
    other = signing.new_key(work / "gnupg-other", "someone else")
    foreign = digests[f"{v1}-foreign"]
    publish.attach_signatures(client, other, image, foreign, [foreign], environ=env)
    # v1's signature, filed under the digest of `moved`: the engine must see it names another.
    moved = digests[f"{v1}-moved"]
    directory = work / "moved-signature"
    with manifest_list.podman_cli_env(manifest_list.registry_of(image), env) as cli_env:
        signing.sign(signer, image, digests[v1], directory, cli_env)
    source = directory / signing.lookaside_entry(image, digests[v1])
    source.rename(directory / signing.lookaside_entry(image, moved))
    carrier = signing.carrier_reference(image, moved)
    release_identity.scratch_image(client, carrier, signing.carrier_files(directory), {})
    build.push(client, [carrier])
    for home in (signer.gnupghome, other.gnupghome):  # no agent outlives the signing
        signing.stop_agent(home)
    return public_key


def demo(work: Path, seed: int) -> Path:
    return fixture_artifact(work / f"artifact-{seed}", seed=seed)


def worker_index() -> int:
    """0, 1, ... for pytest-xdist's workers gw0, gw1, ...; 0 without xdist."""
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))


def test_hosts() -> tuple[tuple[str, str], ...]:
    """This worker's two hosts: each test worker deploys to a fleet of its own."""
    first = 161 + 2 * worker_index()
    return (("e2e-1", loopback(first)), ("e2e-2", loopback(first + 1)))


@pytest.fixture(scope="session")
def releases(
    tmp_path_factory: pytest.TempPathFactory,
    require_tool: Callable[[str], str],
    repo_root: Path,
) -> Releases:
    """Built once per run: the first test worker to ask builds them, the others read what it
    recorded (under the run's temporary directory, which the workers share)."""
    for tool in ("podman", "runc", "docker-registry", "sshd", "nginx", "curl", "flock"):
        require_tool(tool)
    run = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        run = run.parent
    record = run / "releases.json"
    with (run / "releases.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if record.is_file():
            return Releases(**json.loads(record.read_text()))
        with shared_engine() as engine:
            built = build_releases(engine, repo_root, run / "releases")
        record.write_text(json.dumps(asdict(built)))
        return built


def environment_toml(
    state: Path,
    image: str,
    root: Path,
    *,
    http_port: int = HTTP_PORT,
    app_ports: dict[str, int] = APP_PORTS,
    top: str = "",
    signing_key: str = "",
    fleet_hosts: tuple[tuple[str, str], ...] = (),
    **overrides: str,
) -> str:
    """A sandbox environment on the test fleet (or on `hosts`); `overrides` replace whole
    sections, `top` adds top-level lines; another environment on the same hosts needs ports of
    its own."""
    hosts = "".join(
        f'\n[[hosts]]\nname = "{name}"\naddress = "{address}"\napp_bind = "{address}"\n'
        for name, address in (fleet_hosts or test_hosts())
    )
    settings = {
        "ssh": f'port = {SSH_PORT}\nknown_hosts = "{state / "known_hosts"}"\n'
        f'identity_file = "{state / "id_ed25519"}"\nconnect_timeout_s = 3\ncommand_timeout_s = 60',
        # Only this machine's main loopback address reads /metrics (test_the_public_port_...).
        "nginx": f'mode = "own"\nport = {http_port}\nuser = "www-data"\n'
        'metrics_allow = ["127.0.0.1/32"]',
        "lock": "ttl_s = 8\nheartbeat_s = 2",
        # A release that never gets ready costs the whole timeout: 10 s is still several times
        # what a good one takes here (about 1.5 s from start to ready).
        "readiness": "passes = 3\ninterval_s = 0.2\ntimeout_s = 10",
        "drain": "seconds = 1",
        # Loose p95 tolerance: the tests share two cores with everything else; the slow release
        # is 150 ms per prediction, far beyond it. One second per measurement (a deploy measures
        # twice): hundreds of answers from a good release, a dozen from the slow one.
        # One request in several hundred may time out when another worker's load test has
        # both cores (seen once in a few runs: 1 of 614); the zero-dropped tests still hold
        # every request to 0, and a broken release fails far above this.
        "benchmark": "seconds = 1\nconnections = 2\np95_tolerance = 1.0\np95_slack_ms = 25\n"
        "min_requests = 10\nmax_error_rate = 0.005",
        # Podman tries a pull 3 times in about 3 s itself; with these, a registry is given about
        # 20 s to come back (test_sandbox_faults.py takes it down for 6).
        "pull": "attempts = 4\nbackoff_s = 1\nmax_backoff_s = 4\nmin_free_mb = 256",
    }
    if signing_key:
        settings["signing"] = (
            f'public_key = "{signing_key}"\ncontainers_config = "~/.config/containers"'
        )
    settings.update(overrides)
    sections = "".join(f"\n[{name}]\n{body}\n" for name, body in settings.items())
    return f"""\
sandbox = true
image = "{image}"
deploy_root = "{root}"
{top}
[app]
ports = {{ blue = {app_ports['blue']}, green = {app_ports['green']} }}
settings = {{ IMDB_API_WORKERS = "1", IMDB_API_GRACEFUL_SHUTDOWN_S = "5" }}
secrets = {{ IMDB_API_E2E_TOKEN = "{SECRET_VARIABLE}" }}
stop_timeout_s = 8
{sections}{hosts}"""


@dataclass
class Sandbox:
    """The test fleet with its environment; `orchestrator()` makes a fresh deployer."""

    fleet: Fleet
    environment: Environment
    toml: Path
    releases: Releases
    lines: list[str]

    def orchestrator(
        self,
        environment: Environment | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        on_step: Callable[[str, str], None] | None = None,
    ) -> Orchestrator:
        """A deployer for the test environment (or a variant of it) that logs into `lines`."""
        return Orchestrator(
            environment or self.environment,
            environ=environ,
            echo=self.lines.append,
            on_step=on_step,
        )

    def served_versions(self, environment: Environment | None = None) -> list[str | None]:
        """The release each host's nginx serves now (None: nothing is served yet)."""
        environment = environment or self.environment
        versions: list[str | None] = []
        for host in environment.hosts:
            url = f"http://{environment.http_address(host)}/model/info"
            try:
                reply = urllib.request.urlopen(url, timeout=5)
            except urllib.error.HTTPError as exc:
                exc.close()
                if exc.code != 502:  # 502: nginx is up, with no release behind it yet
                    raise
                versions.append(None)
                continue
            with reply:
                versions.append(json.loads(reply.read())["release"]["release"])
        return versions

    def ensure_live(self, version: str) -> None:
        """Start a case from a known state: `version` live on every host."""
        if self.served_versions() != [version] * len(self.environment.hosts):
            deployer = self.orchestrator()
            try:
                deployer.deploy(version)
            finally:
                deployer.close()
        assert self.served_versions() == [version] * len(self.environment.hosts)

    def live_and_other(self) -> tuple[str, str]:
        """The good version every host serves and the other one. A case that only needs a
        change to deploy starts from whichever is live, instead of paying a deploy (about
        10 s) to reach v1 first."""
        v1, v2 = self.releases.v1, self.releases.v2
        served = set(self.served_versions())
        if served not in ({v1}, {v2}):
            self.ensure_live(v1)
            served = {v1}
        live = v1 if served == {v1} else v2
        return live, v2 if live == v1 else v1

    def audit(self, limit: int = 50) -> list[dict[str, object]]:
        """The newest `limit` audit entries, merged from every host, oldest first."""
        deployer = self.orchestrator()
        try:
            return deployer.audit_log(limit)
        finally:
            deployer.close()

    def last_audit(self) -> dict[str, object]:
        return self.audit(1)[-1]

    def assert_settled(self, version: str, result: str) -> None:
        """One version served everywhere, no lock held, and the audit says how it ended."""
        assert self.served_versions() == [version] * len(self.environment.hosts)
        deployer = self.orchestrator()
        try:
            assert deployer.lock_info() is None
            entry = deployer.audit_log(1)[-1]
        finally:
            deployer.close()
        assert entry["result"] == result, entry


@pytest.fixture(scope="session")
def sandbox(releases: Releases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """Two hosts, set up over SSH by the deploy's own `setup`; torn down at the end."""
    state = tmp_path_factory.mktemp("fleet")
    roots = tmp_path_factory.mktemp("roots")
    toml = state / "e2e.toml"
    toml.write_text(
        environment_toml(state, releases.image, roots, signing_key=releases.signing_key)
    )
    environment = load_environment(str(toml))
    fleet = fleet_of([environment], state, registry=releases.registry)
    os.environ[SECRET_VARIABLE] = "e2e-" + secrets.token_hex(12)
    try:
        fleet.up()
        box = Sandbox(fleet, environment, toml, releases, [])
        deployer = box.orchestrator()
        try:
            deployer.setup()
        finally:
            deployer.close()
        yield box
    finally:
        fleet.down()
        os.environ.pop(SECRET_VARIABLE, None)


# ---- load while a release changes -------------------------------------------------------------

WRK_SCRIPT = textwrap.dedent("""\
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
    wrk.body = '{"primaryTitle": "Load", "startYear": 2001, "runtimeMinutes": 95, ' ..
               '"genres": ["Drama"], "isAdult": false}'
    -- 5 ms between a connection's requests: several hundred a second per host, steady, and
    -- cores left for the fleet that another test worker deploys to meanwhile.
    delay = function() return 5 end
    done = function(summary, latency, requests)
      local e = summary.errors
      io.write(string.format(
        '{"requests": %d, "connect": %d, "read": %d, "write": %d, "status": %d, ' ..
        '"timeout": %d, "max_ms": %.2f, "p99_ms": %.2f}\\n',
        summary.requests, e.connect, e.read, e.write, e.status, e.timeout,
        latency.max / 1000, latency:percentile(99) / 1000))
    end
    """)


def under_load(
    box: Sandbox,
    tmp_path: Path,
    action: Callable[[], object],
    limit_s: int = 120,
    environment: Environment | None = None,
) -> tuple[list[dict[str, float]], float]:
    """Run `action` while wrk sends /predict requests through every host's nginx (of the test
    environment, or `environment`), from a second before it starts to a second after it ends;
    (wrk's figures per host, seconds under load)."""
    environment = environment or box.environment
    wrk = shutil.which("wrk")
    assert wrk is not None, "wrk is needed (deploy/system-packages.sh installs it)"
    script = tmp_path / "predict.lua"
    script.write_text(WRK_SCRIPT)
    loads = [
        subprocess.Popen(
            [
                wrk,
                "-t1",
                "-c4",
                f"-d{limit_s}s",
                "--timeout=5s",
                "-s",
                str(script),
                f"http://{environment.http_address(host)}/predict",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for host in environment.hosts
    ]
    started = time.monotonic()
    time.sleep(1.0)  # load is flowing before the action starts
    try:
        action()
        time.sleep(1.0)  # and goes on after it ends
    finally:
        for load in loads:  # on SIGINT, wrk stops, prints its figures and runs `done`
            load.send_signal(signal.SIGINT)
        outputs = [load.communicate(timeout=30)[0] for load in loads]
    seconds = time.monotonic() - started
    results = []
    for output in outputs:
        summary = json.loads(output.strip().splitlines()[-1])
        print(f"wrk: {summary}")
        results.append(summary)
    return results, seconds


def failed_requests(results: list[dict[str, float]]) -> int:
    """Requests wrk saw fail in any way (connect, read, write, HTTP status, timeout)."""
    return int(
        sum(r[k] for r in results for k in ("connect", "read", "write", "status", "timeout"))
    )


# ---- a crash on one host ----------------------------------------------------------------------


def crash_one_and_wait(box: Sandbox, limit_s: float = 60) -> tuple[float, int]:
    """SIGKILL the live container's API process on the first host, and watch the engine bring
    it back while the other host answers throughout; (seconds until it answered again, answers
    of the other host meanwhile)."""
    victim, other = box.environment.hosts
    engine = box.environment.engine
    deployer = box.orchestrator()
    try:
        runner = deployer.runners[victim.name]
        name = box.environment.container_name(deployer.read_state(victim).live or "")
        inspect = f"{engine} inspect --format '{{{{.State.Pid}}}} {{{{.RestartCount}}}}' {name}"
        pid, restarts = runner.run(inspect).stdout.split()
        killed = time.monotonic()
        runner.run(f"kill -KILL {pid}")  # the API process dies at once: no drain, exit 137
        answered, down, back = 0, 0, None
        while back is None and time.monotonic() - killed < limit_s:
            assert ready_status(box.environment.http_address(other)) == 200
            answered += 1
            if ready_status(box.environment.http_address(victim)) == 200:
                back = time.monotonic() - killed
            else:
                down += 1
            time.sleep(0.05)
        assert back is not None, "the killed container did not come back"
        assert down > 0, "it was never down: the kill missed"
        new_pid, new_restarts = runner.run(inspect).stdout.split()
        assert (new_pid != pid, int(new_restarts)) == (True, int(restarts) + 1)
    finally:
        deployer.close()
    return back, answered


def ready_status(address: str) -> int:
    """The status of GET /ready through a host's nginx (0: no answer)."""
    host, _, port = address.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.request("GET", "/ready")
        return connection.getresponse().status
    except OSError:
        return 0
    finally:
        connection.close()


# ---- a second registry, and releases the hosts must pull again ----------------------------------


@dataclass
class RegistryReplica:
    """A second registry process serving the test registry's own storage at `address`; the
    hosts pull the test releases through it, so stopping it is the registry going down."""

    address: str
    process: ManagedProcess
    config: Path

    def start(self) -> None:
        self.process.start(["docker-registry", "serve", str(self.config)])
        deadline = time.monotonic() + 15
        while not registry_answers(self.address):
            if time.monotonic() > deadline:
                self.process.stop()
                raise AssertionError(f"the replica did not answer:\n{self.process.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.stop()


def registry_answers(address: str) -> bool:
    host, _, port = address.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=2)
    try:
        connection.request("GET", "/v2/")
        return connection.getresponse().status in {200, 401}  # 401: it wants a login
    except OSError:
        return False
    finally:
        connection.close()


@contextlib.contextmanager
def serving_through_replica(
    sandbox: Sandbox, directory: Path, htpasswd: Path | None = None, remap: bool = True
) -> Iterator[RegistryReplica]:
    """The replica running (behind a login when `htpasswd` is given). With `remap`, every test
    host's engine is sent to it for the test releases: a registries.conf entry for their
    namespace, so the references, and the signatures' identities, stay the same; without, the
    hosts reach it only by its own address. All undone at the end."""
    address = f"{loopback(181 + worker_index())}:5000"
    settings = yaml.safe_load(registry_config(registry_storage(sandbox.releases.registry), address))
    if htpasswd is not None:
        settings["auth"] = {"htpasswd": {"realm": "mlops-imdb-tests", "path": str(htpasswd)}}
    config = directory / "replica.yml"
    config.write_text(yaml.safe_dump(settings))
    registry = RegistryReplica(address, ManagedProcess("replica", directory), config)
    image = sandbox.releases.image
    namespace, repository = image.rpartition("/")[0], image.partition("/")[2]
    entry = (
        f'\n[[registry]]\nprefix = "{namespace}"\n'
        f'location = "{address}/{namespace.partition("/")[2]}"\ninsecure = true\n'
        if remap
        else f'\n[[registry]]\nlocation = "{address}"\ninsecure = true\n'
    )
    # Docker Engine hosts need neither: 127.0.0.0/8 registries may speak plain HTTP to Docker,
    # and Docker reads no lookaside (the deploy checks signatures itself).
    podman_hosts = [host for host in sandbox.fleet.hosts if host.engine == "podman"]
    files = [
        Path(sandbox.fleet.engine_env(host)["CONTAINERS_REGISTRIES_CONF"]) for host in podman_hosts
    ]
    originals = {path: path.read_text() for path in files}
    # The engine finds a pulled image's lookaside by the location it pulls from, as it would
    # for any mirror: the replica gets the same signature directory as the registry.
    lookasides = []
    for host in sandbox.environment.hosts:
        if sandbox.fleet.host(host.name).engine != "podman":
            continue
        home = sandbox.fleet.home(sandbox.fleet.host(host.name))
        lookaside = home / ".config/containers/registries.d/replica.yaml"
        signatures = sandbox.environment.layout(host).signatures_dir
        lookaside.write_text(signing.registries_d(f"{address}/{repository}", signatures))
        lookasides.append(lookaside)
    try:
        registry.start()
        for path, text in originals.items():
            path.write_text(text + entry)
        yield registry
    finally:
        for path, text in originals.items():
            path.write_text(text)
        for lookaside in lookasides:
            lookaside.unlink()
        registry.stop()


def forget_release(sandbox: Sandbox, version: str) -> None:
    """Remove `version`'s container and image from every host, so a deploy must pull it."""
    deployer, engine = sandbox.orchestrator(), sandbox.environment.engine
    try:
        for host in sandbox.environment.hosts:
            runner, state = deployer.runners[host.name], deployer.read_state(host)
            for colour, running in state.colours.items():
                if running == version and colour != state.live:
                    name = sandbox.environment.container_name(colour)
                    runner.run(commands.remove_container(name, engine))
            image = sandbox.environment.image_ref(version, deployer._digest_of(version))
            runner.run(commands.remove_image(image, engine))
            assert not runner.run(commands.image_exists(image, engine), check=False).ok
    finally:
        deployer.close()


def private_registry_case(sandbox: Sandbox, tmp_path: Path) -> None:
    """The releases served by a registry that wants a login, at its own address (the image of
    an environment that names no signing key: this case is about the login alone)."""
    user, password = "puller", "pw-" + secrets.token_hex(12)
    htpasswd = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"{user}:{hashed}\n")
    live, other = sandbox.live_and_other()
    forget_release(sandbox, other)  # else the hosts have it already and pull nothing
    reader = sandbox.orchestrator()
    try:
        digest = reader._digest_of(other)  # the replica serves the same manifests
    finally:
        reader.close()
    with serving_through_replica(sandbox, tmp_path, htpasswd, remap=False) as registry:
        image = f"{registry.address}/{sandbox.releases.image.partition('/')[2]}"
        public = sandbox.environment.model_copy(update={"image": image, "signing": None})
        deployer = sandbox.orchestrator(public)
        try:
            # Podman says "unauthorized"; Docker "no basic auth credentials".
            with pytest.raises(DeployError, match=r"unauthorized|no basic auth credentials"):
                deployer.deploy(other, digest=digest)
            assert deployer.outcome is not None
            assert not [e for e in deployer.outcome.events if e.step.endswith(" retry")]
        finally:
            deployer.close()
        sandbox.assert_settled(live, "failed")

        pull = public.pull.model_copy(
            update={"user_var": "E2E_PULL_USER", "password_var": "E2E_PULL_PASSWORD"}
        )
        private = public.model_copy(update={"pull": pull})
        environ = {**os.environ, "E2E_PULL_USER": user, "E2E_PULL_PASSWORD": password}
        deployer = sandbox.orchestrator(private, environ=environ)
        try:
            assert deployer.deploy(other, digest=digest).result == "ok"
            for host in private.hosts:
                auth = Path(str(private.layout(host).registry_auth_file))
                assert auth.stat().st_mode & 0o777 == 0o600
                token = json.loads(auth.read_text())["auths"][registry.address]["auth"]
                assert base64.b64decode(token).decode() == f"{user}:{password}"
            assert deployer.outcome is not None
            logged = json.dumps(deployer.outcome.audit_entry()) + "\n".join(sandbox.lines)
            assert password not in logged
        finally:
            deployer.close()
    sandbox.assert_settled(other, "ok")


# ---- fleets of other kinds: booting machines, Docker Engine hosts ------------------------------


def kind_toml(
    state: Path, releases: Releases, kind: str, hosts: tuple[tuple[str, str], ...]
) -> str:
    """The test environment on `hosts` of `kind`: machine (booting, set up through the cloud
    image's sudo admin, deployed to by `deploy`, the system nginx) or docker (light hosts with a
    Docker Engine each)."""
    if kind == "docker":
        return environment_toml(
            state, releases.image, state / "roots", signing_key=releases.signing_key,
            fleet_hosts=hosts, top='engine = "docker"\n',
        )  # fmt: skip
    ssh = (
        f'user = "deploy"\nport = {SSH_PORT}\nknown_hosts = "{state / "known_hosts"}"\n'
        f'identity_file = "{state / "id_ed25519"}"\nconnect_timeout_s = 5\ncommand_timeout_s = 120'
    )
    # The reader's key: the fleet makes it beside the deploy key (Fleet.reader_identity_file).
    reader = f'user = "imdb-read"\nidentity_file = "{state / "read_ed25519"}"'
    return environment_toml(
        state, releases.image, Path("/srv/mlops-imdb"), signing_key=releases.signing_key,
        fleet_hosts=hosts, top='sandbox_hosts = "machine"\n', ssh=ssh, setup='user = "admin"',
        nginx=f'mode = "system"\nport = {HTTP_PORT}\nmetrics_allow = ["127.0.0.1/32"]',
        reader=reader,
    )  # fmt: skip


@contextlib.contextmanager
def fleet_of_kind(
    releases: Releases, state: Path, kind: str, hosts: tuple[tuple[str, str], ...]
) -> Iterator[Sandbox]:
    """A fleet of `kind` up for the block (not set up: that is for the test to do); machines
    are removed at the end, disks and all."""
    toml = state / f"{kind}.toml"
    toml.write_text(kind_toml(state, releases, kind, hosts))
    environment = load_environment(str(toml))
    fleet = fleet_of([environment], state, registry=releases.registry)
    ours = SECRET_VARIABLE not in os.environ
    os.environ.setdefault(SECRET_VARIABLE, "e2e-" + secrets.token_hex(12))
    try:
        fleet.up()
        yield Sandbox(fleet, environment, toml, releases, [])
    finally:
        fleet.down(forget=kind == "machine")
        if ours:
            os.environ.pop(SECRET_VARIABLE, None)


def machine_hosts() -> tuple[tuple[str, str], ...]:
    first = 201 + 2 * worker_index()
    return (("box-1", loopback(first)), ("box-2", loopback(first + 1)))


def docker_hosts() -> tuple[tuple[str, str], ...]:
    first = 211 + 2 * worker_index()
    return (("dock-1", loopback(first)), ("dock-2", loopback(first + 1)))


def set_up(box: Sandbox, environment: Environment | None = None) -> dict[str, list[str]]:
    """The deploy's own setup on the box's hosts (as `environment` says, if given); what it
    changed per host."""
    deployer = box.orchestrator(environment)
    try:
        return deployer.setup()
    finally:
        deployer.close()


# ---- a release under load, timed ---------------------------------------------------------------


def release_under_load(
    box: Sandbox, tmp_path: Path, release: Callable[[Orchestrator], object]
) -> dict[str, float]:
    """Run one release (`release(deployer)` must end `ok`) under wrk load through every host;
    its wall time, the requests sent meanwhile, how many failed and the worst latency."""
    took: list[float] = []

    def timed() -> None:
        started = time.monotonic()
        deployer = box.orchestrator()
        try:
            outcome = release(deployer)
            assert getattr(outcome, "result", None) == "ok", getattr(outcome, "detail", outcome)
        finally:
            deployer.close()
        took.append(time.monotonic() - started)

    results, _ = under_load(box, tmp_path, timed)
    return {
        "seconds": took[0],
        "requests": sum(int(result["requests"]) for result in results),
        "failed": failed_requests(results),
        "worst_ms": max(result["max_ms"] for result in results),
    }


def deploy_and_roll_back_under_load(box: Sandbox, tmp_path: Path, hosts: str) -> None:
    """Deploy the other release, then roll back, each under load: 0 failed, each settled."""
    live, other = box.live_and_other()
    steps: tuple[tuple[str, Callable[[Orchestrator], object], str], ...] = (
        ("deploy", lambda deployer: deployer.deploy(other), other),
        ("rollback", lambda deployer: deployer.rollback(), live),
    )
    for name, release, expected in steps:
        run = release_under_load(box, tmp_path, release)
        print(
            f"{name} on {hosts}: {run['seconds']:.1f} s; under load {int(run['requests'])} "
            f"requests, {int(run['failed'])} failed, worst {run['worst_ms']:.0f} ms"
        )
        assert run["failed"] == 0
        box.assert_settled(expected, "ok")


def reboot_until_serving(box: Sandbox, version: str, limit_s: float) -> dict[str, float]:
    """Reboot the box's first host (a machine) and wait, up to `limit_s` from the reboot, until
    it serves `version` again; seconds until its sshd answered and until it served."""
    name = box.environment.hosts[0].name
    started = time.monotonic()
    ssh = box.fleet.reboot(box.fleet.host(name))
    while time.monotonic() - started < limit_s:
        try:
            if box.served_versions()[0] == version:
                break
        except (OSError, ValueError, KeyError):  # URLError is an OSError: not up yet
            pass
        time.sleep(0.1)
    return {"ssh": ssh, "serving": time.monotonic() - started}
