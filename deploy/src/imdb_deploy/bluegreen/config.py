"""Environments as config: `deploy/environments/<name>.toml`, typed and validated.

An environment names its hosts, how to reach them (SSH user and port, pinned host keys), the image
it runs, the ports of the two colours, readiness and drain settings, retention, and the settings
its containers get. Secrets are never in these files: `[app.secrets]` maps a container variable to
the name of an environment variable of the deployer (a GitHub secret in CI), read at deploy time
and redacted from every log line (see `Redactor`).

Relative paths (known_hosts, identity file, a sandbox's deploy roots) are relative to the
repository root, so every command works from a checkout wherever it lives.
"""

from __future__ import annotations

import getpass
import ipaddress
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from ipaddress import IPv4Network
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, overload

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from imdb_deploy.bluegreen import overlay
from imdb_deploy.bluegreen.layout import COLOURS, HostLayout
from imdb_deploy.programs import ShellCommand

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


REPO_ROOT = Path(__file__).resolve().parents[4]
ENVIRONMENTS_DIR = REPO_ROOT / "deploy" / "environments"
# Name of the deployer's variable holding a private key for SSH (a GitHub secret in CI).
SSH_KEY_VAR = "MLOPS_DEPLOY_SSH_KEY"
# The reader's (see ReaderSettings): a job that only reads holds this one, never the deploy key.
READ_KEY_VAR = "MLOPS_READ_SSH_KEY"
APP_ENV_PREFIX = "IMDB_API_"


class ConfigError(ValueError):
    """An environment file is missing, malformed, or asks for a secret that is not set."""


# What goes unquoted into nginx configs and units must be plain: letters, digits, `._-/` (and a
# leading `~/` where a home is meant). Every such field is checked here, so the error names the
# environment file and the field instead of nginx (or a shell) failing on a host later.
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_PATTERN = rf"^(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[0-9A-Fa-f:.]+\])$"
SAFE_PATH_PATTERN = r"^(?:~/|/)?[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*/?$"
IMAGE_PATTERN = r"^[a-z0-9][a-z0-9.-]*(?::[0-9]{1,5})?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)+$"
HostName = Annotated[str, Field(pattern=HOST_PATTERN, max_length=253)]


def _safe_path(value: PurePosixPath | Path | None) -> PurePosixPath | Path | None:
    if value is not None and not re.match(SAFE_PATH_PATTERN, str(value)):
        raise ValueError(f"{str(value)!r}: use letters, digits and ._-/ only")
    return value


