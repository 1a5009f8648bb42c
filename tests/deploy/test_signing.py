"""Release signing, the pure parts: names of carriers and lookaside entries, the host's policy.json
and registries.d text, GnuPG's colon output, the carrier's files and the Podman command lines.
Nothing here runs gpg or Podman (the sandbox and image tests do)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from imdb_deploy.supply_chain import signing
from imdb_deploy.supply_chain.signing import SigningError

HEX = "ab" * 32
DIGEST = f"sha256:{HEX}"
IMAGE = "ghcr.io/acme/mlops-imdb-api"
KEY = PurePosixPath("/etc/containers/keys/mlops-imdb-production.asc")
PRIMARY = "0123456789ABCDEF0123456789ABCDEF01234567"
SUBKEY = "AAAABBBBCCCCDDDDEEEEFFFF0000111122223333"


# ---- names -------------------------------------------------------------------------------------


def test_the_carrier_is_a_repository_beside_the_image_tagged_by_the_digest() -> None:
    assert signing.carrier_repository(IMAGE) == f"{IMAGE}-signatures"
    assert signing.carrier_reference(IMAGE, DIGEST) == f"{IMAGE}-signatures:sha256-{HEX}"
    loopback = "127.0.0.1:5000/mlops-imdb-api"
    assert signing.carrier_reference(loopback, DIGEST) == f"{loopback}-signatures:sha256-{HEX}"


@pytest.mark.parametrize(
    "digest", [f"sha512:{HEX}", "sha256:abc", HEX, "", f"sha256:{HEX}0", f"SHA256:{HEX}"]
)
def test_a_carrier_is_named_only_for_a_sha256_digest(digest: str) -> None:
    with pytest.raises(SigningError, match="not a sha256 digest"):
        signing.carrier_reference(IMAGE, digest)


@pytest.mark.parametrize(
    ("image", "path"),
    [
        ("127.0.0.1:5000/tests/mlops-imdb-api", "tests/mlops-imdb-api"),  # registry with a port
        ("localhost/mlops-imdb-api", "mlops-imdb-api"),
        ("localhost:5000/mlops-imdb-api", "mlops-imdb-api"),
        ("ghcr.io/x/y", "x/y"),
        ("someuser/mlops-imdb-api", "someuser/mlops-imdb-api"),  # Docker Hub: no registry part
        ("nginx", "library/nginx"),  # as the engine normalises Docker Hub's one-word names
        ("docker.io/nginx", "library/nginx"),
        ("docker.io/someuser/x", "someuser/x"),
    ],
)
def test_repository_path_drops_the_registry(image: str, path: str) -> None:
    assert signing.repository_path(image) == path


def test_a_lookaside_entry_is_the_repository_path_at_the_digest() -> None:
    entry = signing.lookaside_entry(IMAGE, DIGEST)
    assert entry == PurePosixPath(f"acme/mlops-imdb-api@sha256={HEX}")
    assert signing.lookaside_entry("127.0.0.1:5000/a/b", DIGEST).name == f"b@sha256={HEX}"


@pytest.mark.parametrize(
    ("registry", "loopback"),
    [
        ("127.0.0.1:5000", True),
        ("127.0.0.2", True),
        ("localhost:5000", True),
        ("localhost", True),
        ("[::1]:5000", True),
        ("ghcr.io", False),
        ("registry.example:5000", False),
        ("10.0.0.1:5000", False),
        # Never a prefix match: these are remote names.
        ("localhost.example.com", False),
        ("127.attacker.example", False),
    ],
)
def test_is_loopback(registry: str, loopback: bool) -> None:
    assert signing.is_loopback(registry) is loopback


# ---- policy.json and registries.d --------------------------------------------------------------


def requirement(key: PurePosixPath = KEY) -> list[dict[str, object]]:
    return [
        {
            "type": "signedBy",
            "keyType": "GPGKeys",
            "keyPath": str(key),
            "signedIdentity": {"type": "matchRepoDigestOrExact"},
        }
    ]


def test_the_policy_keeps_what_the_host_had_and_requires_the_key_for_the_image() -> None:
    existing: dict[str, Any] = {
        "default": [{"type": "reject"}],
        "transports": {
            "docker": {"docker.io/library/debian": [{"type": "insecureAcceptAnything"}]},
            "docker-daemon": {"": [{"type": "insecureAcceptAnything"}]},
        },
    }
    policy = json.loads(signing.merged_policy(json.dumps(existing), IMAGE, KEY))
    assert policy["default"] == [{"type": "reject"}]  # never loosened
    assert policy["transports"]["docker-daemon"] == existing["transports"]["docker-daemon"]
    docker = policy["transports"]["docker"]
    assert docker["docker.io/library/debian"] == [{"type": "insecureAcceptAnything"}]
    assert docker[IMAGE] == requirement()


def test_a_host_without_a_policy_gets_the_usual_default_and_the_requirement() -> None:
    for empty in ("", "  \n"):
        policy = json.loads(signing.merged_policy(empty, IMAGE, KEY))
        assert policy == {
            "default": [{"type": "insecureAcceptAnything"}],
            "transports": {
                "docker": {
                    IMAGE: requirement(),
                    # The signatures' carrier is pullable even where the default rejects.
                    f"{IMAGE}-signatures": [{"type": "insecureAcceptAnything"}],
                }
            },
        }


@pytest.mark.parametrize(
    "existing", ['{"transports": []}', '{"transports": {"docker": null}}', '{"transports": 3}']
)
def test_a_policy_with_malformed_transports_is_refused(existing: str) -> None:
    with pytest.raises(SigningError, match="must be JSON objects"):
        signing.merged_policy(existing, IMAGE, KEY)


def test_merging_twice_is_merging_once_and_a_new_key_replaces_the_old() -> None:
    once = signing.merged_policy('{"default": [{"type": "reject"}]}', IMAGE, KEY)
    assert signing.merged_policy(once, IMAGE, KEY) == once
    assert once.endswith("}\n")
    other = PurePosixPath("/home/u/.config/containers/keys/other.asc")
    replaced = json.loads(signing.merged_policy(once, IMAGE, other))
    assert replaced["transports"]["docker"][IMAGE] == requirement(other)


@pytest.mark.parametrize(
    ("existing", "reason"),
    [
        ("{not json", "not JSON"),
        ('{"default": [', "not JSON"),
        ("[]", "not a JSON object"),
        ('"text"', "not a JSON object"),
        ("3", "not a JSON object"),
    ],
)
def test_a_policy_that_is_not_a_json_object_is_refused(existing: str, reason: str) -> None:
    with pytest.raises(SigningError, match=reason):
        signing.merged_policy(existing, IMAGE, KEY)


def test_registries_d_points_the_image_at_the_lookaside_directory() -> None:
    lookaside = PurePosixPath("/srv/mlops-imdb/production/signatures")
    text = signing.registries_d(IMAGE, lookaside)
    assert json.loads(text) == {
        "docker": {IMAGE: {"lookaside": "file:///srv/mlops-imdb/production/signatures"}}
    }
    assert text.endswith("\n")


# ---- keys: GnuPG's colon output ----------------------------------------------------------------

SHOW_KEYS = f"""\
pub:-:3072:1:89ABCDEF01234567:1700000000:::-:::scSC::::::23::0:
fpr:::::::::{PRIMARY}:
uid:-::::1700000000::5F1E0C2D3B4A59687766554433221100FFEEDDCC::mlops-imdb releases::::::::::0:
sub:-:3072:1:0000111122223333:1700000000::::::s::::::23:
fpr:::::::::{SUBKEY}:
"""
SECRET_KEYS = SHOW_KEYS.replace("pub:", "sec:").replace("sub:", "ssb:")


def test_only_the_primary_keys_fingerprint_counts() -> None:
    assert signing._fingerprints(SHOW_KEYS) == [PRIMARY]
    assert signing._fingerprints(SECRET_KEYS) == [PRIMARY]


def test_each_primary_key_is_one_fingerprint() -> None:
    second = "FEDCBA9876543210FEDCBA9876543210FEDCBA98"
    two = SHOW_KEYS + SHOW_KEYS.replace(PRIMARY, second).replace(SUBKEY, "1" * 40)
    assert signing._fingerprints(two) == [PRIMARY, second]
    assert signing._fingerprints("") == []
    assert signing._fingerprints("tru::1:1700000000:0:3:1:5\n") == []
    # A fingerprint record before any key, or a short one, is no key's.
    assert signing._fingerprints(f"fpr:::::::::{PRIMARY}:\npub:-:3072\nfpr::short\n") == []


# ---- the carrier's files and the signing command -----------------------------------------------


def test_the_carrier_holds_the_lookaside_tree_under_signatures(tmp_path: Path) -> None:
    entry = tmp_path / str(signing.lookaside_entry(IMAGE, DIGEST))
    entry.mkdir(parents=True)
    (entry / "signature-1").write_bytes(b"\x89one")
    (entry / "signature-2").write_bytes(b"two")
    other = tmp_path / "acme" / f"mlops-imdb-api@sha256={'cd' * 32}"
    other.mkdir()
    (other / "signature-1").write_bytes(b"three")
    assert signing.carrier_files(tmp_path) == {
        f"signatures/acme/mlops-imdb-api@sha256={HEX}/signature-1": b"\x89one",
        f"signatures/acme/mlops-imdb-api@sha256={HEX}/signature-2": b"two",
        f"signatures/acme/mlops-imdb-api@sha256={'cd' * 32}/signature-1": b"three",
    }
    assert signing.carrier_files(tmp_path / "acme" / "nothing-here") == {}


def test_sign_argv_signs_the_pushed_manifest_or_each_platforms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(signing, "podman", lambda: "/usr/bin/podman")
    signer = signing.Signer(tmp_path / "gnupg", PRIMARY)
    reference = f"{IMAGE}@{DIGEST}"
    head = ["/usr/bin/podman", "image", "sign", "--sign-by", PRIMARY]
    head += ["--directory", str(tmp_path / "sigs")]
    assert signing.sign_argv(signer, reference, tmp_path / "sigs", instances=False) == [
        *head,
        f"docker://{reference}",
    ]
    assert signing.sign_argv(signer, reference, tmp_path / "sigs", instances=True) == [
        *head,
        "--all",
        f"docker://{reference}",
    ]


def test_no_podman_is_a_signing_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SigningError, match="podman"):
        signing.podman()


# ---- the release key ---------------------------------------------------------------------------


@pytest.mark.parametrize("environ", [{}, {signing.SIGNING_KEY_VAR: " \n"}])
@pytest.mark.parametrize("registry", ["ghcr.io/x", "registry.example:5000"])
def test_a_release_for_a_real_registry_needs_the_signing_key(
    environ: dict[str, str], registry: str
) -> None:
    with (
        pytest.raises(SigningError, match=signing.SIGNING_KEY_VAR),
        signing.release_signer(environ, registry),
    ):
        pytest.fail("a release was about to be signed without a key")


# ---- the CLI -----------------------------------------------------------------------------------


def test_the_fingerprint_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "release.asc"
    key.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n...\n")
    read: list[str] = []

    def fingerprint(armoured: str) -> str:
        read.append(armoured)
        return PRIMARY

    monkeypatch.setattr(signing, "public_key_fingerprint", fingerprint)
    assert signing.main(["fingerprint", str(key)]) == 0
    assert capsys.readouterr().out == f"{PRIMARY}\n"
    assert read == [key.read_text()]

    def refused(armoured: str) -> str:
        raise SigningError("expected one public key, found 2")

    monkeypatch.setattr(signing, "public_key_fingerprint", refused)
    assert signing.main(["fingerprint", str(key)]) == 2
    assert capsys.readouterr().err == "signing: expected one public key, found 2\n"
    assert signing.main(["fingerprint", str(tmp_path / "missing.asc")]) == 2
    assert "missing.asc" in capsys.readouterr().err


def test_dearmor_gives_the_binary_key_gpg_would() -> None:
    armoured = (Path(__file__).parents[2] / "deploy/environments/release-signing.asc").read_text()
    binary = signing.dearmor(armoured)
    # An OpenPGP public key packet starts the keyring (new or old packet format, tag 6).
    assert binary[0] in (0x99, 0xC6)
    gpg = shutil.which("gpg")
    assert gpg is not None, "gnupg (deploy/system-packages.sh) is needed"
    expected = subprocess.run(  # the same bytes as `gpg --dearmor`
        [gpg, "--dearmor"], input=armoured.encode(), capture_output=True, check=True
    ).stdout
    assert binary == expected
    with pytest.raises(SigningError, match="not an ASCII-armoured"):
        signing.dearmor("ssh-ed25519 AAAA")
    broken = armoured.replace("\n\n", "\n\n!!!", 1)
    with pytest.raises(SigningError, match="not base64"):
        signing.dearmor(broken)


def test_no_gpg_agent_outlives_its_key(tmp_path: Path, require_tool: Callable[[str], str]) -> None:
    """gpg starts an agent per home that stays after it: stop_agent ends it (by its home)."""
    require_tool("gpgconf")
    signer = signing.new_key(tmp_path / "gnupg", "agent test")
    socket = subprocess.run(
        ["gpgconf", "--homedir", str(signer.gnupghome), "--list-dirs", "agent-socket"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    signing.stop_agent(signer.gnupghome)
    deadline = time.monotonic() + 5
    while Path(socket).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(socket).exists()
