"""Image trust on the hosts, the pure parts: where setup puts the engine's policy, key and
registries.d file, the command that fetches a release's signatures, and the environments'
[signing] settings (the shipped ones included). The sandbox deploy tests run it for real."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from imdb_deploy.bluegreen import commands, config
from imdb_deploy.bluegreen.config import ConfigError, Environment, load_environment
from imdb_deploy.bluegreen.layout import HostLayout
from imdb_deploy.supply_chain import signing
from tests.bluegreen.test_bluegreen_commands import make_env
from tests.bluegreen.test_bluegreen_config import REAL_ENVIRONMENTS, base_data, to_toml

DIGEST = "sha256:" + "5a" * 32
ARMOURED = "-----BEGIN PGP PUBLIC KEY BLOCK-----"


@pytest.fixture
def environment(tmp_path: Path) -> Environment:
    return make_env(tmp_path / "root")


@pytest.fixture
def layout(environment: Environment) -> HostLayout:
    return environment.layout(environment.hosts[0])


# ---- where the trust goes ----------------------------------------------------------------------


def test_trust_files_are_named_per_environment(environment: Environment) -> None:
    files = commands.TrustFiles(PurePosixPath("/etc/containers"))
    assert files.policy == PurePosixPath("/etc/containers/policy.json")
    assert files.registries_d(environment) == PurePosixPath(
        "/etc/containers/registries.d/mlops-imdb-test-env.yaml"
    )
    assert files.public_key(environment) == PurePosixPath(
        "/etc/containers/keys/mlops-imdb-test-env.asc"
    )


def test_a_home_relative_config_is_made_absolute_with_the_hosts_home() -> None:
    assert commands.trust_config_dir("~/.config/containers", "/home/deploy") == PurePosixPath(
        "/home/deploy/.config/containers"
    )
    assert commands.trust_config_dir("~/", "/home/deploy/") == PurePosixPath("/home/deploy")


@pytest.mark.parametrize("home", ["", "home/deploy", "~", "$HOME"])
def test_a_home_that_is_not_absolute_is_refused(home: str) -> None:
    with pytest.raises(ValueError, match="is not an absolute path"):
        commands.trust_config_dir("~/.config/containers", home)


@pytest.mark.parametrize("home", ["/home/deploy", "", "relative"])
def test_an_absolute_config_is_kept_whatever_the_home(home: str) -> None:
    assert commands.trust_config_dir("/etc/containers", home) == PurePosixPath("/etc/containers")


def test_setup_makes_the_config_and_signature_directories(layout: HostLayout) -> None:
    files = commands.TrustFiles(PurePosixPath("/home/my user/.config/containers"))
    command = commands.make_trust_directories(files, layout)
    assert shlex.split(command) == [
        "mkdir", "-p", "/home/my user/.config/containers/registries.d",
        "/home/my user/.config/containers/keys", str(layout.signatures_dir),
    ]  # fmt: skip


def test_a_deploy_fetches_the_releases_carrier_into_the_lookaside_directory(
    environment: Environment, layout: HostLayout
) -> None:
    command = commands.fetch_signatures(environment, DIGEST, layout)
    carrier = f"registry.example/mlops-imdb-api-signatures:sha256-{'5a' * 32}"
    entry = f"mlops-imdb-api@sha256={'5a' * 32}"  # the repository path, without the registry
    target = shlex.quote(str(layout.signatures_dir / entry))
    assert command.startswith(f"mkdir -p {target} && ")
    assert f"podman pull --quiet {carrier} " in command
    assert f"podman create {carrier} none" in command
    # Only this digest's directory: a carrier holding another release's overwrites nothing.
    assert f'podman cp "$c":/signatures/{entry}/. {target}/' in command
    assert f"podman rmi {carrier}" in command
    assert "echo signatures fetched" in command
    shlex.split(command)  # balanced quotes
    assert str(layout.signatures_dir).endswith("/h1/signatures")  # each sandbox host its own
    with pytest.raises(signing.SigningError, match="not a sha256 digest"):
        commands.fetch_signatures(environment, "sha256:short", layout)


@pytest.mark.parametrize(
    ("registry_says", "exit_code", "stdout"),
    [
        # No carrier for the digest: not this step's call (the pull that follows refuses).
        ("reading manifest sha256-5a: manifest unknown: manifest unknown", 0,
         "no signatures published\n"),
        ("repository name not known to registry: name unknown", 0, "no signatures published\n"),
        # The registry unreachable: a failure the deploy can retry, with the engine's words.
        ('dial tcp 127.0.0.1:5000: connect: connection refused', 1, ""),
        ("received unexpected HTTP status: 503 Service Unavailable", 1, ""),
    ],
)  # fmt: skip
def test_a_failed_signature_fetch_tells_unpublished_from_unreachable(
    environment: Environment, tmp_path: Path, registry_says: str, exit_code: int, stdout: str
) -> None:
    """The command run by a shell, with a stand-in `podman` whose pull fails as the registry
    made it fail."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    podman = bin_dir / "podman"
    podman.write_text(f"#!/bin/sh\necho {shlex.quote('Error: ' + registry_says)} >&2\nexit 125\n")
    podman.chmod(0o755)
    command = commands.fetch_signatures(
        environment, DIGEST, environment.layout(environment.hosts[0])
    )
    done = subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, check=False,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (exit_code, stdout)
    if exit_code:
        assert registry_says in done.stderr
        assert commands.transient_pull_error(done.stderr)


