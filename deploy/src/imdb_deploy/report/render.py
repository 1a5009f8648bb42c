"""The report's three forms: Markdown (also the GitHub step summary), self-contained HTML, JSON.

Everything that comes from a timeline is treated as untrusted text: versions, hosts and details
can contain anything a remote command printed. The HTML escapes it all (`html.escape`); the
Markdown escapes what Markdown and the HTML it allows would interpret, and puts the failure detail
in a code fence longer than any backtick run inside it.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from imdb_deploy.report.plots import host_label, latency_png, timeline_png
from imdb_deploy.report.timeline import Benchmark, Deploy, HostBenchmark

if TYPE_CHECKING:
    from imdb_deploy.report.cli import ImageScan

TITLE = "Deployment report"
# Step details longer than this are cut in the step tables (the failure detail is shown whole).
DETAIL_CHARS = 120
# Characters Markdown would format anywhere in a line (the report never puts input at the start
# of one); a backslash makes them literal.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
# Results with their own colour in the HTML; anything else is shown as "other".
_RESULT_CLASSES = {"ok": "ok", "failed": "bad", "rolled_back": "warn", "refused": "warn"}


# ---- formatting ------------------------------------------------------------------------------


def utc(moment: datetime) -> str:
    """`2026-11-26 15:47:38 UTC`: the report's one way of writing a time."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _version(version: str | None) -> str:
    return version if version else "-"


def _cut(text: str, limit: int = DETAIL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _percent_change(change: float | None) -> str:
    return "-" if change is None else f"{change * 100:+.1f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _versions_summary(deploy: Deploy) -> str:
    t = deploy.timeline
    # Hosts that ran nothing before show as "-", after the real versions.
    before = sorted({v for v in t.from_versions.values() if v}) + (
        ["-"] if not all(t.from_versions.values()) else []
    )
    return f"{', '.join(before)} → {_version(t.to_version)}"


def _tolerance(benchmark: Benchmark) -> str:
    parts = []
    if "p95" in benchmark.tolerance:
        parts.append(f"p95 tolerance +{benchmark.tolerance['p95']:.0%}")
    if "max_error_rate" in benchmark.tolerance:
        parts.append(f"max error rate {benchmark.tolerance['max_error_rate']:.2%}")
    return ", ".join(parts)


def _benchmark_title(benchmark: Benchmark) -> str:
    rolled = ", rolled back" if benchmark.rolled_back else ""
    tolerance = _tolerance(benchmark)
    return f"{benchmark.result}{rolled}" + (f" ({tolerance})" if tolerance else "")


def _benchmark_cells(host: str, figures: HostBenchmark) -> list[str]:
    """One benchmark table row, formatted (not escaped)."""
    baseline = figures.baseline
    return [
        host,
        figures.verdict,
        str(figures.requests),
        f"{figures.error_rate:.2%}",
        f"{figures.rps:.1f}",
        _ms(figures.p50_ms),
        _ms(figures.p95_ms),
        _ms(figures.p99_ms),
        "-" if baseline is None else f"{_ms(baseline.p95_ms)} ({_version(baseline.version)})",
        _percent_change(figures.p95_change),
        figures.reason,
    ]


BENCHMARK_HEADER = [
    "host", "verdict", "requests", "error rate", "rps", "p50 ms", "p95 ms", "p99 ms",
    "baseline p95 ms", "p95 change", "reason",
]  # fmt: skip
STEP_HEADER = ["host", "step", "start (s)", "duration (s)", "result", "detail"]
SUMMARY_HEADER = ["environment", "action", "versions", "result", "duration", "started", "by"]


def _summary_cells(deploy: Deploy) -> list[str]:
    t = deploy.timeline
    return [
        t.environment, t.action, _versions_summary(deploy), t.result,
        f"{t.seconds:.1f} s", utc(t.started), t.user or "-",
    ]  # fmt: skip


def image_scan_sentence(scan: ImageScan) -> str:
    """What the report says of one image's OS packages, in plain words (formatted, not escaped)."""
    if scan.os_packages_scanned:
        report = scan.trivy_report or "(its report was not kept)"
        return f"OS packages of {scan.name} were scanned for vulnerabilities: Trivy report {report}"
    why = (
        "trivy not installed where the image was built"
        if not scan.trivy_installed
        else scan.reason or "no reason recorded"
    )
    return f"OS packages of {scan.name} were not scanned for vulnerabilities ({why})"


def _step_rows(deploy: Deploy) -> list[tuple[list[str], bool]]:
    """The step table's rows (formatted, not escaped) and whether each step was ok."""
    rows: list[tuple[list[str], bool]] = []
    for steps in deploy.steps.values():
        for step in steps:
            cells = [
                host_label(step.host), step.name, f"{step.start:.2f}", f"{step.seconds:.2f}",
                "ok" if step.ok else "FAILED", _cut(step.detail),
            ]  # fmt: skip
            rows.append((cells, step.ok))
    return rows


# ---- Markdown ----------------------------------------------------------------------------------


def md(text: str) -> str:
    """`text` shown literally in Markdown, also inside a table cell."""
    escaped = _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))
    # CR alone ends a line in Markdown too: any line break would end the table row.
    return re.sub(r"\r\n?|\n", "<br>", escaped)


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table; the header is ours, the cells are escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md(cell) for cell in row) + " |" for row in rows]
    return lines


