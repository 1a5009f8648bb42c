"""Release signatures: every manifest signed at build, verified by each host's own Podman.

Format: containers/image "simple signing" with a GPG key. Sigstore keys would be the modern
choice, but Debian 12's Podman 4.3 is built without them (`podman push
--sign-by-sigstore-private-key` answers "Debian-local change: sigstore disabled"), and a host
policy must verify what the build machine can make: GPG works the same in Podman here, on
GitHub's runners and on any Debian/Ubuntu host.

Where signatures live: containers/image reads them from a "lookaside" directory laid out as
`<repository path>@sha256=<hex>/signature-N`. Registries such as GHCR cannot serve that layout,
so a release's signatures travel in the registry as one small image of their own,
`<image>-signatures:sha256-<release digest hex>` (FROM scratch, the lookaside tree under
/signatures). A deploy copies that tree into the host's lookaside directory and then pulls;
the engine, following the host's policy.json, refuses an image without a valid signature by the
environment's key for the exact digest. The carrier needs no trust of its own: a signature is
only accepted when it verifies.

Keys: a sandbox key pair is made once under `.state/signing/` (by `nox -s sandbox -- up`, or
the first signed push); production and staging name committed public keys, and CD signs with
the private key from the `MLOPS_SIGNING_KEY` secret (ASCII-armoured). `python -m
imdb_deploy.supply_chain.signing new-key NAME --public FILE --private FILE` makes a pair.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ipaddress
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from imdb_deploy.engine.processes import run_tool

SIGNING_KEY_VAR = "MLOPS_SIGNING_KEY"  # ASCII-armoured private key (a CI secret)
SANDBOX_STATE = Path(".state/signing")
SANDBOX_KEY_NAME = "mlops-imdb sandbox release signing"
CARRIER_SUFFIX = "-signatures"
CARRIER_ROOT = "signatures"
# RSA rather than ed25519: Podman builds that verify with Go's openpgp (not gpgme) lack ed25519.
KEY_ALGORITHM = "rsa3072"


class SigningError(RuntimeError):
    """A key could not be made or read, or an image could not be signed."""


# ---- names -------------------------------------------------------------------------------------


def carrier_repository(image: str) -> str:
    """Where the signatures of `image`'s releases are published: `<image>-signatures`."""
    return image + CARRIER_SUFFIX


def carrier_reference(image: str, digest: str) -> str:
    """The carrier of the signatures of `image@digest`: `<image>-signatures:sha256-<hex>`."""
    algorithm, _, hex_digest = digest.partition(":")
    if algorithm != "sha256" or len(hex_digest) != 64:
        raise SigningError(f"{digest!r} is not a sha256 digest")
    return f"{carrier_repository(image)}:sha256-{hex_digest}"