# ---- [signing] in an environment file ----------------------------------------------------------


def load(tmp_path: Path, data: dict[str, Any], name: str = "target") -> Environment:
    """Write `<tmp>/environments/<name>.toml` and load it against the checkout `<tmp>/checkout`."""
    directory = tmp_path / "environments"
    directory.mkdir(exist_ok=True)
    (tmp_path / "checkout").mkdir(exist_ok=True)
    (directory / f"{name}.toml").write_text(to_toml(data))
    return load_environment(name, directory=directory, repo_root=tmp_path / "checkout")


def with_signing(user: str = "root", **signing_table: str) -> dict[str, Any]:
    data = base_data()
    data["ssh"]["user"] = user
    data["signing"] = signing_table
    return data


def test_without_signing_any_image_is_pulled(tmp_path: Path) -> None:
    assert load(tmp_path, base_data()).signing is None


def test_the_public_key_resolves_against_the_checkout(tmp_path: Path) -> None:
    environment = load(tmp_path, with_signing(public_key="keys/release.asc"))
    assert environment.signing is not None
    assert environment.signing.public_key == (tmp_path / "checkout" / "keys/release.asc").resolve()
    assert environment.signing.containers_config == "/etc/containers"  # the default
    absolute = load(tmp_path, with_signing(public_key="/etc/keys/r.asc")).signing
    assert absolute is not None
    assert absolute.public_key == Path("/etc/keys/r.asc")


@pytest.mark.parametrize("where", ["~/.config/containers", "/etc/containers", "/opt/c"])
def test_the_containers_config_is_absolute_or_home_relative(tmp_path: Path, where: str) -> None:
    environment = load(tmp_path, with_signing(public_key="k.asc", containers_config=where))
    assert environment.signing is not None
    assert environment.signing.containers_config == where


@pytest.mark.parametrize(
    "where", [".config/containers", "etc/containers", "~user/containers", "~", "", "/etc\n/x"]
)
def test_a_relative_containers_config_is_refused(tmp_path: Path, where: str) -> None:
    with pytest.raises(ConfigError, match=r"signing\.containers_config"):
        load(tmp_path, with_signing(public_key="k.asc", containers_config=where))


def test_a_rootless_deploy_user_keeps_the_policy_where_its_engine_reads_it(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match=r'containers_config = "~/.config/containers"'):
        load(tmp_path, with_signing(user="deploy", public_key="k.asc"))
    rootless = load(
        tmp_path,
        with_signing(user="deploy", public_key="k.asc", containers_config="~/.config/containers"),
    )
    assert rootless.sudo == "sudo -n "


def test_a_signing_table_needs_a_key_and_nothing_unknown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"signing\.public_key"):
        load(tmp_path, with_signing(containers_config="/etc/containers"))
    with pytest.raises(ConfigError, match=r"signing\.key_id"):
        load(tmp_path, with_signing(public_key="k.asc", key_id="F" * 40))


# ---- the shipped environments ------------------------------------------------------------------


@pytest.mark.parametrize("name", REAL_ENVIRONMENTS)
def test_every_shipped_environment_requires_signed_images(name: str) -> None:
    environment = load_environment(name)
    assert environment.signing is not None, f"{name} pulls unsigned images"
    key = environment.signing.public_key
    assert key.is_absolute()
    if environment.sandbox:
        # The sandbox's key pair is made at `sandbox up`: named here, not required to exist.
        assert key == config.REPO_ROOT / ".state" / "signing" / "sandbox.asc"
        assert environment.signing.containers_config == "~/.config/containers"
    else:
        assert key.is_relative_to(config.ENVIRONMENTS_DIR)
        assert key.read_text().startswith(ARMOURED + "\n")
        # Their deploy user is not root: its rootless engine reads its own configuration.
        assert environment.signing.containers_config == "~/.config/containers"


def test_a_carrier_that_holds_other_releases_signatures_overwrites_none_of_them(
    environment: Environment, tmp_path: Path
) -> None:
    """The command run by a shell with a stand-in `podman` whose carrier holds this digest's
    signature and a forged one for another digest: only this digest's directory arrives, and
    the other release's signature on the host stays as it was."""
    image_fs = tmp_path / "carrier"
    mine = signing.lookaside_entry(environment.image, DIGEST)
    other = signing.lookaside_entry(environment.image, "sha256:" + "77" * 32)
    for entry, content in ((mine, "this release"), (other, "forged")):
        (image_fs / "signatures" / entry).mkdir(parents=True)
        (image_fs / "signatures" / entry / "signature-1").write_text(content)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "podman").write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        "  create) echo carrier-container ;;\n"
        f'  cp) cp -r "{image_fs}${{2#*:}}" "$3" ;;\n'
        "esac\n"
    )
    (bin_dir / "podman").chmod(0o755)
    layout = environment.layout(environment.hosts[0])
    kept = Path(str(layout.signatures_dir / other))
    kept.mkdir(parents=True)
    (kept / "signature-1").write_text("the other release's own")
    done = subprocess.run(
        ["sh", "-c", commands.fetch_signatures(environment, DIGEST, layout)],
        capture_output=True, text=True, check=False,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "signatures fetched\n"), done.stderr
    arrived = Path(str(layout.signatures_dir / mine)) / "signature-1"
    assert arrived.read_text() == "this release"
    assert (kept / "signature-1").read_text() == "the other release's own"