def _http_address(value: str | None) -> str | None:
    """`host:port`: a host name or address, and a port 1-65535."""
    if value is None:
        return None
    host, _, port = value.rpartition(":")
    if not (host and re.match(HOST_PATTERN, host) and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{value!r} is not host:port")
    return value


def _ip_address(value: str | None) -> str | None:
    if value is not None:
        ipaddress.ip_address(value)  # ValueError names the value
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# A user name as Debian's useradd takes it, and as sudo reads it in a sudoers file (a `.` in a
# file's name makes sudo skip the file without a word).
USER_PATTERN = r"^[a-z_][a-z0-9_-]*$"


class SshSettings(_Strict):
    user: str | None = Field(
        default=None, pattern=USER_PATTERN, description="login user; default: the current user"
    )
    port: int = Field(default=22, ge=1, le=65535)
    known_hosts: Path = Field(description="the pinned host keys; unknown or changed keys refuse")
    identity_file: Path | None = Field(
        default=None, description=f"private key file; else ${SSH_KEY_VAR}, else the SSH agent"
    )
    connect_timeout_s: float = Field(default=10, gt=0)
    connect_attempts: int = Field(
        default=3, ge=1, description="tries per connect, with backoff (a blip is survived)"
    )
    command_timeout_s: float = Field(default=300, gt=0)


class NginxSettings(_Strict):
    mode: Literal["own", "system"] = Field(
        default="system",
        description="own: an nginx per environment under the deploy root (the sandbox); "
        "system: the host's nginx, with the site in /etc/nginx/conf.d",
    )
    port: int = Field(default=80, ge=1, le=65535, description="the public HTTP port")
    user: str = Field(
        default="www-data",
        pattern=USER_PATTERN,
        description="worker user of an own nginx",
    )
    metrics_allow: tuple[IPvAnyNetwork, ...] = Field(
        default=(IPv4Network("127.0.0.0/8"),),
        description="who may read /metrics on the public port (Prometheus); anyone else gets "
        "403. The public port serves the API; metrics are for the monitoring network only",
    )
    public_docs: bool = Field(
        default=False,
        description="serve the API's documentation (/docs, /redoc, /openapi.json) on the public "
        "port; off: 404 there (the containers still serve it on their own ports)",
    )
    client_keepalive_s: float = Field(
        default=0,
        ge=0,
        description="keep-alive for clients; 0 closes each connection after its response, so a "
        "reload never closes an idle connection that a client is about to reuse (the one way "
        "nginx drops requests during a switch)",
    )


class AppSettings(_Strict):
    ports: dict[str, int] = Field(default={"blue": 8101, "green": 8102})
    bind: str = Field(default="127.0.0.1", description="address the containers listen on")
    _checked_bind = field_validator("bind")(_ip_address)
    settings: dict[str, str] = Field(default={}, description="IMDB_API_* settings, plain values")
    secrets: dict[str, str] = Field(
        default={}, description="container variable -> name of the deployer's variable"
    )
    stop_timeout_s: float = Field(
        default=30, gt=0, description="SIGTERM grace before the engine kills a container"
    )
    restart_attempts: int = Field(
        default=5,
        ge=0,
        description="a colour's container that exits with an error (a crash, the API's "
        "crash-loop stop) is started again by the engine up to this many times (on-failure:N); "
        "0: never. A stop by the deploy is no failure, so the kept colour stays stopped",
    )

    @field_validator("ports")
    @classmethod
    def _both_colours(cls, ports: dict[str, int]) -> dict[str, int]:
        if set(ports) != set(COLOURS) or ports["blue"] == ports["green"]:
            raise ValueError(f"ports needs distinct {' and '.join(COLOURS)} entries")
        if not all(0 < port < 65536 for port in ports.values()):
            raise ValueError(f"ports out of range: {ports}")
        return ports

    @field_validator("settings", "secrets")
    @classmethod
    def _api_settings_only(cls, names: dict[str, str]) -> dict[str, str]:
        for name in names:
            if not re.fullmatch(rf"{APP_ENV_PREFIX}[A-Z0-9_]+", name):
                raise ValueError(f"{name!r} is not an {APP_ENV_PREFIX}* setting")
        return names


class ReadinessSettings(_Strict):
    passes: int = Field(default=3, ge=1, description="consecutive /ready passes needed")
    interval_s: float = Field(default=0.5, gt=0)
    timeout_s: float = Field(default=60, gt=0)


class DrainSettings(_Strict):
    seconds: float = Field(
        default=5, ge=0, description="the old colour keeps running this long after the switch"
    )


class LockSettings(_Strict):
    ttl_s: int = Field(default=120, ge=2, description="a lock not renewed this long expires")
    heartbeat_s: float = Field(default=20, gt=0)

    @model_validator(mode="after")
    def _renewed_in_time(self) -> LockSettings:
        if self.heartbeat_s * 2 > self.ttl_s:
            raise ValueError("lock heartbeat_s must be at most half of ttl_s")
        return self


class PullSettings(_Strict):
    """Before and around each host's pull of a release."""

    attempts: int = Field(
        default=4, ge=1, description="tries of a pull (and of its signatures) that failed on a "
        "transient registry error (refused, reset, timed out, 5xx); other errors fail at once",
    )  # fmt: skip
    backoff_s: float = Field(default=2, gt=0, description="wait before the second try; doubles")
    max_backoff_s: float = Field(default=15, gt=0)
    min_free_mb: int = Field(
        default=2048, ge=0, description="refuse to pull when the engine's storage has less free"
    )
    # A private registry: the names of the deployer's variables holding a read-only login (a
    # GitHub secret each). Their values reach a host only by SFTP, into an auth file of mode 600
    # that the pulls name (`--authfile`); never on a command line or in a log.
    user_var: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]*$")
    password_var: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]*$")

    @model_validator(mode="after")
    def _both_or_neither(self) -> PullSettings:
        if (self.user_var is None) != (self.password_var is None):
            raise ValueError("pull.user_var and pull.password_var go together")
        return self


