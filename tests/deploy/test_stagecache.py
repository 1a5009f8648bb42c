"""The stage cache: a stage is reused only on exactly the inputs it passed on, with its outputs
still as it left them; anything else runs it again."""

from __future__ import annotations

import http.server
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from imdb_deploy import stagecache
from tests.support import serving


@pytest.fixture
def checkout(tmp_path: Path, require_tool: Callable[[str], str]) -> Path:
    require_tool("git")
    root = tmp_path / "repo"
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text("print('hello')\n")
    (root / ".gitignore").write_text("reports/\n.stamps/\nsummary.json\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    return root


def stage_of(root: Path, *outputs: Path, **inputs: str) -> stagecache.Stage:
    return stagecache.Stage(
        stamp=root / ".stamps" / "lint.json",
        inputs={"sources": stagecache.source_digest(root), **inputs},
        outputs=outputs,
    )


def test_enabled_only_when_set_to_one() -> None:
    assert stagecache.enabled({stagecache.ENABLE_VAR: "1"})
    assert not stagecache.enabled({stagecache.ENABLE_VAR: "0"})
    assert not stagecache.enabled({})


def test_a_stage_reused_by_default_runs_again_only_when_asked() -> None:
    assert stagecache.enabled({}, default=True)
    assert stagecache.enabled({stagecache.ENABLE_VAR: "1"}, default=True)
    assert not stagecache.enabled({stagecache.ENABLE_VAR: "0"}, default=True)


def test_a_passed_stage_is_reused_on_the_same_inputs(checkout: Path) -> None:
    stage = stage_of(checkout)
    assert stage.passed_before() is None
    stage.record_pass()
    passed_at = stage_of(checkout).passed_before()
    assert passed_at is not None
    assert passed_at.endswith("+00:00")
    record = json.loads(stage.stamp.read_text())
    assert record["key"] == stage.key
    assert record["inputs"] == dict(stage.inputs)


@pytest.mark.parametrize(
    "change",
    ["edit a tracked file", "add an untracked file", "delete a tracked file", "other input"],
)
def test_any_changed_input_runs_the_stage_again(checkout: Path, change: str) -> None:
    stage_of(checkout, tool="1").record_pass()
    extra = "1"
    if change == "edit a tracked file":
        (checkout / "src" / "app.py").write_text("print('changed')\n")  # not even staged
    elif change == "add an untracked file":
        (checkout / "src" / "new.py").write_text("")
    elif change == "delete a tracked file":
        (checkout / "src" / "app.py").unlink()
    else:
        extra = "2"
    assert stage_of(checkout, tool=extra).passed_before() is None


def test_ignored_files_are_not_inputs(checkout: Path) -> None:
    stage_of(checkout).record_pass()
    (checkout / "reports").mkdir()
    (checkout / "reports" / "anything.json").write_text("{}")
    assert stage_of(checkout).passed_before() is not None


def test_outputs_must_still_be_as_the_stage_left_them(checkout: Path) -> None:
    reports = checkout / "reports"
    reports.mkdir()
    (reports / "a.json").write_text("{}")
    summary = checkout / "summary.json"
    summary.write_text("[]")
    stage_of(checkout, reports, summary).record_pass()
    assert stage_of(checkout, reports, summary).passed_before() is not None

    (reports / "a.json").write_text('{"changed": true}')
    assert stage_of(checkout, reports, summary).passed_before() is None
    (reports / "a.json").write_text("{}")
    assert stage_of(checkout, reports, summary).passed_before() is not None

    (reports / "b.json").write_text("{}")  # a file it did not write
    assert stage_of(checkout, reports, summary).passed_before() is None
    (reports / "b.json").unlink()
    summary.unlink()
    assert stage_of(checkout, reports, summary).passed_before() is None


def test_a_stage_that_wrote_nothing_cannot_be_recorded(checkout: Path) -> None:
    with pytest.raises(stagecache.StageCacheError, match=r"did not write .*missing\.json"):
        stage_of(checkout, checkout / "missing.json").record_pass()


@pytest.mark.parametrize("stamp", ["", "not json", "[]", '{"key": 1}'])
def test_an_unreadable_stamp_runs_the_stage(checkout: Path, stamp: str) -> None:
    stage = stage_of(checkout)
    stage.stamp.parent.mkdir()
    stage.stamp.write_text(stamp)
    assert stage.passed_before() is None


def test_outside_a_git_checkout_the_sources_cannot_be_fingerprinted(tmp_path: Path) -> None:
    with pytest.raises(stagecache.StageCacheError, match="not a git checkout"):
        stagecache.source_digest(tmp_path)


def test_a_stage_may_read_only_some_of_the_sources(checkout: Path) -> None:
    (checkout / "docs").mkdir()
    (checkout / "docs" / "a.md").write_text("a\n")
    (checkout / "srcx.py").write_text("x = 1\n")  # a name that only starts like src/
    only_src = stagecache.source_digest(checkout, ["src"])
    everything = stagecache.source_digest(checkout)
    (checkout / "docs" / "a.md").write_text("b\n")
    (checkout / "srcx.py").write_text("x = 2\n")
    assert stagecache.source_digest(checkout, ["src"]) == only_src  # elsewhere: reused
    assert stagecache.source_digest(checkout) != everything
    (checkout / "src" / "app.py").write_text("print('changed')\n")
    assert stagecache.source_digest(checkout, ["src"]) != only_src
    assert stagecache.source_digest(checkout, [".gitignore"]) != only_src  # a single file


def test_directory_digest_follows_content(tmp_path: Path) -> None:
    assert stagecache.directory_digest(tmp_path / "absent") == "missing"
    (tmp_path / "a").write_text("1")
    first = stagecache.directory_digest(tmp_path)
    (tmp_path / "a").write_text("2")
    assert stagecache.directory_digest(tmp_path) != first


def test_registry_has_asks_the_registry_for_the_manifest() -> None:
    asked: list[tuple[str, str, str]] = []

    class Registry(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            asked.append((self.command, self.path, self.headers.get("Accept", "")))
            self.send_response(200 if self.path == "/v2/team/api/manifests/1.0" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with serving(Registry) as address:
        assert stagecache.registry_has(f"{address}/team/api:1.0")
        assert not stagecache.registry_has(f"{address}/team/api:2.0")
    assert asked[0][:2] == ("HEAD", "/v2/team/api/manifests/1.0")
    assert "application/vnd.oci.image.index.v1+json" in asked[0][2]
    # Nothing answers any more, and a reference without a tag is never there.
    assert not stagecache.registry_has(f"{address}/team/api:1.0", timeout=1)
    assert not stagecache.registry_has("no-tag")