def _fence(text: str) -> list[str]:
    """A code block that `text` cannot close early."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + "text", text, fence]


def _md_deploy(number: int, deploy: Deploy) -> list[str]:
    t = deploy.timeline
    result = t.result if deploy.ok else f"**{md(t.result)}**"
    lines = [
        f"## {number}. {md(t.environment)}: {md(t.action)} {md(_version(t.to_version))} - {result}",
        "",
        f"- environment: {md(t.environment)}",
        f"- action: {md(t.action)}",
        f"- result: {result}",
        f"- duration: {t.seconds:.1f} s",
        f"- started: {utc(t.started)} by {md(t.user or '-')}",
        f"- id: {md(t.id)} (timeline {md(deploy.path.name)})",
        *(f"- {name.lower()}: {md(value)}" for name, value in t.release_facts()),
        "",
        "### Versions",
        "",
        *_md_table(
            ["host", "from", "to"],
            [
                [host, _version(t.from_versions.get(host)), _version(t.to_version)]
                for host in deploy.hosts()
            ],
        ),
        "",
    ]
    if not deploy.ok:
        lines += ["### Failure", "", *_fence(t.detail or "(no detail recorded)"), ""]
    lines += ["### Steps", "", *_md_table(STEP_HEADER, [r for r, _ in _step_rows(deploy)]), ""]
    if t.benchmark is not None:
        lines += [
            f"### Benchmark: {md(_benchmark_title(t.benchmark))}",
            "",
            *_md_table(
                BENCHMARK_HEADER,
                [_benchmark_cells(h, f) for h, f in t.benchmark.hosts.items()],
            ),
            "",
        ]
    return lines


def _md_image_scans(scans: Sequence[ImageScan]) -> list[str]:
    """What the images' vulnerability scans covered; nothing when no summary was found."""
    if not scans:
        return []
    return ["## Image scans", "", *(f"- {md(image_scan_sentence(s))}" for s in scans), ""]


def markdown(
    deploys: Sequence[Deploy], generated: datetime, image_scans: Sequence[ImageScan] = ()
) -> str:
    """The report in Markdown: an overview table, what the images' scans covered (when known),
    then per deploy its facts and tables."""
    lines = [
        f"# {TITLE}",
        "",
        f"Generated {utc(generated)} from {len(deploys)} timeline(s), in time order.",
        "",
        *_md_table(SUMMARY_HEADER, [_summary_cells(d) for d in deploys]),
        "",
        *_md_image_scans(image_scans),
    ]
    for number, deploy in enumerate(deploys, 1):
        lines += _md_deploy(number, deploy)
    return "\n".join(lines)


