"""The benchmark module: a short real run (wrk against the real server) and its reporting."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from imdb_api import benchmark
from imdb_api.benchmark_report import html_page
from imdb_api.mlflow_model import save
from imdb_model import verify_artifact


@pytest.mark.integration
def test_a_short_real_run_writes_the_table_and_json(
    artifact: Path,
    tmp_path: Path,
    require_tool: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    require_tool("wrk")
    out = tmp_path / "bench.json"
    args = ["--artifact", str(artifact), "--duration", "1", "--rounds", "1", "--skip-mlflow"]
    assert benchmark.main([*args, "--workers", "1", "--batch-size", "50", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    names = [r["name"] for r in report["results"]]
    assert names == ["api /noop", "api /noop/fastapi", "api /predict", "api /predict/batch"]
    assert all(r["errors"] == 0 and r["requests_per_s"] > 0 for r in report["results"])
    assert report["results"][3]["rows_per_s"] == pytest.approx(
        report["results"][3]["requests_per_s"] * 50, rel=1e-3
    )
    assert "predict_vs_noop" in report["summary"]
    # CPU per request of the server's processes and of wrk, read around each run.
    assert all(r["server_cpu_us"] > 0 and r["loadgen_cpu_us"] > 0 for r in report["results"])
    assert report["summary"]["batch_cpu_used_us_per_row"] > 0
    in_process = report["summary"]["in_process_us"]
    assert set(in_process) >= {"predict_us_per_request", "batch_model_us_per_row"}
    assert all(figure > 0 for figure in in_process.values())
    printed = capsys.readouterr().out
    assert "api /predict/batch" in printed
    assert "batch_transform_us_per_row" in printed
    page = out.with_suffix(".html").read_text()
    assert f"report: {out.with_suffix('.html')}" in printed
    assert page.count('<img src="data:image/png;base64,') == 2  # throughput and latency; CPU
    assert "<td>api /predict/batch</td>" in page


def measurement(name: str, rps: float, rows: int = 1) -> benchmark.Measurement:
    return benchmark.Measurement(name, 32, rows, rps, rps * rows, 1.0, 2.0, 3.0, 0)


def api_results(batch_rps: float) -> list[benchmark.Measurement]:
    """The API's four scenarios: no-ops at 10k and 4k req/s, /predict at 9k, 1000-row batches."""
    return [
        measurement("api /noop", 10_000),
        measurement("api /noop/fastapi", 4_000),
        measurement("api /predict", 9_000),
        measurement("api /predict/batch", batch_rps, 1000),
    ]


def test_summary_and_table_with_mlflow() -> None:
    results = {
        m.name: m
        for m in (
            *api_results(600),
            measurement("mlflow /invocations (1 row)", 1_000),
            measurement("mlflow /invocations (batch)", 60, 1000),
        )
    }
    summary = benchmark.summarize(results)
    assert summary["predict_vs_noop"] == 0.9
    assert summary["predict_vs_fastapi_noop"] == 2.25
    assert summary["predict_vs_mlflow"] == 9.0
    assert summary["batch_vs_mlflow"] == 10.0
    assert all(summary["targets_met"].values())
    text = benchmark.render(results, summary)
    assert "target predict >= 5x mlflow: met" in text


def test_without_wrk_it_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("shutil.which", lambda name, path=None: None)
    assert benchmark.main(["--skip-mlflow"]) == 2
    assert "wrk" in capsys.readouterr().err


def test_sample_movies_are_valid_and_varied(client: TestClient) -> None:
    movies = benchmark.sample_movies(50)
    assert len({json.dumps(m) for m in movies}) > 20
    response = client.post("/predict/batch", json={"movies": movies})
    assert response.status_code == 200
    record = benchmark.mlflow_record(movies[1])
    assert isinstance(record["genres"], str)
    assert record["isAdult"] in (0, 1)


