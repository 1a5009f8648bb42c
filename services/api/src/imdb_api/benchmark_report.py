"""The API benchmark as a self-contained HTML page: the figures, the targets and two plots.

One plot shows throughput and latency per scenario; the other where the CPU goes: a batch row's
CPU, step by step, against the budget that 500,000 rows/s leaves on this machine's cores, and
each single-row route's CPU per request against the allowance that 80% of the no-op implies.

matplotlib (the `benchmark` dependency group) draws on an explicit Agg canvas: no pyplot state,
no display. Everything shown comes from the benchmark's own JSON report (see `benchmark.main`).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 110
PERCENTILES = (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99"))
# A batch row's CPU, in the order it is spent; the last two come from the server and wrk totals.
BATCH_STEPS = (
    ("batch_decode_and_check_us_per_row", "decode and check (msgspec)"),
    ("batch_transform_us_per_row", "features (numpy)"),
    ("batch_model_us_per_row", "model (onnxruntime)"),
    ("batch_encode_and_metrics_us_per_row", "encode and metrics"),
)
SINGLE_ROUTES = ("api /noop", "api /noop/fastapi", "api /predict")
ALERT = "#c0392b"
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.met { color: #1e7b34; font-weight: bold; } .missed { color: #c0392b; font-weight: bold; }
img { max-width: 100%; } figcaption { color: #555; font-size: 0.9em; }
"""


def _png(figure: Figure) -> str:
    FigureCanvasAgg(figure)  # attaches itself: savefig renders with Agg
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def throughput_png(results: Sequence[Mapping[str, Any]]) -> str:
    """Requests per second, and p50/p95/p99 latency, per scenario (base64 PNG)."""
    names = [r["name"] for r in results]
    figure = Figure(figsize=(12, 4.8))
    figure.set_layout_engine("constrained")
    left, right = figure.subplots(1, 2)
    bars = left.barh(names, [r["requests_per_s"] for r in results], color="#4c72b0")
    left.bar_label(bars, fmt="%.0f", fontsize=8, padding=3)
    left.invert_yaxis()
    left.margins(x=0.2)
    left.set(xlabel="requests per second (median of the rounds)", title="Throughput")
    width = 0.27
    for index, (field, label) in enumerate(PERCENTILES):
        offsets = [y + (index - 1) * width for y in range(len(results))]
        right.barh(offsets, [r[field] for r in results], width, label=label)
    right.axvline(10.0, color=ALERT, linestyle="dashed", linewidth=1.2, label="/predict p99 target")
    right.set_yticks(range(len(results)), labels=names)
    right.invert_yaxis()
    right.set_xscale("log")
    right.set(xlabel="latency (ms, log scale)", title="Latency")
    right.legend(fontsize=8)
    for axes in (left, right):
        axes.grid(axis="x", alpha=0.3)
        axes.set_axisbelow(True)
    return _png(figure)


