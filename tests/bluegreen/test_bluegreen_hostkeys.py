"""Pinning host keys, without a network: fingerprints as ssh-keygen prints them, known_hosts
read and appended, and the decision per host (the real sshd case is in tests/sandbox)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from imdb_deploy.bluegreen.config import SSH_KEY_VAR, load_environment
from imdb_deploy.bluegreen.hostkeys import (
    HostKey,
    HostKeyError,
    decide,
    known_hosts_name,
    pin,
    pinned_keys,
)
from imdb_deploy.bluegreen.runner import key_fingerprint


def new_key(tmp_path: Path, name: str) -> HostKey:
    """A fresh ed25519 key made by ssh-keygen, with the fingerprint it prints."""
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    kind, blob = path.with_suffix(".pub").read_text().split()[:2]
    return HostKey(kind, blob)


def keygen_fingerprint(tmp_path: Path, name: str) -> str:
    listing = subprocess.run(
        ["ssh-keygen", "-lf", str(tmp_path / f"{name}.pub")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return listing.split()[1]


def test_fingerprints_are_what_ssh_keygen_prints(tmp_path: Path) -> None:
    key = new_key(tmp_path, "a")
    assert key.fingerprint == keygen_fingerprint(tmp_path, "a")
    assert key.fingerprint.startswith("SHA256:")


def test_known_hosts_names_a_non_default_port_in_brackets() -> None:
    assert known_hosts_name("10.0.0.5", 22) == "10.0.0.5"
    assert known_hosts_name("10.0.0.5", 2222) == "[10.0.0.5]:2222"


def test_pin_appends_and_pinned_keys_reads_back(tmp_path: Path) -> None:
    a, b = new_key(tmp_path, "a"), new_key(tmp_path, "b")
    known_hosts = tmp_path / "pins" / "known_hosts"
    pin(known_hosts, "[h1]:2222", [a])
    assert known_hosts.stat().st_mode & 0o777 == 0o600  # a new file: the operator's only
    known_hosts.write_text("# comment\n" + known_hosts.read_text().rstrip("\n"))  # no final \n
    pin(known_hosts, "h2", [b])
    assert pinned_keys(known_hosts, "[h1]:2222") == [a]
    assert pinned_keys(known_hosts, "h2") == [b]
    assert pinned_keys(known_hosts, "h3") == []
    assert pinned_keys(tmp_path / "missing", "h1") == []
    assert known_hosts.read_text().startswith("# comment\n")


def test_a_pin_with_several_names_is_found_by_each(tmp_path: Path) -> None:
    key = new_key(tmp_path, "a")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"h1,10.0.0.1 {key.kind} {key.base64}\n")
    assert pinned_keys(known_hosts, "10.0.0.1") == [key]


def decision(
    offered: list[HostKey],
    pinned: list[HostKey],
    expected: Sequence[str] = (),
    confirm: Callable[[str], bool] | None = None,
) -> list[HostKey]:
    return decide(
        "h1", "[h1]:22", offered, pinned,
        expected=expected, confirm=confirm, known_hosts=Path("/k"),
    )  # fmt: skip


def test_a_pinned_host_offering_its_key_needs_nothing(tmp_path: Path) -> None:
    a = new_key(tmp_path, "a")
    assert decision([a], [a]) == []


def test_a_changed_key_is_refused_whatever_the_operator_says(tmp_path: Path) -> None:
    a, b = new_key(tmp_path, "a"), new_key(tmp_path, "b")
    with pytest.raises(HostKeyError, match="its host key CHANGED") as error:
        decision([b], [a], expected=[b.fingerprint], confirm=lambda prompt: True)
    text = str(error.value)
    assert f"Pinned: ssh-ed25519 {a.fingerprint}" in text
    assert f"offered now: ssh-ed25519 {b.fingerprint}" in text
    assert "remove its old line from /k" in text


def test_an_expected_fingerprint_pins_only_the_keys_it_names(tmp_path: Path) -> None:
    a, b = new_key(tmp_path, "a"), new_key(tmp_path, "b")
    assert decision([a, b], [], expected=[b.fingerprint]) == [b]
    with pytest.raises(HostKeyError, match="not the expected SHA256:nope"):
        decision([a], [], expected=["SHA256:nope"], confirm=lambda prompt: True)


def test_without_a_fingerprint_the_operator_confirms_what_was_shown(tmp_path: Path) -> None:
    a = new_key(tmp_path, "a")
    prompts: list[str] = []

    def yes(prompt: str) -> bool:
        prompts.append(prompt)
        return True

    assert decision([a], [], confirm=yes) == [a]
    assert a.fingerprint in prompts[0]
    with pytest.raises(HostKeyError, match="not pinned"):
        decision([a], [], confirm=lambda prompt: False)
    with pytest.raises(HostKeyError, match="pass --fingerprint"):
        decision([a], [])  # no terminal: no confirmation


def test_the_audits_key_fingerprint_is_ssh_keygens(
    tmp_path: Path, require_tool: Callable[[str], str]
) -> None:
    keygen = require_tool("ssh-keygen")
    key = tmp_path / "id_ed25519"
    subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    listed = subprocess.run(
        [keygen, "-l", "-f", str(key)], capture_output=True, text=True, check=True
    )
    expected = listed.stdout.split()[1]
    base = load_environment("sandbox-staging")
    with_file = base.model_copy(update={"ssh": base.ssh.model_copy(update={"identity_file": key})})
    assert key_fingerprint(with_file, {}) == expected
    no_file = base.model_copy(update={"ssh": base.ssh.model_copy(update={"identity_file": None})})
    assert key_fingerprint(no_file, {SSH_KEY_VAR: key.read_text()}) == expected
    assert key_fingerprint(no_file, {}) == "agent"
    assert key_fingerprint(no_file, {SSH_KEY_VAR: "not a key"}) == "unreadable"