def is_loopback(registry: str) -> bool:
    """127.0.0.0/8, [::1] or localhost, with or without a port (never a prefix match)."""
    host = urlsplit(f"//{registry}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def repository_path(image: str) -> str:
    """`registry/path/name` -> `path/name`: how the lookaside layout names a repository
    (Docker Hub's one-word names are `library/<name>`, as the engine normalises them)."""
    first, _, rest = image.partition("/")
    looks_like_registry = "." in first or ":" in first or first == "localhost"
    path = rest if rest and looks_like_registry else image
    hub = not (rest and looks_like_registry) or first in ("docker.io", "index.docker.io")
    return f"library/{path}" if hub and "/" not in path else path


def lookaside_entry(image: str, digest: str) -> PurePosixPath:
    """The directory holding the signatures of `image@digest` inside a lookaside tree."""
    return PurePosixPath(f"{repository_path(image)}@{digest.replace(':', '=', 1)}")


# ---- host configuration (pure: text in, text out) ----------------------------------------------


def merged_policy(existing: str, image: str, key_path: PurePosixPath) -> str:
    """The host's policy.json with `image` requiring a signature by the key at `key_path`.

    Everything else in the host's policy stays as it was (other repositories, the default), so
    setup never loosens or breaks what the host's owner configured for other images.
    """
    try:
        policy: dict[str, Any] = json.loads(existing) if existing.strip() else {}
    except ValueError as error:
        raise SigningError(f"the host's policy.json is not JSON: {error}") from None
    if not isinstance(policy, dict):
        raise SigningError("the host's policy.json is not a JSON object")
    policy.setdefault("default", [{"type": "insecureAcceptAnything"}])
    transports = policy.setdefault("transports", {})
    docker = transports.setdefault("docker", {}) if isinstance(transports, dict) else None
    if not isinstance(docker, dict):
        raise SigningError(
            'the host\'s policy.json: "transports" and its "docker" must be JSON objects'
        )
    # The carrier of the signatures needs no trust (a signature verifies or not), and must be
    # pullable on a host whose default is to reject.
    docker[carrier_repository(image)] = [{"type": "insecureAcceptAnything"}]
    docker[image] = [
        {
            "type": "signedBy",
            "keyType": "GPGKeys",
            "keyPath": str(key_path),
            # A digest pull matches the repository; a tag pull needs the signed tag.
            "signedIdentity": {"type": "matchRepoDigestOrExact"},
        }
    ]
    return json.dumps(policy, indent=2, sort_keys=True) + "\n"


def registries_d(image: str, lookaside: PurePosixPath) -> str:
    """A registries.d file: `image`'s signatures are read from the `lookaside` directory.
    (JSON is YAML; containers/image reads either.)"""
    return json.dumps({"docker": {image: {"lookaside": f"file://{lookaside}"}}}, indent=2) + "\n"


# ---- keys (GnuPG) ------------------------------------------------------------------------------


def _gpg(gnupghome: Path, *args: str, stdin: str | None = None) -> str:
    """gpg on `gnupghome` (Debian: apt-get install gnupg)."""
    return run_tool(
        ["gpg", "--batch", "--homedir", str(gnupghome), *args],
        error=SigningError,
        stdin=stdin,
        timeout=120,
    )


def _fingerprints(colons: str, record: str = "fpr") -> list[str]:
    """Primary-key fingerprints from `--with-colons` output."""
    found, after_key = [], False
    for line in colons.splitlines():
        fields = line.split(":")
        if fields[0] in ("pub", "sec"):
            after_key = True
        elif fields[0] == record and after_key and len(fields) > 9:
            found.append(fields[9])
            after_key = False
    return found


def public_key_fingerprint(armoured: str) -> str:
    """The fingerprint of an ASCII-armoured public key (without importing it anywhere)."""
    with tempfile.TemporaryDirectory(prefix="mlops-gpg-") as home:
        Path(home).chmod(0o700)
        found = _fingerprints(_gpg(Path(home), "--with-colons", "--show-keys", stdin=armoured))
    if len(found) != 1:
        raise SigningError(f"expected one public key, found {len(found)}")
    return found[0]


def dearmor(armoured: str) -> bytes:
    """The binary key of an ASCII-armoured OpenPGP block (RFC 4880 section 6.2), what gpgv's
    --keyring reads: the base64 body between the headers' blank line and the CRC line."""
    lines = [line.strip() for line in armoured.strip().splitlines()]
    if not lines or not lines[0].startswith("-----BEGIN PGP ") or "" not in lines:
        raise SigningError("not an ASCII-armoured OpenPGP block")
    body = []
    for line in lines[lines.index("") + 1 :]:
        if line.startswith(("=", "-----END PGP ")):
            break
        body.append(line)
    try:
        return base64.b64decode("".join(body), validate=True)
    except ValueError as error:
        raise SigningError(f"the armoured block's body is not base64: {error}") from None


@dataclass(frozen=True)
class Signer:
    """A GnuPG home holding one secret signing key."""

    gnupghome: Path
    fingerprint: str

    def public_key(self) -> str:
        return _gpg(self.gnupghome, "--armor", "--export", self.fingerprint)


def new_key(gnupghome: Path, name: str) -> Signer:
    """A new signing key (no passphrase: it lives in a CI secret or a mode-700 state dir)."""
    gnupghome.mkdir(parents=True, exist_ok=True)
    gnupghome.chmod(0o700)
    _gpg(gnupghome, "--passphrase", "", "--quick-gen-key", name, KEY_ALGORITHM, "sign", "never")
    return load_key(gnupghome)


def load_key(gnupghome: Path) -> Signer:
    found = _fingerprints(_gpg(gnupghome, "--with-colons", "--list-secret-keys"))
    if len(found) != 1:
        raise SigningError(f"{gnupghome}: expected one secret key, found {len(found)}")
    return Signer(gnupghome, found[0])


def import_key(gnupghome: Path, armoured_private: str) -> Signer:
    gnupghome.mkdir(parents=True, exist_ok=True)
    gnupghome.chmod(0o700)
    _gpg(gnupghome, "--import", stdin=armoured_private)
    return load_key(gnupghome)


def stop_agent(gnupghome: Path) -> None:
    """End the gpg-agent that gpg (and Podman's signing through it) started for `gnupghome`:
    it outlives them, a daemon per home, until told to stop."""
    run_tool(
        ["gpgconf", "--homedir", str(gnupghome), "--kill", "gpg-agent"],
        error=SigningError,
        timeout=30,
    )


def sandbox_signer(state: Path = SANDBOX_STATE) -> Signer:
    """The sandbox's key pair, made on first use; its public half at `<state>/sandbox.asc`."""
    gnupghome = state / "gnupg"
    signer = load_key(gnupghome) if gnupghome.is_dir() else new_key(gnupghome, SANDBOX_KEY_NAME)
    public = state / "sandbox.asc"
    text = signer.public_key()
    if not public.is_file() or public.read_text() != text:
        public.write_text(text)
    return signer


@contextlib.contextmanager
def release_signer(environ: Mapping[str, str], registry: str) -> Iterator[Signer]:
    """The key a release is signed with: `MLOPS_SIGNING_KEY` (CD's secret) in a throw-away
    GnuPG home; else, for a loopback registry only, the sandbox's key."""
    armoured = environ.get(SIGNING_KEY_VAR, "")
    if armoured.strip():
        with tempfile.TemporaryDirectory(prefix="mlops-signing-") as home:
            signer = import_key(Path(home) / "gnupg", armoured)
            try:
                yield signer
            finally:
                stop_agent(signer.gnupghome)
        return
    if not is_loopback(registry):
        raise SigningError(
            f"no signing key for {registry}: set {SIGNING_KEY_VAR} to the ASCII-armoured "
            "private key (CD: the SIGNING_KEY secret); releases are never pushed unsigned"
        )
    signer = sandbox_signer()
    try:
        yield signer
    finally:
        stop_agent(signer.gnupghome)


# ---- signing and publishing --------------------------------------------------------------------


def podman() -> str:
    found = shutil.which("podman")
    if found is None:
        raise SigningError("`podman` is not installed (Debian: apt-get install podman)")
    return found


def sign_argv(signer: Signer, reference: str, directory: Path, *, instances: bool) -> list[str]:
    """`podman image sign` of a pushed manifest (read from the registry) into `directory`;
    `instances`: every platform manifest of a list rather than the list itself."""
    argv = [podman(), "image", "sign", "--sign-by", signer.fingerprint]
    argv += ["--directory", str(directory)]
    return [*argv, *(["--all"] if instances else []), f"docker://{reference}"]


def sign(
    signer: Signer,
    image: str,
    digest: str,
    directory: Path,
    environ: Mapping[str, str] | None = None,
    *,
    is_list: bool = False,
) -> list[Path]:
    """Sign `image@digest` and, for a list, each platform's manifest in it as well; returns
    the signature files now under `directory` (a lookaside tree)."""
    directory.mkdir(parents=True, exist_ok=True)
    reference = f"{image}@{digest}"
    env = {**(os.environ if environ is None else environ), "GNUPGHOME": str(signer.gnupghome)}
    for instances in (False, True) if is_list else (False,):
        argv = sign_argv(signer, reference, directory, instances=instances)
        run_tool(argv, error=SigningError, env=env)
    return sorted(directory.rglob("signature-*"))


def carrier_files(directory: Path) -> dict[str, bytes]:
    """The carrier image's files: the lookaside tree under `directory`, below /signatures."""
    return {
        f"{CARRIER_ROOT}/{path.relative_to(directory)}": path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


# ---- CLI ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    top = argparse.ArgumentParser(prog="python -m imdb_deploy.supply_chain.signing",
                                  description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    commands = top.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new-key", help="a new key pair: public file, private file")
    new.add_argument("name", help="the key's user id, e.g. 'mlops-imdb production releases'")
    new.add_argument("--public", type=Path, required=True, help="commit this one")
    new.add_argument(
        "--private", type=Path, required=True, help="mode 600: the CI secret; then delete it"
    )
    show = commands.add_parser("fingerprint", help="the fingerprint of a public key file")
    show.add_argument("public", type=Path)
    args = top.parse_args(argv)
    try:
        if args.command == "fingerprint":
            print(public_key_fingerprint(args.public.read_text()))
            return 0
        with tempfile.TemporaryDirectory(prefix="mlops-signing-") as home:
            signer = new_key(Path(home) / "gnupg", args.name)
            private = _gpg(signer.gnupghome, "--armor", "--export-secret-keys", signer.fingerprint)
            args.private.touch(mode=0o600)
            args.private.chmod(0o600)
            args.private.write_text(private)
            args.public.write_text(signer.public_key())
        print(f"key {signer.fingerprint}: public {args.public}, private {args.private} (mode 600)")
        return 0
    except (OSError, SigningError) as error:
        print(f"signing: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