class SetupSettings(_Strict):
    """Who prepares a bare host (`fab setup`), when that is not the deploy user itself."""

    user: str | None = Field(
        default=None,
        pattern=USER_PATTERN,
        description="root, or a user with passwordless sudo (a cloud image's `admin` or "
        "`ubuntu`), that installs packages and makes the deploy user, its sudoers file and the "
        "nginx site; none: setup runs as the deploy user, who must then be root",
    )
    authorized_key: Path | None = Field(
        default=None,
        description="public key the deploy user logs in with; default: ssh.identity_file + .pub",
    )


class ReaderSettings(_Strict):
    """A host user that may read the release state (which release, by which digest, each host
    runs) and nothing else: what the champion's gate logs in as, so that a job outside the
    protected environment (CD's train job) never holds a key that can deploy. `fab setup` makes
    it, with its one key restricted to the one command that prints the state."""

    user: str = Field(pattern=USER_PATTERN, description="its login, made by `fab setup`")
    authorized_key: Path | None = Field(
        default=None, description="its public key; default: identity_file + .pub"
    )
    identity_file: Path | None = Field(
        default=None, description=f"its private key here; else ${READ_KEY_VAR}, else the agent"
    )

    def key_file(self) -> Path | None:
        """The file holding the public key setup authorizes for the reader, if any."""
        if self.authorized_key is not None:
            return self.authorized_key
        if self.identity_file is not None:
            return self.identity_file.with_name(self.identity_file.name + ".pub")
        return None


class BenchmarkSettings(_Strict):
    """The post-deploy benchmark gate (imdb_deploy.bluegreen.loadcheck)."""

    enabled: bool = True
    seconds: float = Field(default=4, gt=0, le=120, description="load per host, bounded")
    connections: int = Field(default=4, ge=1, le=64)
    p95_tolerance: float = Field(
        default=0.2, ge=0, description="allowed p95 increase over the previous release (0.2: +20%)"
    )
    p95_slack_ms: float = Field(
        default=5,
        ge=0,
        description="and allowed on top in milliseconds: a few ms of noise on a fast service "
        "is no regression",
    )
    max_error_rate: float = Field(default=0.0, ge=0, le=1, description="0: any error fails")
    min_requests: int = Field(default=50, ge=1, description="fewer answered requests fail")
    rollback: bool = Field(default=True, description="roll back automatically on a regression")


class SigningSettings(_Strict):
    """Whose signature this environment's hosts require on its images (see
    imdb_deploy.supply_chain.signing); `fab setup` installs the policy that says so."""

    public_key: Path = Field(
        description="the ASCII-armoured GPG public key releases must be signed with"
    )
    containers_config: str = Field(
        default="/etc/containers",
        pattern=r"^(?:~/|/)[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*/?$",
        description="the engine's configuration directory on the hosts: policy.json and "
        "registries.d/ go there (`~/` is the SSH user's home: the sandbox's per-host one)",
    )


class Approval(_Strict):
    required: bool = False
    github_environment: str | None = Field(
        default=None,
        description="--approve is accepted only inside GitHub Actions, from a job in this "
        "(protected) GitHub environment",
    )


