"""A rehearsal's overlay: the committed environment files, pointed at this machine and nothing
more. What the files say about users, keys and approvals stays; every address is loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from imdb_deploy.bluegreen import overlay
from imdb_deploy.bluegreen.config import ConfigError, load_environment

PRODUCTION = """\
[environments.production]
image = "127.0.0.1:5443/mlops-imdb/mlops-imdb-api"
ssh = { port = 2222, known_hosts = "/tmp/rehearsal/known_hosts" }
signing = { public_key = "/tmp/rehearsal/release.asc" }
reader = { identity_file = "/tmp/rehearsal/read_key" }
[[environments.production.hosts]]
name = "production-1"
address = "127.0.0.41"
[[environments.production.hosts]]
name = "production-2"
address = "127.0.0.42"
"""


@pytest.fixture
def overlaid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "overlay.toml"
    monkeypatch.setenv(overlay.OVERLAY_VAR, str(path))
    return path


def test_the_committed_file_is_pointed_here_and_keeps_everything_else(overlaid: Path) -> None:
    overlaid.write_text("")
    committed = load_environment("production")
    overlaid.write_text(PRODUCTION)
    production = load_environment("production")
    assert [host.address for host in production.hosts] == ["127.0.0.41", "127.0.0.42"]
    assert production.image == "127.0.0.1:5443/mlops-imdb/mlops-imdb-api"
    ssh = production.ssh
    assert (ssh.port, str(ssh.known_hosts)) == (2222, "/tmp/rehearsal/known_hosts")
    assert production.signing is not None
    assert str(production.signing.public_key) == "/tmp/rehearsal/release.asc"
    assert production.reader is not None
    assert committed.reader is not None
    assert str(production.reader.identity_file) == "/tmp/rehearsal/read_key"
    assert production.reader.user == committed.reader.user
    # What the file says about users, setup, approval, nginx and the app is what runs.
    for same in ("deploy_root", "nginx", "app", "readiness", "drain", "setup", "approval"):
        assert getattr(production, same) == getattr(committed, same), same
    assert (ssh.user, production.setup.user, production.promote_from) == (
        "deploy", "root", "staging",
    )  # fmt: skip
    # An environment the overlay does not name is its file as committed.
    assert load_environment("staging").hosts[0].address == "staging-1.imdb.internal"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[environments.staging]\nssh = { user = "root" }\n', "ssh.user may not be overlaid"),
        ('[environments.staging]\nreader = { user = "x" }\n', "reader.user may not be"),
        ("[environments.staging]\napproval = { required = false }\n", "approval may not be"),
        ('[environments.staging]\npromote_from = "x"\n', "promote_from may not be overlaid"),
        ('[environments.staging]\nimage = "127.0.0.1:5443/other/api"\n', "not the file's"),
        ('[environments.staging]\nimage = "ghcr.io/mlops-imdb/mlops-imdb-api"\n', "loopback"),
        (
            '[environments.staging]\nhosts = [{ name = "staging-1", address = "10.0.0.1" }]\n',
            "'10.0.0.1' is not on loopback",
        ),
        (
            '[environments.staging]\nhosts = [{ name = "staging-9", address = "127.0.0.1" }]\n',
            "are not the file's",
        ),
        (
            '[environments.staging]\nhosts = [{ name = "staging-1", address = "127.0.0.1", '
            'deploy_root = "/x" }]\n',
            "hosts.deploy_root may not be overlaid",
        ),
        ("[environments.staging]\nhosts = 3\n", "hosts is a list of tables"),
        ("[other]\nx = 1\n", "only \\[environments.NAME\\] tables"),
        ("[environments.staging\n", "overlay .*overlay.toml"),
    ],
)
def test_an_overlay_may_change_only_where_things_are_here(
    overlaid: Path, text: str, message: str
) -> None:
    overlaid.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_environment("staging")


def test_an_overlay_that_names_a_missing_file_is_an_error(overlaid: Path) -> None:
    with pytest.raises(ConfigError, match="overlay"):
        load_environment("staging")


def test_apply_leaves_the_committed_table_alone() -> None:
    data = {"image": "ghcr.io/o/api", "ssh": {"user": "deploy"}, "hosts": []}
    merged = overlay.apply(data, "staging", {"staging": {"ssh": {"port": 2222}}})
    assert merged["ssh"] == {"user": "deploy", "port": 2222}
    assert data["ssh"] == {"user": "deploy"}
    assert overlay.apply(data, "production", {"staging": {}}) is data
