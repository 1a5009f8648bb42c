"""Benchmark the real server with a real load generator (wrk) on loopback.

    python -m imdb_api.benchmark [--artifact DIR] [--out results.json] [--duration 5] ...

Starts `imdb-api` (with the benchmark-only no-op route) and `mlflow models serve` on the same
artifact, drives each with wrk (Lua scripts rotate over realistic movies) and reports throughput
and p50/p95/p99 latency for: two no-op routes (the ceilings of the server stack: `/noop` answered
by the same raw ASGI path as the predictions, `/noop/fastapi` by FastAPI's routing), single
`/predict` at 32 connections, `/predict/batch` (rows/s), and mlflow single and batch. Rounds
alternate between the scenarios so that noise on a shared machine hits them alike; each figure
is the median over the rounds (every round is kept in the JSON). Without --artifact a small
model is trained first. mlflow comes from the `benchmark` dependency group; without it (or with
--skip-mlflow) that column is left out.

Targets (2 cores, load generator on the same machine): single /predict >= 80% of the no-op
throughput with p99 <= 10 ms, >= 5x mlflow; batch >= 500,000 rows/s.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final

from imdb_api.cpu import cpu_during, handler_costs
from imdb_api.mlflow_model import save

TARGET_RATIO_NOOP: Final[float] = 0.8
TARGET_P99_MS: Final[float] = 10.0
TARGET_RATIO_MLFLOW: Final[float] = 5.0
TARGET_BATCH_ROWS_S: Final[float] = 500_000.0
DISTINCT_MOVIES: Final[int] = 200

# wrk Lua: rotate over the request bodies in BODIES_FILE, report percentiles as JSON at the end.
LUA_TEMPLATE: Final[str] = """
local bodies = {}
for line in io.lines("%(bodies)s") do bodies[#bodies + 1] = line end
local index = 0
local headers = {["Content-Type"] = "application/json"}
request = function()
  index = index %% #bodies + 1
  return wrk.format("POST", "%(path)s", headers, bodies[index])
end
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'RESULT {"requests": %%d, "duration_us": %%d, "non2xx": %%d, "socket_errors": %%d, '
    .. '"p50_us": %%d, "p95_us": %%d, "p99_us": %%d}\\n',
    summary.requests, summary.duration, errors.status,
    errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


@dataclass
class Measurement:
    """One scenario: one round, or the medians over the rounds."""

    name: str
    connections: int
    rows_per_request: int
    requests_per_s: float
    rows_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int
    # CPU per request (microseconds) of the server's process tree and of wrk; None without /proc.
    server_cpu_us: float | None = None
    loadgen_cpu_us: float | None = None


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(port: int, path: str, timeout: float, process: subprocess.Popen[bytes]) -> None:
    """Poll GET 127.0.0.1:`port``path` until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", path)
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.2)
    raise RuntimeError(f"{path} on port {port} not ready after {timeout} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it does not exit."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def train_artifact(workdir: Path, rows: int) -> Path:
    """Generate data and train an artifact with the trainer's CLI (a child process)."""
    data, artifact = workdir / "data", workdir / "artifact"
    trainer = [sys.executable, "-m", "imdb_trainer.cli", "--quiet"]
    subprocess.run(  # noqa: S603
        [*trainer, "generate", "--out", str(data), "--rows", str(rows), "--seed", "3"], check=True
    )
    subprocess.run(  # noqa: S603
        [*trainer, "train", "--data", str(data), "--out", str(artifact), "--no-report"], check=True
    )
    return artifact


def sample_movies(count: int) -> list[dict[str, Any]]:
    """Varied, realistic movies (JSON types of the API)."""
    genres = ["Drama", "Comedy", "Crime", "Horror", "Documentary", "Action", "Romance", "Thriller"]
    words = ["Night", "Return", "City", "Family", "Part II", "Secret", "Blue", "King", "2"]
    movies = []
    for i in range(count):
        title = f"The {words[i % len(words)]} {words[(i * 7) % len(words)]}"
        movies.append(
            {
                "primaryTitle": title,
                "originalTitle": title if i % 3 else f"{title}: Director's Cut",
                "titleType": "movie",
                "isAdult": i % 50 == 0,
                "startYear": None if i % 17 == 0 else 1920 + (i * 13) % 100,
                "runtimeMinutes": None if i % 11 == 0 else 60 + (i * 7) % 120,
                "genres": [genres[i % 8], genres[(i * 3 + 1) % 8]][: 1 + i % 2],
            }
        )
    return movies


def mlflow_record(movie: dict[str, Any]) -> dict[str, Any]:
    """The same movie as a DataFrame record for mlflow (genres as the file's string)."""
    record = dict(movie)
    record["genres"] = ",".join(movie["genres"])
    record["isAdult"] = int(movie["isAdult"])
    return record


def write_script(workdir: Path, name: str, path: str, bodies: list[bytes]) -> Path:
    """A wrk Lua script that POSTs the given bodies (one per line) to `path`."""
    bodies_file = workdir / f"{name}.bodies"
    bodies_file.write_bytes(b"\n".join(bodies) + b"\n")
    script = workdir / f"{name}.lua"
    script.write_text(LUA_TEMPLATE % {"bodies": bodies_file, "path": path})
    return script


def run_wrk(
    wrk: str, url: str, script: Path, *, connections: int, duration: float, threads: int
) -> dict[str, Any]:
    """One wrk run; its RESULT line as a dict."""
    command = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)  # noqa: S603
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    raise RuntimeError(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")


def measure(
    name: str,
    result: dict[str, Any],
    connections: int,
    rows: int,
    cpu_seconds: tuple[float | None, float | None] = (None, None),
) -> Measurement:
    """Turn a wrk result (and the server's and wrk's CPU seconds during it) into a Measurement."""
    seconds = result["duration_us"] / 1e6
    rps = result["requests"] / seconds
    requests = result["requests"]
    server, loadgen = (
        None if used is None or not requests else round(used * 1e6 / requests, 1)
        for used in cpu_seconds
    )
    return Measurement(
        name=name,
        connections=connections,
        rows_per_request=rows,
        requests_per_s=round(rps, 1),
        rows_per_s=round(rps * rows, 1),
        p50_ms=result["p50_us"] / 1000,
        p95_ms=result["p95_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        errors=result["non2xx"] + result["socket_errors"],
        server_cpu_us=server,
        loadgen_cpu_us=loadgen,
    )


def median_of(rounds: Sequence[Measurement]) -> Measurement:
    """Each figure's median over the rounds (errors: their sum)."""
    first = rounds[0]

    def middle(field: str) -> float:
        return round(float(statistics.median(getattr(m, field) for m in rounds)), 3)

    def middle_known(field: str) -> float | None:
        known = [value for m in rounds if (value := getattr(m, field)) is not None]
        return round(float(statistics.median(known)), 1) if known else None

    return Measurement(
        name=first.name,
        connections=first.connections,
        rows_per_request=first.rows_per_request,
        requests_per_s=middle("requests_per_s"),
        rows_per_s=middle("rows_per_s"),
        p50_ms=middle("p50_ms"),
        p95_ms=middle("p95_ms"),
        p99_ms=middle("p99_ms"),
        errors=sum(m.errors for m in rounds),
        server_cpu_us=middle_known("server_cpu_us"),
        loadgen_cpu_us=middle_known("loadgen_cpu_us"),
    )


def start_api(artifact: Path, port: int, workers: int, access_log: bool, log: Path) -> Any:
    """`imdb-api` with the no-op route, logging to `log`."""
    command = [sys.executable, "-m", "imdb_api.cli", "--artifact", str(artifact)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    command += ["--benchmark-noop", "--access-log" if access_log else "--no-access-log"]
    with log.open("wb") as sink:
        return subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)  # noqa: S603


def start_mlflow(artifact: Path, workdir: Path, port: int, workers: int, log: Path) -> Any:
    """`mlflow models serve` on the same artifact as a pyfunc model."""
    model = save(artifact, workdir / "mlflow-model")
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    command = [mlflow, "models", "serve", "-m", str(model), "--env-manager", "local"]
    command += ["-h", "127.0.0.1", "-p", str(port), "-w", str(workers)]
    with log.open("wb") as sink:
        return subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)  # noqa: S603


def summarize(results: dict[str, Measurement], cpus: int | None = None) -> dict[str, Any]:
    """Ratios against the targets; with `cpus`, the batch target as a CPU budget per row."""
    single, noop = results["api /predict"], results["api /noop"]
    framework = results["api /noop/fastapi"]
    batch = results["api /predict/batch"]
    summary: dict[str, Any] = {
        "predict_vs_noop": round(single.requests_per_s / noop.requests_per_s, 3),
        "predict_vs_fastapi_noop": round(single.requests_per_s / framework.requests_per_s, 3),
        "predict_p99_ms": single.p99_ms,
        "batch_rows_per_s": batch.rows_per_s,
    }
    if cpus and batch.server_cpu_us is not None and batch.loadgen_cpu_us is not None:
        # Saturated, throughput is cores over CPU per row: the target fixes the budget.
        summary["batch_cpu_budget_us_per_row"] = round(cpus * 1e6 / TARGET_BATCH_ROWS_S, 2)
        used = (batch.server_cpu_us + batch.loadgen_cpu_us) / batch.rows_per_request
        summary["batch_cpu_used_us_per_row"] = round(used, 2)
    checks = {
        "predict >= 80% of the raw ASGI no-op": summary["predict_vs_noop"] >= TARGET_RATIO_NOOP,
        "predict >= 80% of the FastAPI no-op": (
            summary["predict_vs_fastapi_noop"] >= TARGET_RATIO_NOOP
        ),
        "predict p99 <= 10 ms": single.p99_ms <= TARGET_P99_MS,
        "batch >= 500k rows/s": batch.rows_per_s >= TARGET_BATCH_ROWS_S,
    }
    if "mlflow /invocations (1 row)" in results:
        peer = results["mlflow /invocations (1 row)"]
        summary["predict_vs_mlflow"] = round(single.requests_per_s / peer.requests_per_s, 2)
        peer_batch = results["mlflow /invocations (batch)"]
        summary["batch_vs_mlflow"] = round(batch.rows_per_s / peer_batch.rows_per_s, 2)
        checks["predict >= 5x mlflow"] = summary["predict_vs_mlflow"] >= TARGET_RATIO_MLFLOW
    summary["targets_met"] = checks
    return summary


def render(results: dict[str, Measurement], summary: dict[str, Any]) -> str:
    """A plain-text table plus the ratios."""
    head = f"{'scenario':32} {'conns':>5} {'req/s':>10} {'rows/s':>11} {'p50 ms':>8} "
    head += f"{'p95 ms':>8} {'p99 ms':>8} {'errors':>6} {'server us':>10} {'wrk us':>8}"
    lines = [head, "-" * len(head)]
    for m in results.values():
        lines.append(
            f"{m.name:32} {m.connections:>5} {m.requests_per_s:>10.0f} {m.rows_per_s:>11.0f} "
            f"{m.p50_ms:>8.2f} {m.p95_ms:>8.2f} {m.p99_ms:>8.2f} {m.errors:>6} "
            f"{_cpu(m.server_cpu_us):>10} {_cpu(m.loadgen_cpu_us):>8}"
        )
    lines.append("(server us, wrk us: CPU microseconds per request, server processes and wrk)")
    lines.append("")
    for key, value in summary.items():
        if key == "in_process_us":
            lines.append("in process, medians (us per request; batch steps us per row):")
            lines.extend(f"  {name}: {figure}" for name, figure in value.items())
        elif key != "targets_met":
            lines.append(f"{key}: {value}")
    for check, met in summary["targets_met"].items():
        lines.append(f"target {check}: {'met' if met else 'MISSED'}")
    return "\n".join(lines)


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m imdb_api.benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--artifact", type=Path, help="artifact to serve (default: train one)")
    parser.add_argument(
        "--rows", type=int, default=50_000, help="rows to train on without --artifact"
    )
    parser.add_argument(
        "--out", type=Path, help="write the results as JSON here, and an HTML page beside it"
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per scenario")
    parser.add_argument("--connections", type=int, default=32, help="single-row connections")
    parser.add_argument("--batch-connections", type=int, default=4, help="batch connections")
    parser.add_argument("--batch-size", type=int, default=1000, help="movies per batch request")
    parser.add_argument("--workers", type=int, default=2, help="server processes (both servers)")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--access-log", action="store_true", help="keep the API's access log on")
    parser.add_argument("--skip-mlflow", action="store_true", help="leave mlflow out")
    return parser


def write_reports(
    args: argparse.Namespace,
    rounds: dict[str, list[Measurement]],
    medians: dict[str, Measurement],
    summary: dict[str, Any],
) -> None:
    """The JSON report at `args.out` and the HTML page beside it."""
    report = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "cpus": os.cpu_count(),
        "results": [asdict(m) for m in medians.values()],
        "rounds": {name: [asdict(m) for m in measured] for name, measured in rounds.items()},
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    # matplotlib (the benchmark group) loads only here: the table needs none of it.
    from imdb_api.benchmark_report import html_page  # noqa: PLC0415

    page = args.out.with_suffix(".html")
    page.write_text(html_page(report))
    print(f"report: {page}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when it ran (targets are reported, not enforced)."""
    args = build_parser().parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    with_mlflow = not args.skip_mlflow and importlib.util.find_spec("mlflow") is not None
    with tempfile.TemporaryDirectory(prefix="imdb-api-bench-") as tmp:
        workdir = Path(tmp)
        artifact = args.artifact or train_artifact(workdir, args.rows)
        movies = sample_movies(DISTINCT_MOVIES)
        singles = [json.dumps(m).encode() for m in movies]
        batch_movies = [movies[i % len(movies)] for i in range(args.batch_size)]
        batch = [json.dumps({"movies": batch_movies}).encode()]
        scripts = {
            "api /noop": (write_script(workdir, "noop", "/noop", singles), args.connections, 1),
            "api /noop/fastapi": (
                write_script(workdir, "noop-fastapi", "/noop/fastapi", singles),
                args.connections,
                1,
            ),
            "api /predict": (
                write_script(workdir, "one", "/predict", singles),
                args.connections,
                1,
            ),
            "api /predict/batch": (
                write_script(workdir, "batch", "/predict/batch", batch),
                args.batch_connections,
                args.batch_size,
            ),
        }
        api_port = free_port()
        servers = {
            "api": start_api(artifact, api_port, args.workers, args.access_log, workdir / "api.log")
        }
        urls = {"api": f"http://127.0.0.1:{api_port}"}
        if with_mlflow:
            records = [mlflow_record(m) for m in movies]
            one = [json.dumps({"dataframe_records": [r]}).encode() for r in records]
            many = [
                json.dumps(
                    {
                        "dataframe_records": [
                            records[i % len(records)] for i in range(args.batch_size)
                        ]
                    }
                ).encode()
            ]
            scripts["mlflow /invocations (1 row)"] = (
                write_script(workdir, "mlflow-one", "/invocations", one),
                args.connections,
                1,
            )
            scripts["mlflow /invocations (batch)"] = (
                write_script(workdir, "mlflow-batch", "/invocations", many),
                args.batch_connections,
                args.batch_size,
            )
            mlflow_port = free_port()
            servers["mlflow"] = start_mlflow(
                artifact, workdir, mlflow_port, args.workers, workdir / "mlflow.log"
            )
            urls["mlflow"] = f"http://127.0.0.1:{mlflow_port}"
        try:
            wait_until(api_port, "/ready", 120, servers["api"])
            if with_mlflow:
                wait_until(mlflow_port, "/ping", 180, servers["mlflow"])
            rounds: dict[str, list[Measurement]] = {name: [] for name in scripts}
            for _ in range(args.rounds):
                for name, (script, connections, rows) in scripts.items():
                    server = name.split(" ", 1)[0]
                    load = partial(
                        run_wrk,
                        wrk,
                        urls[server],
                        script,
                        connections=connections,
                        duration=args.duration,
                        threads=args.wrk_threads,
                    )
                    result, cpu = cpu_during(servers[server].pid, load)
                    rounds[name].append(measure(name, result, connections, rows, cpu))
        finally:
            for process in servers.values():
                stop(process)
        medians = {name: median_of(measured) for name, measured in rounds.items()}
        summary = summarize(medians, os.cpu_count())
        # Once the servers are gone, so that they and this do not compete for the cores.
        summary["in_process_us"] = handler_costs(artifact, singles[0], batch[0], args.batch_size)
        print(render(medians, summary))
        if args.out is not None:
            write_reports(args, rounds, medians, summary)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
