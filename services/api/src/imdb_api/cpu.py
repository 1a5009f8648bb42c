"""Where the benchmark's CPU goes: per-process CPU time and in-process handler costs.

Throughput on a shared 2-core machine drifts by up to 2x within minutes, so req/s alone cannot
tell a code change from the machine's mood. Two figures that drift much less sit beside it:

* CPU seconds per request, of the server's whole process tree (read from /proc around each wrk
  run) and of the load generator (the benchmark's reaped children);
* the in-process cost of the request handlers and of each step of a batch (decode and check,
  transform, model, encode), timed in this process on the same artifact, medians over repeats.

With them, a target can be turned into a CPU budget: 500,000 rows/s on 2 cores leaves 4 us of
CPU per row for the server and the load generator together.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from imdb_api.app import Api, ApiError, ratings_body
from imdb_api.model_state import ModelState
from imdb_api.settings import Settings
from imdb_api.validation import MovieValidator
from imdb_model.features import transform_columns

PROC: Path = Path("/proc")
T = TypeVar("T")
# Single-row handlers are timed in blocks of this many calls (a batch: one call per sample).
SINGLE_BLOCK = 100


def _ticks_per_second() -> int:
    return os.sysconf("SC_CLK_TCK")


def process_tree_cpu(root: int, proc: Path = PROC) -> float | None:
    """User plus system CPU seconds of `root` and its living descendants; None without /proc."""
    if not (proc / str(root) / "stat").exists():
        return None
    parents: dict[int, int] = {}
    used: dict[int, int] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        # The command name (field 2) may hold spaces and parentheses: split after its last ")".
        fields = stat.rsplit(")", 1)[1].split()
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        used[pid] = int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(used.get(pid, 0) for pid in tree) / _ticks_per_second()


def reaped_children_cpu() -> float:
    """CPU seconds of this process's children that have ended and been waited for (wrk)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_during(pid: int, work: Callable[[], T]) -> tuple[T, tuple[float | None, float]]:
    """`work()`'s result, and the CPU seconds that `pid`'s process tree and this process's reaped
    children (the load generator `work` ran and waited for) used meanwhile."""
    tree_before, reaped_before = process_tree_cpu(pid), reaped_children_cpu()
    result = work()
    tree_after = process_tree_cpu(pid)
    tree = None if tree_before is None or tree_after is None else tree_after - tree_before
    return result, (tree, reaped_children_cpu() - reaped_before)


def run_now(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never waits (a handler fed by an instant `receive`) to its end."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("the coroutine waited for something; run_now cannot finish it")


def elapsed_us(work: Callable[[], object], calls: int = 1) -> float:
    """Wall time of `calls` calls of `work`, in microseconds."""
    start = time.perf_counter()
    for _ in range(calls):
        work()
    return (time.perf_counter() - start) * 1e6


def handler_costs(
    artifact: Path, single: bytes, batch: bytes, rows: int, repeats: int = 100
) -> dict[str, float]:
    """In-process microseconds: per request for the handlers, per row for the batch's steps."""
    settings = Settings(artifact=artifact, access_log=False, benchmark_noop=True)
    state = ModelState(artifact, threads=settings.onnx_threads)
    state.load()
    if not state.ready:
        raise RuntimeError("the artifact did not load: " + "; ".join(state.reasons))
    api = Api(settings, state)
    headers = [(b"content-type", b"application/json")]

    def request(handler: Callable[..., Coroutine[Any, Any, Any]], body: bytes) -> Any:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            reply = run_now(handler(receive, headers))
        except ApiError as refused:
            reply = refused.reply()
        if reply.status != 200:
            raise RuntimeError(f"{handler.__name__} answered {reply.status}: {reply.body!r}")
        return reply

    validator = MovieValidator(state.schema, settings.max_string_length)
    predictor = state.predictor
    assert predictor is not None  # noqa: S101 - ready
    columns = validator.decode_columns(batch, settings.max_batch)
    if columns is None:
        raise RuntimeError("the batch body is not a plain valid batch")
    features = transform_columns(columns, predictor.schema)
    ratings = predictor.predict_matrix(features)

    def encode() -> bytes:
        api.metrics.observe_batch(ratings)
        return ratings_body(ratings, state.version)

    # name: (work, calls per sample, what one sample is divided by)
    timed: dict[str, tuple[Callable[[], object], int, int]] = {
        "noop_us_per_request": (lambda: request(api.noop, single), SINGLE_BLOCK, SINGLE_BLOCK),
        "predict_us_per_request": (
            lambda: request(api.predict_one, single), SINGLE_BLOCK, SINGLE_BLOCK,
        ),
        "batch_us_per_request": (lambda: request(api.predict_batch, batch), 1, 1),
        "batch_decode_and_check_us_per_row": (
            lambda: validator.decode_columns(batch, settings.max_batch), 1, rows,
        ),
        "batch_transform_us_per_row": (
            lambda: transform_columns(columns, predictor.schema), 1, rows,
        ),
        "batch_model_us_per_row": (lambda: predictor.predict_matrix(features), 1, rows),
        "batch_encode_and_metrics_us_per_row": (encode, 1, rows),
    }  # fmt: skip
    # Blocks of calls, interleaved, so that a slow spell of the machine hits every figure alike;
    # a block of one kind of call keeps the caches warm for it, as a stream of such requests does.
    samples: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(repeats):
        for name, (work, calls, per) in timed.items():
            samples[name].append(elapsed_us(work, calls) / per)
    result = {name: round(statistics.median(values), 3) for name, values in samples.items()}
    result["batch_us_per_row"] = round(result["batch_us_per_request"] / rows, 3)
    return result