# ---- HTML --------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 72rem; padding: 0 1rem; color: #1f2328; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; }
.meta { color: #59636e; margin-top: 0; }
section.deploy { border-top: 2px solid #d1d9e0; margin-top: 2.5rem; padding-top: 0.5rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #d1d9e0; padding: 0.25rem 0.6rem; text-align: left;
         vertical-align: top; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td { background: #ffebe9; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 0.15rem 1rem; }
dl.facts dt { font-weight: 600; }
dl.facts dd { margin: 0; }
.badge { border-radius: 0.8rem; padding: 0.05rem 0.6rem; font-size: 0.85rem; color: #fff; }
.badge.ok { background: #1a7f37; }
.badge.bad { background: #cf222e; }
.badge.warn { background: #9a6700; }
.badge.other { background: #59636e; }
.failure { border-left: 4px solid #cf222e; background: #ffebe9; padding: 0.3rem 1rem; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0.3rem 0; }
figure { margin: 0.5rem 0 1rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #d1d9e0; }
figcaption { color: #59636e; font-size: 0.85rem; }
ul.scans li.unscanned { color: #9a6700; font-weight: 600; }
"""

# Columns right-aligned as numbers, by table.
_NUMERIC_STEPS = {2, 3}
_NUMERIC_BENCHMARK = {2, 3, 4, 5, 6, 7, 8, 9}


class _Markup(str):
    """HTML this module built from its own values: put in a cell as is, not escaped again."""


def h(text: str) -> str:
    """`text` escaped for HTML content and attribute values (`_Markup` is already HTML)."""
    return text if isinstance(text, _Markup) else html.escape(text, quote=True)


def _badge(result: str) -> str:
    return f'<span class="badge {_RESULT_CLASSES.get(result, "other")}">{h(result)}</span>'


def _html_table(
    header: Sequence[str],
    rows: Iterable[tuple[Sequence[str], bool]],
    numeric: set[int] | None = None,
) -> list[str]:
    """A table of escaped cells; rows flagged False are marked as failed."""
    numeric = numeric or set()
    lines = ["<table>", "<thead><tr>" + "".join(f"<th>{h(c)}</th>" for c in header) + "</tr>"]
    lines.append("</thead><tbody>")
    for cells, ok in rows:
        tds = "".join(
            f'<td class="num">{h(c)}</td>' if i in numeric else f"<td>{h(c)}</td>"
            for i, c in enumerate(cells)
        )
        lines.append(f"<tr>{tds}</tr>" if ok else f'<tr class="failed">{tds}</tr>')
    lines.append("</tbody></table>")
    return lines


def _figure(png: bytes, alt: str, caption: str) -> list[str]:
    data = base64.b64encode(png).decode("ascii")
    return [
        "<figure>",
        f'<img src="data:image/png;base64,{data}" alt="{h(alt)}">',
        f"<figcaption>{h(caption)}</figcaption>",
        "</figure>",
    ]


def _html_deploy(number: int, deploy: Deploy) -> list[str]:
    t = deploy.timeline
    facts = [
        ("Environment", t.environment),
        ("Action", t.action),
        ("Result", t.result),
        ("Duration", f"{t.seconds:.1f} s"),
        ("Started", f"{utc(t.started)} by {t.user or '-'}"),
        ("Id", f"{t.id} (timeline {deploy.path.name})"),
        *t.release_facts(),
    ]
    # The section id is built from the position, not from the input, so it is always valid.
    lines = [
        f'<section class="deploy" id="deploy-{number}">',
        f"<h2>{number}. {h(t.environment)}: {h(t.action)} {h(_version(t.to_version))} "
        f"{_badge(t.result)}</h2>",
        '<dl class="facts">',
        *(f"<dt>{h(name)}</dt><dd>{h(value)}</dd>" for name, value in facts),
        "</dl>",
        "<h3>Versions</h3>",
        *_html_table(
            ["host", "from", "to"],
            [
                ([host, _version(t.from_versions.get(host)), _version(t.to_version)], True)
                for host in deploy.hosts()
            ],
        ),
    ]
    if not deploy.ok:
        lines += [
            '<div class="failure">',
            "<h3>Failure</h3>",
            f"<pre>{h(t.detail or '(no detail recorded)')}</pre>",
            "</div>",
        ]
    lines += [
        "<h3>Timeline</h3>",
        *_figure(
            timeline_png(deploy),
            f"Timeline of the {t.action} of {t.environment}: one row per host, a bar per step",
            "One row per host (environment: the environment-wide steps); a step lasts until the "
            "host's next one. Failed steps are hatched, outlined and marked with a cross.",
        ),
        # Failed deploys open their step table: that is where one looks first.
        f"<details{'' if deploy.ok else ' open'}><summary>Steps</summary>",
        *_html_table(STEP_HEADER, _step_rows(deploy), _NUMERIC_STEPS),
        "</details>",
    ]
    if t.benchmark is not None:
        lines += [
            f"<h3>Benchmark: {h(_benchmark_title(t.benchmark))}</h3>",
            *_html_table(
                BENCHMARK_HEADER,
                [
                    (_benchmark_cells(host, figures), figures.verdict != "regression")
                    for host, figures in t.benchmark.hosts.items()
                ],
                _NUMERIC_BENCHMARK,
            ),
        ]
        if t.benchmark.hosts:
            lines += _figure(
                latency_png(deploy),
                f"Latency after the {t.action} of {t.environment} per host: p50, p95, p99",
                "p50, p95 and p99 per host after the switch; the dashed line and the diamond "
                "mark the previous release's p95 on that host.",
            )
    lines.append("</section>")
    return lines


def _html_image_scans(scans: Sequence[ImageScan]) -> list[str]:
    """What the images' vulnerability scans covered; nothing when no summary was found."""
    if not scans:
        return []
    items = [
        f'<li class="{"scanned" if s.os_packages_scanned else "unscanned"}">'
        f"{h(image_scan_sentence(s))}</li>"
        for s in scans
    ]
    return ["<h2>Image scans</h2>", '<ul class="scans">', *items, "</ul>"]


def html_page(
    deploys: Sequence[Deploy], generated: datetime, image_scans: Sequence[ImageScan] = ()
) -> str:
    """The report as one self-contained HTML page (plots embedded, no external resources)."""
    summary = _html_table(
        ["#", *SUMMARY_HEADER],
        [
            ([_Markup(f'<a href="#deploy-{n}">{n}</a>'), *_summary_cells(d)], d.ok)
            for n, d in enumerate(deploys, 1)
        ],
    )
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{TITLE}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{TITLE}</h1>",
        f'<p class="meta">Generated {h(utc(generated))} from {len(deploys)} timeline(s), '
        "in time order.</p>",
        *summary,
        *_html_image_scans(image_scans),
    ]
    for number, deploy in enumerate(deploys, 1):
        lines += _html_deploy(number, deploy)
    lines += ["</body>", "</html>", ""]
    return "\n".join(lines)


# ---- JSON --------------------------------------------------------------------------------------


def json_report(deploys: Sequence[Deploy], generated: datetime) -> dict[str, object]:
    """The input timelines as written, each with its file and its computed steps per host."""
    return {
        "generated": generated.astimezone(timezone.utc).isoformat(timespec="seconds"),
        "deploys": [
            {
                **deploy.raw,
                "source": str(deploy.path),
                "steps": {
                    host: [step.as_dict() for step in steps] for host, steps in deploy.steps.items()
                },
            }
            for deploy in deploys
        ],
    }
