"""The report's figures, as PNG bytes: a per-host timeline of the steps, and the latency.

Drawn like the trainer's report (imdb_trainer.report: same DPI, same reference colour) with
matplotlib's object API on an explicit Agg canvas: no pyplot global state, no display needed and
no process-wide backend switch for whoever imports this.

Every string from a timeline goes through `_plain` first: matplotlib reads text between two `$`
as mathtext, so a version or a host name with dollars would be typeset, or fail to parse.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from imdb_deploy.report.timeline import ENVIRONMENT_HOST, Deploy

DPI = 110
# Failures, regressions and the baseline: the trainer's colour for reference lines.
ALERT = "crimson"
# p50, p95, p99: one hue, darker for the slower percentiles.
PERCENTILES = (
    ("p50_ms", "p50", "lightsteelblue"),
    ("p95_ms", "p95", "steelblue"),
    ("p99_ms", "p99", "midnightblue"),
)
# tab20 without its reds (6, 7: red marks failures), the strong shades before the pale ones, so
# that the first steps get clearly different hues rather than two shades of one.
STEP_PALETTE = (0, 2, 4, 8, 10, 12, 14, 16, 18, 1, 3, 5, 9, 11, 13, 15, 17, 19)
# Legend entries per row under the plots.
LEGEND_COLUMNS = 6
# Bars narrower than this share of the run get no text label (it would not fit).
LABEL_MIN_SHARE = 0.08


def _plain(text: str) -> str:
    """`text` shown literally (no mathtext)."""
    return text.replace("$", r"\$")


def host_label(host: str) -> str:
    """How a host is named in the report: `*` stands for the whole environment."""
    return "environment" if host == ENVIRONMENT_HOST else host


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)  # attaches itself to the figure: savefig then renders with Agg
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def step_colours(names: Sequence[str]) -> dict[str, tuple[float, float, float, float]]:
    """A colour per step name, in order of first appearance (cycling after 18)."""
    palette = colormaps["tab20"]
    unique = list(dict.fromkeys(names))
    return {
        name: palette(STEP_PALETTE[index % len(STEP_PALETTE)]) for index, name in enumerate(unique)
    }


def timeline_png(deploy: Deploy) -> bytes:
    """A Gantt chart: one row per host (the environment first), a coloured bar per step, failed
    steps hatched, outlined and marked with a cross."""
    t = deploy.timeline
    rows = list(deploy.steps.items())
    every = [step for _, steps in rows for step in steps]
    total = max([t.seconds, *(s.end for s in every)])
    # A refused deploy can end at 0 s; an empty x range would make the axes singular.
    span = total if total > 0 else 1.0
    colours = step_colours([step.name for step in every])
    legend_rows = math.ceil((len(colours) + 1) / LEGEND_COLUMNS)
    figure = Figure(figsize=(10, 1.6 + 0.5 * max(1, len(rows)) + 0.25 * legend_rows))
    figure.set_layout_engine("constrained")
    axes = figure.subplots()
    # Instantaneous steps (the next event at the same time) still get a visible sliver.
    sliver = span / 300
    for row, (_, steps) in enumerate(rows):
        for step in steps:
            width = max(step.seconds, sliver)
            axes.broken_barh(
                [(step.start, width)],
                (row - 0.35, 0.7),
                facecolors=colours[step.name],
                edgecolors=ALERT if not step.ok else "white",
                linewidth=1.5 if not step.ok else 0.5,
                hatch="///" if not step.ok else None,
            )
            if width >= span * LABEL_MIN_SHARE:
                axes.text(
                    step.start + width / 2, row, _plain(step.name),
                    ha="center", va="center", fontsize=7, clip_on=True,
                )  # fmt: skip
        failed = [(step.start, row) for step in steps if not step.ok]
        if failed:
            axes.plot(
                [x for x, _ in failed], [y for _, y in failed],
                linestyle="none", marker="X", markersize=10, color=ALERT,
                markeredgecolor="white", zorder=3,
            )  # fmt: skip
    if not rows:
        axes.text(0.5, 0.5, "no steps recorded", ha="center", va="center", transform=axes.transAxes)
    axes.set_yticks(range(len(rows)), labels=[_plain(host_label(host)) for host, _ in rows])
    axes.set_ylim(len(rows) - 0.5 if rows else 0.5, -0.5)  # first host on top, as in the tables
    axes.set_xlim(0, span * 1.01)
    axes.grid(axis="x", alpha=0.3)
    axes.set_axisbelow(True)
    axes.set(
        xlabel="seconds since the start",
        title=_plain(
            f"{t.environment}: {t.action} {t.to_version or ''} - {t.result} in {t.seconds:.1f} s"
        ),
    )
    handles: list[Patch | Line2D] = [
        Patch(facecolor=colour, label=_plain(name)) for name, colour in colours.items()
    ]
    if any(not step.ok for step in every):
        handles.append(
            Line2D(
                [], [], linestyle="none", marker="X", color=ALERT, markersize=9, label="failed step"
            )
        )
    if handles:
        figure.legend(
            handles=handles, loc="outside lower center", ncols=LEGEND_COLUMNS,
            fontsize=8, frameon=False,
        )  # fmt: skip
    return _png(figure)


def latency_png(deploy: Deploy) -> bytes:
    """Grouped bars per host: p50, p95 and p99 after the switch; the previous release's p95 as a
    dashed line with a marker over the group; regressing hosts named in the alert colour."""
    t = deploy.timeline
    if t.benchmark is None or not t.benchmark.hosts:
        raise ValueError(f"{deploy.path}: no benchmark figures to plot")
    benchmark = t.benchmark
    hosts = list(benchmark.hosts)
    figure = Figure(figsize=(max(6.5, 2.2 + 1.7 * len(hosts)), 4.5))
    figure.set_layout_engine("constrained")
    axes = figure.subplots()
    width = 0.26
    for index, (name, label, colour) in enumerate(PERCENTILES):
        offset = (index - 1) * width
        values = [float(getattr(benchmark.hosts[host], name)) for host in hosts]
        bars = axes.bar(
            [x + offset for x in range(len(hosts))], values, width, label=label, color=colour
        )
        axes.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    labelled = False
    for x, host in enumerate(hosts):
        baseline = benchmark.hosts[host].baseline
        if baseline is None:
            continue
        # The line spans the whole group, the marker sits on the p95 bar it compares with.
        axes.hlines(
            baseline.p95_ms, x - 1.5 * width, x + 1.5 * width, colors=ALERT,
            linestyles="dashed", linewidth=1.5,
            label="_" if labelled else "baseline p95 (previous release)",
        )  # fmt: skip
        axes.plot([x], [baseline.p95_ms], marker="D", markersize=6, color=ALERT, zorder=3)
        labelled = True
    axes.set_xticks(
        range(len(hosts)),
        labels=[_plain(f"{host}\n{benchmark.hosts[host].verdict}") for host in hosts],
    )
    for tick, host in zip(axes.get_xticklabels(), hosts, strict=True):
        if benchmark.hosts[host].verdict == "regression":
            tick.set_color(ALERT)
    # Room above the tallest bar for its value label; bars keep the axis at 0 below.
    axes.margins(y=0.18)
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)
    rolled = " (rolled back)" if benchmark.rolled_back else ""
    axes.set(
        ylabel="latency (ms)",
        title=_plain(f"{t.environment}: latency of {t.to_version} - {benchmark.result}{rolled}"),
    )
    figure.legend(loc="outside lower center", ncols=LEGEND_COLUMNS, fontsize=8, frameon=False)
    return _png(figure)
