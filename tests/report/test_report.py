"""The deployment report: timelines in, Markdown, HTML (with plots) and JSON out.

The fixture timelines have the shape `imdb_deploy.bluegreen.cli.save_outcome` writes, with the
post-deploy benchmark: an ok deploy whose benchmark passed, a failed deploy (a failed step and a
hostile detail), a rollback, and a deploy rolled back for a latency regression. The full report
is rendered once per module: the plots are the slow part.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from imdb_deploy.report import cli, plots, render, timeline
from imdb_deploy.report.timeline import Deploy, TimelineError

GENERATED = datetime(2026, 11, 26, 16, 0, 0, tzinfo=timezone.utc)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HOSTILE = '<script>alert("x")</script> | `code` *bold* & more'


def _benchmark_host(
    p50: float, p95: float, p99: float, *, baseline: float | None, verdict: str, reason: str
) -> dict[str, Any]:
    return {
        "requests": 1200, "errors": 0, "seconds": 5.0, "error_rate": 0.0, "rps": 240.0,
        "p50_ms": p50, "p95_ms": p95, "p99_ms": p99,
        "baseline": None if baseline is None else {
            "version": "v0", "requests": 1100, "errors": 0, "seconds": 5.0,
            "p50_ms": 3.0, "p95_ms": baseline, "p99_ms": 11.0,
        },
        "verdict": verdict, "reason": reason,
    }  # fmt: skip


def _event(at: float, host: str, step: str, detail: str = "", ok: bool = True) -> dict[str, Any]:
    return {"at": at, "host": host, "step": step, "detail": detail, "ok": ok}


def ok_deploy() -> dict[str, Any]:
    """Deploy v0 -> v1 to staging; the benchmark passes (staging-2 had no baseline yet)."""
    return {
        "id": "a00000000001", "action": "deploy", "environment": "sandbox-staging",
        "user": "root", "started": "2026-11-26T15:47:38+00:00",
        "from_versions": {"staging-1": "v0", "staging-2": None}, "to_version": "v1",
        "to_digest": "sha256:" + "d" * 64,
        "signed_by": "B" * 40,
        "release": {"release": "v1", "commit": "c" * 40, "tree": "e" * 40,
                    "model": {"version": "m1", "manifest_sha256": "f" * 64,
                              "data_fingerprint": "a" * 64}},
        "result": "ok", "detail": "", "seconds": 9.8,
        "events": [
            _event(0.48, "*", "deploy", "v1 to sandbox-staging"),
            _event(1.04, "staging-1", "image", "present"),
            _event(1.10, "staging-2", "pull", "registry/api:v1"),
            _event(1.60, "staging-1", "run", "green on port 8102"),
            _event(3.00, "staging-2", "run", "green on port 8102"),
            _event(5.00, "staging-1", "switched", "nginx -> green"),
            _event(5.20, "staging-2", "switched", "nginx -> green"),
            _event(6.00, "staging-1", "benchmark pass", "p95 7.9 ms vs 7.5 ms before (+5%)"),
            _event(6.10, "staging-2", "benchmark first", "no baseline yet"),
            _event(9.80, "*", "deploy ok", "v1 in 9.8 s"),
        ],
        "benchmark": {
            "result": "pass", "rolled_back": False,
            "tolerance": {"p95": 0.2, "max_error_rate": 0.0},
            "hosts": {
                "staging-1": _benchmark_host(
                    3.1, 7.9, 12.0, baseline=7.5, verdict="pass", reason="p95 7.9 ms (+5%)"
                ),
                "staging-2": _benchmark_host(
                    2.9, 7.0, 10.5, baseline=None, verdict="first", reason="no baseline yet"
                ),
            },
        },
    }  # fmt: skip


def failed_deploy() -> dict[str, Any]:
    """Production deploy whose prepare step failed on one host; the detail is hostile."""
    return {
        "id": "b00000000002", "action": "deploy", "environment": "sandbox-production",
        "user": "ci", "started": "2026-11-26T15:50:00+00:00",
        "from_versions": {"production-1": "v0"}, "to_version": "v1",
        "result": "failed", "detail": f"prepare failed: production-1: {HOSTILE}\nsecond line",
        "seconds": 4.5,
        "events": [
            _event(0.5, "*", "deploy", "v1 to sandbox-production"),
            _event(1.0, "production-1", "run", "blue on port 8101"),
            _event(3.0, "production-1", "prepare", HOSTILE, ok=False),
            _event(4.5, "*", "failed", "undone"),
        ],
        "benchmark": None,
    }  # fmt: skip


def rollback() -> dict[str, Any]:
    """Staging back to v0 by a proxy switch."""
    return {
        "id": "c00000000003", "action": "rollback", "environment": "sandbox-staging",
        "user": "root", "started": "2026-11-26T15:52:00+00:00",
        "from_versions": {"staging-1": "v1", "staging-2": "v1"}, "to_version": "v0",
        "result": "ok", "detail": "", "seconds": 3.0,
        "events": [
            _event(0.2, "*", "rollback", "to v0"),
            _event(0.5, "staging-1", "start", "blue"),
            _event(0.6, "staging-2", "start", "blue"),
            _event(2.0, "staging-1", "switched", "nginx -> blue"),
            _event(2.1, "staging-2", "switched", "nginx -> blue"),
            _event(3.0, "*", "rollback ok", "v0"),
        ],
    }  # fmt: skip


def regression() -> dict[str, Any]:
    """Deploy v2 whose p95 regressed on staging-1: rolled back to v1."""
    return {
        "id": "d00000000004", "action": "deploy", "environment": "sandbox-staging",
        "user": "root", "started": "2026-11-26T15:54:00+00:00",
        "from_versions": {"staging-1": "v1", "staging-2": "v1"}, "to_version": "v2",
        "result": "rolled_back",
        "detail": "benchmark regression (staging-1: p95 12.0 ms vs 7.5 ms before (+60%, "
                  "tolerance +20%)); rolled back to v1",
        "seconds": 12.0,
        "events": [
            _event(0.3, "*", "deploy", "v2 to sandbox-staging"),
            _event(1.0, "staging-1", "run", "blue on port 8101"),
            _event(1.0, "staging-2", "run", "blue on port 8101"),
            _event(5.0, "staging-1", "benchmark regression", "p95 12.0 ms vs 7.5 ms", ok=False),
            _event(5.1, "staging-2", "benchmark pass", "p95 7.6 ms vs 7.5 ms"),
            _event(6.0, "*", "rolling back", "benchmark regression"),
            _event(11.0, "*", "live", "v1 on 2 host(s)"),
        ],
        "benchmark": {
            "result": "regression", "rolled_back": True,
            "tolerance": {"p95": 0.2, "max_error_rate": 0.0},
            "hosts": {
                "staging-1": _benchmark_host(
                    4.0, 12.0, 20.0, baseline=7.5, verdict="regression",
                    reason="p95 12.0 ms vs 7.5 ms before (+60%)",
                ),
                "staging-2": _benchmark_host(
                    3.0, 7.6, 11.0, baseline=7.5, verdict="pass", reason="p95 7.6 ms (+1%)"
                ),
            },
        },
    }  # fmt: skip


def _write(directory: Path, data: dict[str, Any]) -> Path:
    """Save a timeline under the name save_outcome would give it."""
    stamp = data["started"].replace(":", "").replace("-", "").replace("+0000", "Z")
    path = directory / f"{data['environment']}-{stamp}-{data['action']}-{data['id']}.json"
    path.write_text(json.dumps(data, indent=2))
    return path


class _Page(HTMLParser):
    """Collects the images per deploy section, every tag seen, and the text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.images: dict[str, list[str]] = {}
        self.section: str | None = None
        self.text: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        if tag == "section":
            self.section = values.get("id")
            self.images[str(self.section)] = []
        if tag == "img":
            assert self.section is not None, "an image outside a deploy section"
            self.images[self.section].append(str(values.get("src")))
        if tag not in {"img", "meta", "br"}:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        # Well-formed enough: every element is closed, in order.
        assert self.open, f"</{tag}> closes nothing"
        assert self.open[-1] == tag, f"</{tag}> closes <{self.open[-1]}>"
        self.open.pop()
        if tag == "section":
            self.section = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.fixture(scope="module")
