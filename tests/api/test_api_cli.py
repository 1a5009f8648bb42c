"""`imdb-api`'s command line: flags over environment over defaults, help, usage errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from imdb_api import cli
from imdb_api.settings import Settings


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMDB_API_PORT", "9001")
    monkeypatch.setenv("IMDB_API_HOST", "0.0.0.0")  # noqa: S104
    monkeypatch.setenv("IMDB_API_ACCESS_LOG", "false")
    settings = cli.parse_settings(["--port", "9002", "--artifact", str(tmp_path)])
    assert settings.port == 9002
    assert settings.host == "0.0.0.0"  # noqa: S104
    assert settings.artifact == tmp_path
    assert settings.access_log is False
    assert cli.parse_settings(["--access-log", "--log-level", "debug"]).log_level == "debug"
    assert cli.parse_settings([]).max_batch == Settings().max_batch


def test_help_lists_every_setting() -> None:
    text = cli.build_parser().format_help()
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in text
        assert "IMDB_API_" + name.upper() in text


def test_invalid_settings_are_usage_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IMDB_API_MAX_BATCH", "0")
    assert cli.main([]) == cli.EXIT_USAGE
    assert "max_batch" in capsys.readouterr().err
    monkeypatch.delenv("IMDB_API_MAX_BATCH")
    assert cli.main(["--workers", "2", "--port", "0"]) == cli.EXIT_USAGE
    with pytest.raises(SystemExit) as usage:
        cli.main(["--log-level", "loud"])
    assert usage.value.code == 2


def test_main_serves_with_the_parsed_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Settings] = []

    def fake_serve(settings: Settings) -> int:
        seen.append(settings)
        return 0

    monkeypatch.setattr(cli, "serve", fake_serve)
    assert cli.main(["--port", "8123", "--workers", "3"]) == 0
    assert (seen[0].port, seen[0].workers) == (8123, 3)


def test_console_script_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "imdb_api.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "--graceful-shutdown-s" in done.stdout
    assert "exit codes" in done.stdout