class Host(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    address: HostName = Field(description="SSH address: a host name or an IP address")
    ssh_port: int | None = Field(default=None, ge=1, le=65535)
    http_address: str | None = Field(default=None, description="where its nginx listens")
    app_bind: str | None = Field(default=None, description="IP address the containers bind")
    deploy_root: PurePosixPath | None = None

    _checked_http_address = field_validator("http_address")(_http_address)
    _checked_app_bind = field_validator("app_bind")(_ip_address)
    _checked_root = field_validator("deploy_root")(_safe_path)


class Environment(_Strict):
    """One deploy target: its hosts and everything a deploy to them needs."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str = ""
    sandbox: bool = Field(default=False, description="hosts of the local sandbox fleet")
    sandbox_hosts: Literal["light", "machine"] = Field(
        default="light",
        description="how the sandbox makes these hosts: light (an sshd sharing this machine's "
        "file system) or machine (a booting systemd machine of its own, started bare)",
    )
    image: str = Field(
        pattern=IMAGE_PATTERN, description="repository, without tag: <registry>/mlops-imdb-api"
    )
    deploy_root: PurePosixPath = PurePosixPath("/srv/mlops-imdb")
    engine: Literal["podman", "docker"] = Field(
        default="podman",
        description="the hosts' container engine: podman (rootless for a non-root deploy user; "
        "verifies signatures at pull) or docker (Docker Engine: the deploy checks signatures "
        "with gpgv before the pull, and its user must be root or in the docker group)",
    )
    strategy: Literal["all-or-nothing", "rolling"] = "all-or-nothing"
    batch_size: int = Field(default=1, ge=1, description="hosts per batch in rolling mode")
    keep_releases: int = Field(default=5, ge=1)
    promote_from: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9-]*$",
        description="the environment whose live, benchmark-passed release `promote` deploys "
        "here, by digest (production promotes from staging)",
    )
    approval: Approval = Approval()
    ssh: SshSettings
    nginx: NginxSettings = NginxSettings()
    app: AppSettings = AppSettings()
    readiness: ReadinessSettings = ReadinessSettings()
    drain: DrainSettings = DrainSettings()
    lock: LockSettings = LockSettings()
    pull: PullSettings = PullSettings()
    setup: SetupSettings = SetupSettings()
    benchmark: BenchmarkSettings = BenchmarkSettings()
    signing: SigningSettings | None = Field(
        default=None, description="none: the hosts pull any image the registry hands them"
    )
    reader: ReaderSettings | None = Field(
        default=None, description="none: reading the release state takes the deploy key"
    )
    hosts: tuple[Host, ...] = Field(min_length=1)
    # The directory its file was read from: where the environment it promotes from is found.
    _directory: Path = PrivateAttr(default=ENVIRONMENTS_DIR)

    _checked_root = field_validator("deploy_root")(_safe_path)

    def sibling(self, name: str) -> Environment:
        """Another environment of the same directory (the one this one promotes from)."""
        return load_environment(name, self._directory)

    def only(self, names: Sequence[str]) -> Environment:
        """This environment on the named hosts alone (an operator's way round a host that is
        gone for good); ConfigError for a name it does not have."""
        known = [host.name for host in self.hosts]
        unknown = sorted(set(names) - set(known))
        if unknown or not names:
            raise ConfigError(
                f"{self.name} has no host(s) {unknown or '(none named)'}; its hosts: {known}"
            )
        narrowed = self.model_copy(
            update={"hosts": tuple(host for host in self.hosts if host.name in names)}
        )
        narrowed._directory = self._directory
        return narrowed

    @model_validator(mode="after")
    def _rootless_trust(self) -> Environment:
        # A rootless engine reads the user's ~/.config/containers/policy.json before
        # /etc/containers/policy.json: the policy must be where the deploy user's engine looks.
        user = self.ssh.user
        rootless = user is not None and user != "root"
        if rootless and self.signing and not self.signing.containers_config.startswith("~/"):
            raise ValueError(
                f"the deploy user {user} runs a rootless engine, which reads its own "
                'configuration first: set signing.containers_config = "~/.config/containers"'
            )
        return self

    @model_validator(mode="after")
    def _reader_of_its_own(self) -> Environment:
        if self.reader is not None and self.reader.user in {"root", self.ssh.user, self.setup.user}:
            raise ValueError(
                f"reader.user {self.reader.user!r} must be a user of its own, not root, the "
                "deploy user or the setup user: it may read the release state and nothing else"
            )
        return self

    @model_validator(mode="after")
    def _distinct_hosts(self) -> Environment:
        names = [host.name for host in self.hosts]
        if len(set(names)) != len(names):
            raise ValueError(f"host names repeat: {names}")
        return self

    # Per-host values fall back to the environment's.
    def ssh_port(self, host: Host) -> int:
        return host.ssh_port or self.ssh.port

    def http_address(self, host: Host) -> str:
        return host.http_address or f"{host.address}:{self.nginx.port}"

    def app_bind(self, host: Host) -> str:
        return host.app_bind or self.app.bind

    def layout(self, host: Host) -> HostLayout:
        """`<deploy_root>/<environment>` on a real host; sandbox hosts share one file system,
        so each gets `<deploy_root>/<environment>/<host>`."""
        if host.deploy_root is not None:
            return HostLayout(host.deploy_root)
        root = self.deploy_root / self.name
        shared = self.sandbox and self.sandbox_hosts == "light"
        return HostLayout(root / host.name if shared else root)

    @property
    def shares_this_machine(self) -> bool:
        """Light sandbox hosts: sshds of this machine, not machines of their own. Nothing of
        theirs may outlive the sandbox in this machine's boot (several share its systemd)."""
        return self.sandbox and self.sandbox_hosts == "light"

    @property
    def deploy_user(self) -> str:
        """Who the deploys log in as."""
        return self.ssh.user or getpass.getuser()

    @property
    def sudo(self) -> ShellCommand:
        """What goes before a command the deploy runs as root: nothing for root, else
        `sudo -n ` (never a password prompt: setup's sudoers file allows exactly those)."""
        return "" if self.deploy_user == "root" else "sudo -n "

    def as_setup_user(self) -> Environment | None:
        """This environment as `setup.user` logs in (None: setup runs as the deploy user)."""
        user = self.setup.user
        if user is None or user == self.ssh.user:
            return None
        admin = self.model_copy(update={"ssh": self.ssh.model_copy(update={"user": user})})
        admin._directory = self._directory
        return admin

    def as_reader(self, environ: Mapping[str, str]) -> tuple[Environment, dict[str, str]]:
        """This environment as its reader logs in, and the variables that session sees: the
        reader's key (${READ_KEY_VAR}) as the one to log in with, never the deploy key.
        Without a reader: the environment and variables as they are."""
        if self.reader is None:
            return self, dict(environ)
        ssh = self.ssh.model_copy(
            update={"user": self.reader.user, "identity_file": self.reader.identity_file}
        )
        view = self.model_copy(update={"ssh": ssh})
        view._directory = self._directory
        variables = {name: value for name, value in environ.items() if name != SSH_KEY_VAR}
        if environ.get(READ_KEY_VAR):
            variables[SSH_KEY_VAR] = environ[READ_KEY_VAR]
        return view, variables

    def deploy_key_file(self) -> Path | None:
        """The file holding the public key setup authorizes for the deploy user, if any."""
        if self.setup.authorized_key is not None:
            return self.setup.authorized_key
        if self.ssh.identity_file is not None:
            return self.ssh.identity_file.with_name(self.ssh.identity_file.name + ".pub")
        return None

    def container_name(self, colour: str) -> str:
        return f"mlops-imdb-api-{self.name}-{colour}"

    def image_ref(self, version: str, digest: str | None = None) -> str:
        """`image:version`, or `image@digest` once the release's digest is known: hosts run
        a release by digest, so a tag moved in the registry cannot change what they run."""
        return f"{self.image}@{digest}" if digest else f"{self.image}:{version}"

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise ConfigError(f"{self.name} has no host {name!r}: {[h.name for h in self.hosts]}")

    def app_environment(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The container's variables: settings, then secrets read from `environ`."""
        values = dict(self.app.settings)
        missing = [source for source in self.app.secrets.values() if not environ.get(source)]
        if missing:
            raise ConfigError(f"{self.name}: secrets not set in the environment: {missing}")
        values.update({name: environ[source] for name, source in self.app.secrets.items()})
        return values

    def secret_values(self, environ: Mapping[str, str]) -> list[str]:
        """Every secret value this environment's deploy may touch, for redaction."""
        sources = [*self.app.secrets.values(), SSH_KEY_VAR, READ_KEY_VAR]
        if self.pull.password_var:
            sources.append(self.pull.password_var)
        return [environ[source] for source in sources if environ.get(source)]

    def registry_login(self, environ: Mapping[str, str]) -> tuple[str, str] | None:
        """(user, password) the hosts pull with, from the deployer's variables `[pull]` names;
        None for a registry that needs no login."""
        pull = self.pull
        if pull.user_var is None or pull.password_var is None:
            return None
        missing = [var for var in (pull.user_var, pull.password_var) if not environ.get(var)]
        if missing:
            raise ConfigError(f"{self.name}: registry login not set in the environment: {missing}")
        return environ[pull.user_var], environ[pull.password_var]


def environment_path(name_or_path: str, directory: Path = ENVIRONMENTS_DIR) -> Path:
    """`staging` -> deploy/environments/staging.toml; a path to a .toml file is taken as is."""
    if name_or_path.endswith(".toml"):
        return Path(name_or_path)
    return directory / f"{name_or_path}.toml"


def available(directory: Path = ENVIRONMENTS_DIR) -> list[str]:
    return sorted(path.stem for path in directory.glob("*.toml"))


def load_environment(
    name_or_path: str, directory: Path = ENVIRONMENTS_DIR, repo_root: Path = REPO_ROOT
) -> Environment:
    """Read and validate an environment; the error names the file and the offending field."""
    path = environment_path(name_or_path, directory)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"no environment {name_or_path!r} ({path}); available: {available(directory)}"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    data.setdefault("name", path.stem)
    overlay_file = os.environ.get(overlay.OVERLAY_VAR)
    if overlay_file:  # a rehearsal: the committed file, pointed at this machine
        try:
            data = overlay.apply(data, str(data["name"]), overlay.read(Path(overlay_file)))
        except overlay.OverlayError as exc:
            raise ConfigError(str(exc)) from None
    try:
        environment = Environment.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    resolved = _resolve_paths(environment, repo_root)
    resolved._directory = path.parent
    return resolved


def _resolve_paths(environment: Environment, repo_root: Path) -> Environment:
    def local(path: Path | None) -> Path | None:
        return None if path is None else (repo_root / path).resolve()

    ssh = environment.ssh.model_copy(
        update={
            "known_hosts": local(environment.ssh.known_hosts),
            "identity_file": local(environment.ssh.identity_file),
        }
    )
    update: dict[str, object] = {"ssh": ssh}
    if environment.setup.authorized_key is not None:
        key_file = local(environment.setup.authorized_key)
        update["setup"] = environment.setup.model_copy(update={"authorized_key": key_file})
    if environment.reader is not None:
        update["reader"] = environment.reader.model_copy(
            update={
                "authorized_key": local(environment.reader.authorized_key),
                "identity_file": local(environment.reader.identity_file),
            }
        )
    if environment.signing is not None:
        key = local(environment.signing.public_key)
        update["signing"] = environment.signing.model_copy(update={"public_key": key})
    if environment.sandbox and not environment.deploy_root.is_absolute():
        # Sandbox hosts share this machine's file system: their roots live in the checkout.
        update["deploy_root"] = PurePosixPath(repo_root) / environment.deploy_root
    elif not environment.deploy_root.is_absolute():
        raise ConfigError(f"{environment.name}: deploy_root must be absolute on real hosts")
    for host in environment.hosts:
        if host.deploy_root is not None and not host.deploy_root.is_absolute():
            raise ConfigError(f"{environment.name}: {host.name}'s deploy_root must be absolute")
    return environment.model_copy(update=update)


class Redactor:
    """Replaces secret values with `***` in any text bound for a log, the audit or a report."""

    MASK = "***"

    MIN_LENGTH = 4

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret containing another is masked whole; short values would mask
        # ordinary words, and a secret that short is not one worth the name.
        self._secrets = sorted(
            {s for s in secrets if len(s) >= self.MIN_LENGTH}, key=len, reverse=True
        )

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, self.MASK)
        return text

    @overload
    def values(self, data: str) -> str: ...
    @overload
    def values(self, data: Mapping[str, Any]) -> dict[str, Any]: ...
    @overload
    def values(self, data: list[Any] | tuple[Any, ...]) -> list[Any]: ...
    @overload
    def values(self, data: object) -> object: ...

    def values(self, data: object) -> object:
        """`data` (JSON-like: dicts, lists, strings) with every string redacted; redacting the
        dumped JSON instead would miss secrets that JSON escapes (quotes, non-ASCII)."""
        if isinstance(data, str):
            return self(data)
        if isinstance(data, Mapping):
            return {key: self.values(value) for key, value in data.items()}
        if isinstance(data, list | tuple):
            return [self.values(value) for value in data]
        return data


def current_user() -> str:
    """Who deploys, for the lock and the audit: GitHub's actor in CI, else the login name."""
    return os.environ.get("GITHUB_ACTOR") or getpass.getuser()