def deploys(tmp_path_factory: pytest.TempPathFactory) -> list[Deploy]:
    folder = tmp_path_factory.mktemp("timelines")
    paths = [_write(folder, make()) for make in (regression, rollback, ok_deploy, failed_deploy)]
    return timeline.load_all(paths)


@pytest.fixture(scope="module")
def page(deploys: list[Deploy]) -> str:
    return render.html_page(deploys, GENERATED)


@pytest.fixture(scope="module")
def parsed(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.close()
    return parser


@pytest.fixture(scope="module")
def markdown(deploys: list[Deploy]) -> str:
    return render.markdown(deploys, GENERATED)


# ---- timelines ---------------------------------------------------------------------------------


def test_deploys_are_in_time_order(deploys: list[Deploy]) -> None:
    assert [d.timeline.id for d in deploys] == [
        "a00000000001", "b00000000002", "c00000000003", "d00000000004",
    ]  # fmt: skip


def test_a_step_runs_from_the_hosts_previous_event_to_its_own(
    deploys: list[Deploy],
) -> None:
    steps = deploys[0].steps
    assert list(steps) == ["*", "staging-1", "staging-2"]
    staging_1 = [(s.name, round(s.start, 2), round(s.seconds, 2)) for s in steps["staging-1"]]
    assert staging_1 == [
        ("image", 0.48, 0.56), ("run", 1.04, 0.56), ("switched", 1.6, 3.4),
        ("benchmark pass", 5.0, 1.0),
    ]  # fmt: skip
    environment = [(s.name, round(s.seconds, 2)) for s in steps["*"]]
    assert environment == [("deploy", 0.48), ("deploy ok", 9.32)]


def test_steps_at_the_same_instant_keep_their_logged_order() -> None:
    data = rollback()
    data["events"] = [_event(1.0, "h", "b"), _event(0.5, "h", "a"), _event(1.0, "h", "c")]
    steps = Deploy(Path("x.json"), data, timeline.Timeline.model_validate(data)).steps["h"]
    assert [(s.name, s.start, s.end) for s in steps] == [
        ("a", 0.0, 0.5), ("b", 0.5, 1.0), ("c", 1.0, 1.0),
    ]  # fmt: skip


def test_latest_picks_the_newest_per_environment_and_action(tmp_path: Path) -> None:
    older, newer = ok_deploy(), ok_deploy()
    newer.update(id="e00000000005", started="2026-11-26T16:10:00+00:00")
    production = failed_deploy()
    production.update(started="2026-11-26T16:20:00+00:00")
    old_rollback = rollback()
    for data in (older, newer, production, old_rollback):
        _write(tmp_path, data)
    # A newer timeline whose file name sorts first: the content's time decides, not the name.
    newest_staging = ok_deploy()
    newest_staging.update(id="f00000000006", started="2026-11-26T16:15:00+00:00")
    (tmp_path / "0-copied.json").write_text(json.dumps(newest_staging))
    chosen = timeline.latest(tmp_path)
    assert [(d.timeline.environment, d.timeline.action, d.timeline.id) for d in chosen] == [
        ("sandbox-staging", "rollback", "c00000000003"),
        ("sandbox-staging", "deploy", "f00000000006"),
        ("sandbox-production", "deploy", "b00000000002"),
    ]


# ---- Markdown ----------------------------------------------------------------------------------


def test_markdown_has_the_facts_versions_steps_and_benchmark(markdown: str) -> None:
    lines = markdown.splitlines()
    assert "## 1. sandbox-staging: deploy v1 - ok" in lines
    assert "- duration: 9.8 s" in lines
    assert "- started: 2026-11-26 15:47:38 UTC by root" in lines
    # The release: the digest the hosts run, and what it is made of.
    assert f"- digest: sha256:{'d' * 64}" in lines
    assert f"- commit: {'c' * 40}" in lines
    assert "- model: m1" in lines
    assert f"- data fingerprint: {'a' * 64}" in lines
    assert "| staging-1 | v0 | v1 |" in lines
    assert "| staging-2 | - | v1 |" in lines
    assert "| staging-1 | run | 1.04 | 0.56 | ok | green on port 8102 |" in lines
    assert (
        "| staging-1 | pass | 1200 | 0.00% | 240.0 | 3.1 | 7.9 | 12.0 | 7.5 (v0) | +5.3% "
        "| p95 7.9 ms (+5%) |" in lines
    )
    assert "| staging-2 | first | 1200 | 0.00% | 240.0 | 2.9 | 7.0 | 10.5 | - | - |" in (markdown)
    assert "### Benchmark: pass (p95 tolerance +20%, max error rate 0.00%)" in lines
    # The overview, one row per deploy in time order.
    assert lines.index("## 1. sandbox-staging: deploy v1 - ok") < lines.index(
        "## 2. sandbox-production: deploy v1 - **failed**"
    )


def test_markdown_shows_failures_regressions_and_rollbacks(markdown: str) -> None:
    lines = markdown.splitlines()
    failed_step = "| production-1 | prepare | 1.00 | 2.00 | FAILED | "
    assert any(line.startswith(failed_step) for line in lines)
    assert "## 4. sandbox-staging: deploy v2 - **rolled\\_back**" in lines
    assert "### Benchmark: regression, rolled back (p95 tolerance +20%, max error rate 0.00%)" in (
        lines
    )
    assert any(
        line.startswith("| staging-1 | regression | 1200 | 0.00% | 240.0 | 4.0 | 12.0 | 20.0 "
                        "| 7.5 (v0) | +60.0% |")
        for line in lines
    )  # fmt: skip
    assert "## 3. sandbox-staging: rollback v0 - ok" in lines
    assert "| staging-1 | v1 | v0 |" in lines
    # The failure detail, whole and literal, in a fence its backticks cannot close.
    fence = lines.index("### Failure") + 2
    assert lines[fence] == "```text"
    assert lines[fence + 1] == f"prepare failed: production-1: {HOSTILE}"


def test_markdown_escapes_what_it_takes_from_the_timeline(markdown: str) -> None:
    step_line = next(line for line in markdown.splitlines() if "| prepare |" in line)
    assert "<script>" not in step_line
    assert "&lt;script&gt;" in step_line
    assert r"\| \`code\` \*bold\* &amp; more" in step_line
    assert step_line.count(" | ") == 5  # the detail's `|` did not add a column


def test_markdown_keeps_any_line_break_inside_its_table_cell() -> None:
    assert render.md("a|b\rc\r\nd\ne <i>") == r"a\|b<br>c<br>d<br>e &lt;i&gt;"


# ---- HTML --------------------------------------------------------------------------------------


def test_html_is_well_formed_and_self_contained(parsed: _Page, page: str) -> None:
    assert f"<dt>Digest</dt><dd>sha256:{'d' * 64}</dd>" in page  # the release the hosts run
    assert f"(verified by the hosts at pull)</dt><dd>{'B' * 40}</dd>" in page
    assert parsed.open == []
    assert parsed.tags[0] == "html"
    assert "script" not in parsed.tags
    assert "link" not in parsed.tags
    assert "http://" not in page
    assert "https://" not in page


def test_html_has_a_timeline_per_deploy_and_a_latency_plot_per_benchmark(parsed: _Page) -> None:
    # deploy-1 ok with benchmark, -2 failed, -3 rollback, -4 regression with benchmark.
    assert {section: len(images) for section, images in parsed.images.items()} == {
        "deploy-1": 2, "deploy-2": 1, "deploy-3": 1, "deploy-4": 2,
    }  # fmt: skip
    for images in parsed.images.values():
        for src in images:
            prefix = "data:image/png;base64,"
            assert src.startswith(prefix)
            assert base64.b64decode(src[len(prefix) :], validate=True).startswith(PNG_SIGNATURE)


def test_html_escapes_the_timelines_text(parsed: _Page, page: str) -> None:
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    # ...and shows it as text: the failure detail and the failed step's row.
    assert sum(HOSTILE in text for text in parsed.text) == 2


# ---- JSON --------------------------------------------------------------------------------------


def test_json_passes_the_timelines_through_with_their_steps(deploys: list[Deploy]) -> None:
    report = json.loads(json.dumps(render.json_report(deploys, GENERATED)))
    assert report["generated"] == "2026-11-26T16:00:00+00:00"
    first = report["deploys"][0]
    assert {k: v for k, v in first.items() if k not in ("steps", "source")} == ok_deploy()
    assert first["steps"]["staging-1"][0] == {
        "step": "image", "start": 0.48, "end": 1.04, "seconds": 0.56, "ok": True,
        "detail": "present",
    }  # fmt: skip
    assert Path(first["source"]).name.endswith("-deploy-a00000000001.json")


# ---- plots: inputs that could make matplotlib warn or fail ------------------------------------


def test_plots_cope_with_empty_zero_length_and_dollar_input() -> None:
    data = ok_deploy()
    data.update(seconds=0.0, to_version="$v$1$", events=[])
    data["from_versions"] = {"$host": None}
    data["benchmark"]["hosts"] = {
        "$host": {"p50_ms": 0, "p95_ms": 0, "p99_ms": 0, "requests": 0, "error_rate": 1.0,
                  "verdict": "regression", "baseline": {"p95_ms": 0.0}},
    }  # fmt: skip
    deploy = Deploy(Path("odd.json"), data, timeline.Timeline.model_validate(data))
    assert deploy.timeline.benchmark is not None
    assert deploy.timeline.benchmark.hosts["$host"].p95_change is None
    assert plots.timeline_png(deploy).startswith(PNG_SIGNATURE)
    assert plots.latency_png(deploy).startswith(PNG_SIGNATURE)


# ---- the CLI -----------------------------------------------------------------------------------


@pytest.fixture
def one_timeline(tmp_path: Path) -> Path:
    folder = tmp_path / "deploys"
    folder.mkdir()
    return _write(folder, rollback())


def test_cli_writes_the_three_files_and_appends_to_the_step_summary(
    one_timeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    summary = tmp_path / "summary.md"
    summary.write_text("## Earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    out = tmp_path / "out"
    for _ in range(2):
        assert cli.main([str(one_timeline), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[:3] == [str(out / f"deployment-report.{ext}") for ext in ("md", "html", "json")]
    text = summary.read_text()
    assert text.startswith("## Earlier step\n\n# Deployment report\n")
    assert text.count("# Deployment report\n") == 2
    assert (out / "deployment-report.md").read_text() in text
    assert json.loads((out / "deployment-report.json").read_text())["deploys"][0]["id"] == (
        "c00000000003"
    )


def test_cli_latest_reads_the_deploys_folder(
    one_timeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    out = tmp_path / "out"
    assert cli.main(["--latest", "--deploys", str(one_timeline.parent), "--out", str(out)]) == 0
    assert "## 1. sandbox-staging: rollback v0 - ok" in (out / "deployment-report.md").read_text()


def test_cli_reports_what_it_cannot_write(
    one_timeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    # A step summary that cannot be written only warns: the report itself is there.
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path))
    assert cli.main([str(one_timeline), "--out", str(tmp_path / "out")]) == 0
    assert "warning: not added to GITHUB_STEP_SUMMARY" in capsys.readouterr().err
    # An output folder that cannot be made fails.
    assert cli.main([str(one_timeline), "--out", str(one_timeline)]) == 1
    assert f"error: cannot write the report into {one_timeline}" in capsys.readouterr().err


def _malformed(folder: Path) -> Iterator[tuple[Path, str]]:
    """(file, what the error says) for each way a timeline can be broken."""
    yield folder / "missing.json", "no such timeline file"
    (folder / "folder.json").mkdir()
    yield folder / "folder.json", "cannot read it"
    (folder / "broken.json").write_text('{"id": ')
    yield folder / "broken.json", "invalid JSON"
    (folder / "list.json").write_text("[]")
    yield folder / "list.json", "a JSON object expected, not list"
    partial = ok_deploy()
    del partial["started"]
    partial["events"][1]["at"] = "soon"
    (folder / "partial.json").write_text(json.dumps(partial))
    yield folder / "partial.json", "started: Field required; events.1.at"
    naive = ok_deploy()
    naive.update(started="2026-11-26T15:47:38")
    (folder / "naive.json").write_text(json.dumps(naive))
    yield folder / "naive.json", "started: Input should have timezone info"
    infinite = copy.deepcopy(ok_deploy())
    infinite["seconds"] = math.inf
    (folder / "inf.json").write_text(json.dumps(infinite))
    yield folder / "inf.json", "seconds: Input should be a finite number"
    (folder / "binary.json").write_bytes(b"\xff\xfe\x00")
    yield folder / "binary.json", "not UTF-8"


def test_malformed_timelines_exit_2_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for path, message in _malformed(tmp_path):
        assert cli.main([str(path), "--out", str(tmp_path / "out")]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"error: {path}: ")
        assert message in error
        assert "Traceback" not in error
    assert not (tmp_path / "out").exists()


def test_the_module_runs_and_fails_without_a_traceback(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    done = subprocess.run(
        [sys.executable, "-m", "imdb_deploy.report", str(broken), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {broken}: not a deploy timeline (invalid JSON")
    assert "Traceback" not in done.stderr


def test_latest_without_timelines_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--latest", "--deploys", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert "no deploy timelines" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        cli.main([])
    assert usage.value.code == 2


def test_a_broken_timeline_among_the_latest_is_named(tmp_path: Path) -> None:
    _write(tmp_path, ok_deploy())
    (tmp_path / "half-written.json").write_text("{")
    with pytest.raises(TimelineError, match=r"half-written\.json: not a deploy timeline"):
        timeline.latest(tmp_path)


def test_timelines_live_where_the_variable_says(tmp_path: Path) -> None:
    assert timeline.timelines_dir({timeline.TIMELINES_VAR: str(tmp_path)}) == tmp_path
    assert timeline.timelines_dir({}).parts[-2:] == ("reports", "deploys")


def test_the_tests_own_deploys_stay_out_of_the_repository(
    deploy_timelines: Path, repo_root: Path
) -> None:
    assert timeline.timelines_dir() == deploy_timelines
    assert repo_root not in deploy_timelines.parents
