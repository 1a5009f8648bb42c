"""CPU accounting of the benchmark: process trees from /proc, in-process handler costs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imdb_api import cpu
from imdb_api.benchmark import sample_movies

# A child that starts a grandchild; both burn CPU until killed.
BURN = "import time\nwhile True: sum(range(10_000))\n"
PARENT = (
    "import subprocess, sys\n"
    f"subprocess.Popen([sys.executable, '-c', {BURN!r}])\n"
    f"exec({BURN!r})\n"
)


def test_a_process_tree_cpu_counts_the_grandchildren() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT])
    try:
        deadline = time.monotonic() + 20
        children: list[str] = []
        while time.monotonic() < deadline and not children:
            children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
            time.sleep(0.05)
        assert children, "the grandchild never started"
        start_tree = cpu.process_tree_cpu(parent.pid)
        start_parent = cpu.process_tree_cpu(int(children[0]))
        assert start_tree is not None
        assert start_parent is not None
        time.sleep(1.0)
        grew_tree = cpu.process_tree_cpu(parent.pid)
        grew_child = cpu.process_tree_cpu(int(children[0]))
        assert grew_tree is not None
        assert grew_child is not None
        # Two busy processes on the tree, one in the grandchild's own figure.
        assert grew_child - start_parent > 0.1
        assert grew_tree - start_tree > (grew_child - start_parent) + 0.1
    finally:
        for pid in children:
            os.kill(int(pid), signal.SIGKILL)
        parent.kill()
        parent.wait()


def test_a_process_tree_cpu_is_none_for_a_gone_process(tmp_path: Path) -> None:
    assert cpu.process_tree_cpu(424242, proc=tmp_path) is None


def test_command_names_with_spaces_and_parentheses_are_parsed(tmp_path: Path) -> None:
    # /proc/PID/stat: pid (comm) state ppid ... utime(14) stime(15); comm may hold ") (".
    def stat(pid: int, comm: str, ppid: int, utime: int, stime: int) -> None:
        fields = ["S", str(ppid), *["0"] * 9, str(utime), str(stime), *["0"] * 10]
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(f"{pid} ({comm}) {' '.join(fields)}\n")

    ticks = cpu._ticks_per_second()
    stat(10, "uvicorn", 1, ticks, 0)
    stat(11, "a) (b c", 10, 0, ticks)
    stat(12, "worker", 11, ticks, ticks)
    stat(13, "unrelated", 1, 50 * ticks, 0)
    (tmp_path / "self").mkdir()  # not a process id: ignored
    assert cpu.process_tree_cpu(10, proc=tmp_path) == 4.0
    assert cpu.process_tree_cpu(12, proc=tmp_path) == 2.0


def test_run_now_refuses_a_coroutine_that_waits() -> None:
    async def waits() -> None:
        await asyncio.sleep(0)

    async def answers() -> int:
        return 7

    assert cpu.run_now(answers()) == 7
    with pytest.raises(RuntimeError, match="waited"):
        cpu.run_now(waits())


def test_handler_costs_time_every_step(artifact: Path) -> None:
    movies = sample_movies(20)
    batch = json.dumps({"movies": movies}).encode()
    costs = cpu.handler_costs(artifact, json.dumps(movies[0]).encode(), batch, 20, repeats=3)
    assert set(costs) == {
        "noop_us_per_request",
        "predict_us_per_request",
        "batch_us_per_request",
        "batch_us_per_row",
        "batch_decode_and_check_us_per_row",
        "batch_transform_us_per_row",
        "batch_model_us_per_row",
        "batch_encode_and_metrics_us_per_row",
    }
    assert all(value > 0 for value in costs.values())
    assert costs["batch_us_per_row"] == pytest.approx(costs["batch_us_per_request"] / 20, rel=0.01)


def test_handler_costs_refuse_a_body_the_api_refuses(artifact: Path, tmp_path: Path) -> None:
    good = json.dumps(sample_movies(1)[0]).encode()
    with pytest.raises(RuntimeError, match="not a plain valid batch"):
        cpu.handler_costs(artifact, good, b'{"movies": [{"primaryTitle": 5}]}', 1, repeats=1)
    with pytest.raises(RuntimeError, match="predict_one answered 422"):
        cpu.handler_costs(artifact, b"{}", json.dumps({"movies": []}).encode(), 1, repeats=1)
    with pytest.raises(RuntimeError, match="did not load"):
        cpu.handler_costs(tmp_path, good, good, 1, repeats=1)


def test_cpu_during_counts_the_tree_and_the_reaped_load_generator() -> None:
    burner = subprocess.Popen([sys.executable, "-c", BURN])
    try:

        def load() -> str:
            subprocess.run([sys.executable, "-c", "sum(range(3_000_000))"], check=True)
            time.sleep(0.5)
            return "done"

        result, (tree, reaped) = cpu.cpu_during(burner.pid, load)
        assert result == "done"
        assert tree is not None
        assert tree > 0.2  # the burner ran all along
        assert reaped > 0.01  # the child `load` ran and waited for
        _, (gone, _) = cpu.cpu_during(424242424, lambda: None)
        assert gone is None  # no such process: no figure, not a zero
    finally:
        burner.kill()
        burner.wait()
