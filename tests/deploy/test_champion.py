"""The champion's pure parts and the gated training's control flow, without hosts or engines:
archives taken apart safely, the reference chosen, the refusal announced. Fetching a live
release's model for real runs in tests/sandbox/test_sandbox_promote.py."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from imdb_deploy import champion, notify
from imdb_deploy.bluegreen.config import load_environment
from imdb_deploy.images import engine_client


def archive(*members: tuple[str, bytes | None], kind: bytes = tarfile.REGTYPE) -> bytes:
    """A tar like the engine's `get_archive`: (name, content) files, None for a directory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.type = kind
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def test_safe_extract_takes_the_directory_apart(tmp_path: Path) -> None:
    data = archive(("model", None), ("model/manifest.json", b"{}"), ("model/sub/x.txt", b"x"))
    champion.safe_extract(data, tmp_path / "out", "model")
    assert (tmp_path / "out" / "manifest.json").read_bytes() == b"{}"
    assert (tmp_path / "out" / "sub" / "x.txt").read_bytes() == b"x"


@pytest.mark.parametrize(
    ("name", "kind", "message"),
    [
        ("../escape", tarfile.REGTYPE, "unexpected path"),
        ("/etc/passwd", tarfile.REGTYPE, "unexpected path"),
        ("other/file", tarfile.REGTYPE, "unexpected path"),
        ("model/link", tarfile.SYMTYPE, "not a regular file"),
        ("model/fifo", tarfile.FIFOTYPE, "not a regular file"),
    ],
)
def test_safe_extract_refuses_what_an_artifact_never_holds(
    tmp_path: Path, name: str, kind: bytes, message: str
) -> None:
    with pytest.raises(champion.ChampionError, match=message):
        champion.safe_extract(archive((name, b"x"), kind=kind), tmp_path / "out", "model")
    assert not (tmp_path / "escape").exists()


def test_single_file_is_exactly_one_file() -> None:
    assert champion.single_file(archive(("release.json", b"{}")), "release.json") == b"{}"
    for bad in (archive(("release.json", None)), archive(("a", b""), ("release.json", b""))):
        with pytest.raises(champion.ChampionError, match="expected one file"):
            champion.single_file(bad, "release.json")


@pytest.fixture
def trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in `imdb-trainer` that records its arguments and exits with $TRAINER_EXIT."""
    script = tmp_path / "bin" / "imdb-trainer"
    script.parent.mkdir()
    script.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "argv"}\nexit "${{TRAINER_EXIT:-0}}"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin:/bin")
    return tmp_path / "argv"


def no_champion(name: str, out: Path) -> tuple[object, None]:
    return load_environment(name), None


def test_the_last_local_model_is_the_champion_when_none_is_live(
    trainer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(champion, "fetch_champion", no_champion)
    local = tmp_path / "model"
    local.mkdir()
    (local / "manifest.json").write_text("{}")
    code = champion.gated_training("sandbox-production", tmp_path / "c", local, ["--data=D"])
    assert code == 0
    assert trainer.read_text().split() == ["train", "--data=D", f"--reference={local}"]
    # Without one either, the challenger only has to beat the baselines.
    champion.gated_training("sandbox-production", tmp_path / "c", tmp_path / "none", ["--x"])
    assert trainer.read_text().split() == ["train", "--x"]


def test_the_live_model_is_the_champion(
    trainer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        champion, "fetch_champion", lambda name, out: (load_environment(name), "r1")
    )
    champion.gated_training("production", tmp_path / "c", tmp_path / "model", [])
    assert trainer.read_text().split() == ["train", f"--reference={tmp_path / 'c'}"]


def test_a_losing_challenger_releases_nothing_and_says_why(
    trainer: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(
        champion, "fetch_champion", lambda name, out: (load_environment(name), "r1")
    )
    sent: list[notify.DeployEvent] = []

    def record(event: notify.DeployEvent, settings: object) -> list[object]:
        sent.append(event)
        return []

    monkeypatch.setattr(notify, "notify", record)
    monkeypatch.setenv("TRAINER_EXIT", "4")
    assert champion.gated_training("production", tmp_path / "c", None, []) == 4
    assert "release REFUSED" in capsys.readouterr().err
    (event,) = sent
    assert (event.environment, event.action, event.result) == ("production", "release", "refused")
    assert "worse than the champion (r1)" in event.detail
    assert notify.summary(event).startswith("new release for production: refused")
    # Any other failure is the trainer's own (data, usage): passed on, not announced as a gate.
    sent.clear()
    monkeypatch.setenv("TRAINER_EXIT", "3")
    assert champion.gated_training("production", tmp_path / "c", None, []) == 3
    assert not sent


def test_fetch_champion_of_a_sandbox_that_is_not_up_is_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def unreachable(*args: object) -> None:
        raise champion.HostsUnreachableError("connection refused")

    monkeypatch.setattr(champion, "fetch", unreachable)
    (tmp_path / "c").mkdir()
    environment, version = champion.fetch_champion("sandbox-production", tmp_path / "c")
    assert (environment.name, version) == ("sandbox-production", None)
    assert not (tmp_path / "c").exists()  # no stale champion stays behind
    assert "sandbox-production is not up" in capsys.readouterr().out
    # A real environment that cannot be read is an error, never "no champion".
    with pytest.raises(champion.HostsUnreachableError):
        champion.fetch_champion("production", tmp_path / "c")
    assert champion.main(["fetch", "production", f"--out={tmp_path / 'c'}"]) == 1


def test_no_engine_is_needed_when_nothing_is_live(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def no_engine() -> None:
        raise engine_client.EngineNotFoundError("no container engine")

    monkeypatch.setattr(champion, "live_release", lambda environment: None)
    monkeypatch.setattr(engine_client, "connect", no_engine)
    assert champion.fetch(load_environment("production"), tmp_path / "c") is None
    # With a release live, the engine is needed, and its absence is said.
    monkeypatch.setattr(champion, "live_release", lambda environment: ("r1", "sha256:1"))
    with pytest.raises(engine_client.EngineNotFoundError):
        champion.fetch(load_environment("production"), tmp_path / "c")
    assert champion.main(["fetch", "production", f"--out={tmp_path / 'c'}"]) == 1