def cpu_png(report: Mapping[str, Any]) -> str | None:
    """Where the CPU goes, against the targets' budgets (base64 PNG); None without CPU figures."""
    results = {r["name"]: r for r in report["results"]}
    summary = report["summary"]
    steps = summary.get("in_process_us")
    batch = results.get("api /predict/batch")
    if not steps or batch is None or batch.get("server_cpu_us") is None:
        return None
    rows = batch["rows_per_request"]
    figure = Figure(figsize=(12, 4.2))
    figure.set_layout_engine("constrained")
    left, right = figure.subplots(1, 2, width_ratios=(3, 2))
    # Left: one stacked bar of a batch row's CPU.
    parts = [(label, float(steps[key])) for key, label in BATCH_STEPS]
    in_server = batch["server_cpu_us"] / rows
    rest = max(0.0, in_server - sum(value for _, value in parts))
    parts.append(("rest of the server (HTTP, event loop; the steps, slower under load)", rest))
    parts.append(("load generator (wrk)", batch["loadgen_cpu_us"] / rows))
    start = 0.0
    for label, value in parts:
        left.barh([0], [value], left=start, label=f"{label}: {value:.2f}")
        start += value
    budget = summary.get("batch_cpu_budget_us_per_row")
    if budget is not None:
        left.axvline(budget, color=ALERT, linestyle="dashed", linewidth=1.5)
        left.annotate(
            f"budget for 500k rows/s: {budget:.1f} us",
            (budget, 0.45), color=ALERT, fontsize=8, ha="center",
        )  # fmt: skip
    left.set_yticks([])
    left.set_ylim(-0.6, 0.6)
    left.set(xlabel="CPU microseconds per batch row", title=f"/predict/batch ({rows} rows)")
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncols=2, fontsize=8)
    # Right: server CPU per request of the single-row routes.
    names = [name for name in SINGLE_ROUTES if results.get(name, {}).get("server_cpu_us")]
    values = [results[name]["server_cpu_us"] for name in names]
    bars = right.bar(range(len(names)), values, color="#55a868")
    right.bar_label(bars, fmt="%.0f", fontsize=8, padding=2)
    if "api /noop" in names:
        # Saturated, req/s is cores over CPU per request: 80% of the no-op's rate allows this.
        allowance = results["api /noop"]["server_cpu_us"] / 0.8
        right.axhline(allowance, color=ALERT, linestyle="dashed", linewidth=1.2)
        right.annotate(
            f"80% of /noop: {allowance:.0f} us", (len(names) - 0.5, allowance),
            color=ALERT, fontsize=8, ha="right", va="bottom",
        )  # fmt: skip
    right.set_xticks(range(len(names)), labels=[name.removeprefix("api ") for name in names])
    right.margins(y=0.2)
    right.set(ylabel="server CPU microseconds per request", title="Single-row routes")
    for axes in (left, right):
        axes.grid(axis="x" if axes is left else "y", alpha=0.3)
        axes.set_axisbelow(True)
    return _png(figure)


def _figure(data: str, alt: str, caption: str) -> str:
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def html_page(report: Mapping[str, Any]) -> str:
    """The whole page for one benchmark report (the dict `benchmark.main` writes as JSON)."""
    h = html.escape
    results = report["results"]
    summary = report["summary"]
    head = ["scenario", "connections", "req/s", "rows/s", "p50 ms", "p95 ms", "p99 ms"]
    head += ["errors", "server CPU us/req", "wrk CPU us/req"]
    rows = []
    for r in results:
        cells = [r["name"], r["connections"], f"{r['requests_per_s']:.0f}"]
        cells += [f"{r['rows_per_s']:.0f}", r["p50_ms"], r["p95_ms"], r["p99_ms"], r["errors"]]
        cells += [r.get("server_cpu_us") or "-", r.get("loadgen_cpu_us") or "-"]
        rows.append("<tr>" + "".join(f"<td>{h(str(c))}</td>" for c in cells) + "</tr>")
    targets = [
        f'<li class="{"met" if met else "missed"}">{h(check)}: {"met" if met else "MISSED"}</li>'
        for check, met in summary["targets_met"].items()
    ]
    figures = {k: v for k, v in summary.items() if k not in ("targets_met", "in_process_us")}
    in_process = summary.get("in_process_us") or {}
    settings = report.get("settings", {})
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>API benchmark</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>API benchmark</h1>",
        f"<p>{h(str(report.get('cpus')))} CPUs; {h(str(settings.get('workers')))} server workers; "
        f"{h(str(settings.get('rounds')))} interleaved rounds of {h(str(settings.get('duration')))}"
        " s per scenario; figures are medians over the rounds.</p>",
        "<h2>Targets</h2>",
        "<ul>",
        *targets,
        "</ul>",
        "<table><tr>" + "".join(f"<th>{h(c)}</th>" for c in head) + "</tr>",
        *rows,
        "</table>",
        _figure(throughput_png(results), "throughput and latency per scenario", "Medians."),
    ]
    cpu = cpu_png(report)
    if cpu is not None:
        parts.append(
            _figure(
                cpu,
                "CPU per batch row and per single request, against the targets' budgets",
                "Batch steps are timed in process on the same artifact; the rest of the "
                "server's share is its measured CPU per row minus those steps.",
            )
        )
    parts += [
        "<h2>Figures</h2>",
        "<table>",
        *(f"<tr><td>{h(k)}</td><td>{h(str(v))}</td></tr>" for k, v in figures.items()),
        "</table>",
    ]
    if in_process:
        parts += [
            "<h2>In process (medians, us)</h2>",
            "<table>",
            *(f"<tr><td>{h(k)}</td><td>{h(str(v))}</td></tr>" for k, v in in_process.items()),
            "</table>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