@pytest.mark.benchmark
@pytest.mark.filterwarnings("ignore:.*[Tt]ype hint:UserWarning")  # mlflow's advice on our pyfunc
def test_mlflow_model_predicts_like_the_api(artifact: Path, tmp_path: Path) -> None:
    # mlflow lives in the `benchmark` dependency group: `nox -s benchmark` runs this first.
    import pandas  # noqa: PLC0415
    from mlflow import pyfunc  # noqa: PLC0415

    model = pyfunc.load_model(str(save(artifact, tmp_path / "model")))
    movies = benchmark.sample_movies(5)
    frame = pandas.DataFrame([benchmark.mlflow_record(m) for m in movies])
    expected = verify_artifact(artifact).predictor().predict_records(movies)
    assert list(model.predict(frame)) == list(expected)


def test_figures_are_medians_over_the_rounds() -> None:
    rounds = [measurement("api /predict", rps) for rps in (9_000, 1_000, 8_000)]
    rounds[1].errors = 2
    middle = benchmark.median_of(rounds)
    assert middle.requests_per_s == 8_000
    assert middle.rows_per_s == 8_000
    assert middle.p99_ms == 3.0
    assert middle.errors == 2
    assert middle.server_cpu_us is None  # not measured in any round


def test_cpu_figures_are_per_request_and_their_medians_skip_gaps() -> None:
    wrk = {"requests": 2_000, "duration_us": 1_000_000, "non2xx": 0, "socket_errors": 0}
    wrk |= {"p50_us": 1_000, "p95_us": 2_000, "p99_us": 3_000}
    rounds = [
        benchmark.measure("api /predict", wrk, 32, 1, (0.2, 0.05)),
        benchmark.measure("api /predict", wrk, 32, 1, (None, 0.07)),
        benchmark.measure("api /predict", wrk, 32, 1, (0.4, 0.06)),
    ]
    assert (rounds[0].server_cpu_us, rounds[0].loadgen_cpu_us) == (100.0, 25.0)
    middle = benchmark.median_of(rounds)
    assert (middle.server_cpu_us, middle.loadgen_cpu_us) == (150.0, 30.0)
    idle = benchmark.measure("api /predict", wrk | {"requests": 0}, 32, 1, (0.2, 0.05))
    assert idle.server_cpu_us is None


def test_the_batch_target_as_a_cpu_budget() -> None:
    results = {m.name: m for m in api_results(400)}
    assert "batch_cpu_budget_us_per_row" not in benchmark.summarize(results, cpus=2)
    results["api /predict/batch"].server_cpu_us = 4_500.0
    results["api /predict/batch"].loadgen_cpu_us = 500.0
    summary = benchmark.summarize(results, cpus=2)
    # 500k rows/s on 2 cores: 4 us of CPU per row, for the server and wrk together.
    assert summary["batch_cpu_budget_us_per_row"] == 4.0
    assert summary["batch_cpu_used_us_per_row"] == 5.0
    summary["in_process_us"] = {"batch_model_us_per_row": 1.5}
    text = benchmark.render(results, summary)
    assert "  batch_model_us_per_row: 1.5" in text
    assert " 4500      500" in text


def test_the_html_page_escapes_and_does_without_cpu_figures() -> None:
    results = [*api_results(400), measurement("<b>odd</b>", 10)]
    summary = benchmark.summarize({m.name: m for m in results[:4]})
    report = {"cpus": 2, "settings": {"workers": 2}, "summary": summary}
    report["results"] = [dataclasses.asdict(m) for m in results]
    page = html_page(report)
    assert "&lt;b&gt;odd&lt;/b&gt;" in page
    assert "<b>odd" not in page
    assert page.count("<img ") == 1  # no CPU figures measured: no CPU plot
    assert '<li class="missed">batch &gt;= 500k rows/s: MISSED</li>' in page
    assert '<li class="met">predict p99 &lt;= 10 ms: met</li>' in page
