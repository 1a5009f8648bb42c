"""`python -m imdb_deploy.engine up|status|down` on a Podman engine with its own storage."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from imdb_deploy.engine import base_image, local, podman
from imdb_deploy.engine.__main__ import main


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.integration
def test_up_status_down(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    require_tool: Callable[[str], str],
) -> None:
    for tool in ("podman", "runc", "docker-registry"):
        require_tool(tool)
    if not (base_image.default_cache_dir() / base_image.RootfsRecipe().tarball_name()).exists():
        require_tool("debootstrap")
    state = tmp_path / "state"
    monkeypatch.setenv(local.STATE_DIR_VAR, str(state))
    monkeypatch.setenv(local.STORAGE_DIR_VAR, str(tmp_path / "storage"))
    address = f"127.0.0.1:{free_port()}"
    try:
        assert main(["up", "--podman", f"--registry={address}"]) == 0
        assert f"registry http://{address}" in capsys.readouterr().out
        recorded = json.loads((state / "engine.json").read_text())
        assert recorded["kind"] == "podman"
        assert recorded["managed"] is True

        # A second `up` reuses what runs.
        assert main(["up", "--podman", f"--registry={address}"]) == 0
        capsys.readouterr()
        assert main(["status"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["up"] is True
        assert status["base_image"] == base_image.DEFAULT_BASE_IMAGE
    finally:
        assert main(["down"]) == 0
    assert capsys.readouterr().out.strip() == "stopped: registry, podman service"
    assert main(["status"]) == 1
    assert json.loads(capsys.readouterr().out)["up"] is False
    assert main(["down"]) == 0
    assert "nothing was running" in capsys.readouterr().out


def test_unmount_releases_what_is_mounted_below_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit):
        main(["unmount"])
    assert "unmount needs a directory" in capsys.readouterr().err
    unmounted: list[Path] = []
    mounted = [tmp_path / "storage" / "overlay"]
    monkeypatch.setattr(podman, "mount_points_below", lambda directory: list(mounted))
    monkeypatch.setattr(podman, "unmount_below", unmounted.append)
    assert main(["unmount", str(tmp_path)]) == 0
    assert unmounted == [tmp_path]
    assert f"unmounted 1 mount point(s) below {tmp_path}" in capsys.readouterr().out
