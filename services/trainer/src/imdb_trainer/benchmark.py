"""Benchmark: generate real-size data, time ingest and end-to-end training, time the predictor.

    python -m imdb_trainer.benchmark [--rows 1600000] [--out results.json]

Training runs as a child process (`imdb-trainer train`, report included) so that its wall time
and peak RSS are those of the real command, untouched by the generator's memory. Targets on the
project's 2-core machine: <= 60 s wall and <= 2 GiB peak RSS for 1.6 M rated titles.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
from rich.console import Console
from rich.table import Table

from imdb_model.artifact import verify_artifact
from imdb_model.features import transform_records

TARGET_WALL_S: Final[float] = 60.0
TARGET_RSS_MB: Final[float] = 2048.0
SINGLE_CALLS: Final[int] = 5000
RECORD: Final[dict[str, Any]] = {
    "primaryTitle": "The Long Night: Part II",
    "originalTitle": "La Longue Nuit",
    "titleType": "movie",
    "isAdult": 0,
    "startYear": 1994,
    "runtimeMinutes": 142,
    "genres": "Crime,Drama",
}


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cli(*argv: str) -> tuple[float, float]:
    """Run `imdb-trainer ARGV` as a child process; return its wall and CPU seconds.

    CPU time (user + system) barely depends on other load on the machine, wall time does: both
    are reported, with the load average, so that a run on a busy machine can be read correctly.
    """
    command = [sys.executable, "-m", "imdb_trainer.cli", "--quiet", *argv]
    cpu = _children_cpu_s()
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return wall, _children_cpu_s() - cpu


def _train(data: Path, artifact: Path, threads: int | None) -> dict[str, Any]:
    argv = ["train", "--data", str(data), "--out", str(artifact)]
    if threads is not None:
        argv += ["--threads", str(threads)]
    load = os.getloadavg()[0]
    wall, cpu = _cli(*argv)
    # The training child's own peak, as recorded in its manifest (RUSAGE_SELF): the benchmark's
    # RUSAGE_CHILDREN would report the largest of all children, the generator included.
    manifest = json.loads((artifact / "manifest.json").read_text(encoding="utf-8"))
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "peak_rss_mb": manifest["training"]["peak_rss_mb"],
        "load_average_1min_at_start": round(load, 2),
    }


def _predictor(artifact: Path) -> dict[str, Any]:
    """Latency of the API's path (transform + predict) on one thread, and batch throughput."""
    loaded = verify_artifact(artifact)
    one = loaded.predictor(threads=1)
    for _ in range(200):
        one.predict_one(RECORD)
    timings = []
    for _ in range(SINGLE_CALLS):
        start = time.perf_counter()
        one.predict_one(RECORD)
        timings.append(time.perf_counter() - start)
    timings.sort()
    records = [
        dict(RECORD, startYear=1950 + i % 70, runtimeMinutes=60 + i % 120) for i in range(1000)
    ]
    start = time.perf_counter()
    for _ in range(20):
        one.predict_records(records)
    records_per_s = 20_000 / (time.perf_counter() - start)
    columns = {k: [r[k] for r in records] for k in RECORD}
    start = time.perf_counter()
    for _ in range(20):
        one.predict_columns(columns)
    columns_per_s = 20_000 / (time.perf_counter() - start)
    matrix = np.repeat(transform_records(records, one.schema), 100, axis=0)
    rates = {}
    for threads in (1, 2):
        predictor = loaded.predictor(threads=threads)
        predictor.predict_matrix(matrix[:1000])
        start = time.perf_counter()
        predictor.predict_matrix(matrix)
        rates[threads] = len(matrix) / (time.perf_counter() - start)
    return {
        "single_row_us": {
            "median": round(statistics.median(timings) * 1e6, 1),
            "p99": round(timings[int(0.99 * len(timings))] * 1e6, 1),
        },
        "batch_1000_records_rows_per_s": round(records_per_s),
        "batch_1000_columns_rows_per_s": round(columns_per_s),
        "matrix_100k_rows_per_s": {"1_thread": round(rates[1]), "2_threads": round(rates[2])},
        "num_trees": loaded.manifest["model"]["num_trees"],
    }


def run(rows: int, workdir: Path, threads: int | None = None, seed: int = 42) -> dict[str, Any]:
    """Run every measurement in `workdir`; return the results."""
    data = workdir / "data"
    artifact = workdir / "artifact"
    # Generated in a child process too, so that the benchmark process stays small and the
    # training child starts on a machine whose memory the generator has given back.
    generate_s, _ = _cli("generate", "--out", str(data), "--rows", str(rows), "--seed", str(seed))
    training = _train(data, artifact, threads)
    manifest = json.loads((artifact / "manifest.json").read_text(encoding="utf-8"))
    ingest_s = manifest["training"]["timings_s"]["ingest"]
    files = manifest["data"]["files"]
    basics_rows, ratings_rows = files["title.basics"]["rows"], files["title.ratings"]["rows"]
    input_rows = basics_rows + ratings_rows
    test = manifest["metrics"]["test"]
    return {
        "rated_titles": rows,
        "title_basics_rows": basics_rows,
        "title_ratings_rows": ratings_rows,
        "generate_s": round(generate_s, 2),
        "ingest_s": ingest_s,
        "ingest_rows_per_s": round(input_rows / ingest_s) if ingest_s else None,
        "train": {
            **training,
            "steps_s": manifest["training"]["timings_s"],
            "rows": manifest["training"]["rows"],
        },
        "metrics": {k: {m: round(v, 4) for m, v in test[k].items()} for k in test},
        "predictor": _predictor(artifact),
        "targets": {
            "wall_s": TARGET_WALL_S,
            "peak_rss_mb": TARGET_RSS_MB,
            "met": training["wall_s"] <= TARGET_WALL_S and training["peak_rss_mb"] <= TARGET_RSS_MB,
        },
    }


def _table(results: dict[str, Any]) -> Table:
    table = Table(title=f"trainer benchmark: {results['rated_titles']} rated titles")
    table.add_column("measure")
    table.add_column("value", justify="right")
    predictor = results["predictor"]
    rows = [
        (
            "title.basics rows / title.ratings rows",
            f"{results['title_basics_rows']} / {results['title_ratings_rows']}",
        ),
        ("generate (s)", str(results["generate_s"])),
        ("ingest (s)", str(results["ingest_s"])),
        ("ingest (rows/s, both files)", f"{results['ingest_rows_per_s']:,}"),
        ("train end to end, wall (s)", str(results["train"]["wall_s"])),
        ("train end to end, CPU user+sys (s)", str(results["train"]["cpu_s"])),
        ("train end to end, peak RSS (MiB)", str(results["train"]["peak_rss_mb"])),
        ("load average when training started", str(results["train"]["load_average_1min_at_start"])),
        (
            "test RMSE model / linear / mean",
            " / ".join(
                str(results["metrics"][k]["rmse"])
                for k in ("model", "linear_baseline", "mean_baseline")
            ),
        ),
        (
            "single row transform+predict, median / p99 (us)",
            f"{predictor['single_row_us']['median']} / {predictor['single_row_us']['p99']}",
        ),
        (
            "1000 records transform+predict (rows/s)",
            f"{predictor['batch_1000_records_rows_per_s']:,}",
        ),
        (
            "1000-row columns transform+predict (rows/s)",
            f"{predictor['batch_1000_columns_rows_per_s']:,}",
        ),
        (
            "100k-row matrix predict, 1 / 2 threads (rows/s)",
            f"{predictor['matrix_100k_rows_per_s']['1_thread']:,} / "
            f"{predictor['matrix_100k_rows_per_s']['2_threads']:,}",
        ),
        ("targets met (<= 60 s, <= 2 GiB)", str(results["targets"]["met"])),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; exit 1 only with --enforce and a missed target."""
    parser = argparse.ArgumentParser(prog="python -m imdb_trainer.benchmark", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_600_000, help="rated titles (default 1.6 M)")
    parser.add_argument("--out", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--workdir", type=Path, help="keep data and artifact here (default: temp)")
    parser.add_argument("--threads", type=int, help="training threads (default: the trainer's)")
    parser.add_argument("--enforce", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        results = run(args.rows, args.workdir, args.threads)
    else:
        with tempfile.TemporaryDirectory(prefix="imdb-benchmark-") as tmp:
            results = run(args.rows, Path(tmp), args.threads)
    Console().print(_table(results))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 1 if args.enforce and not results["targets"]["met"] else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
