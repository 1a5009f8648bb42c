"""Running the service: uvicorn workers with a clean SIGTERM drain, and a small supervisor.

On SIGTERM (or SIGINT) a worker stops accepting connections at once, lets in-flight requests
finish for up to `graceful_shutdown_s` (then cancels them), runs the app's shutdown and exits 0:
the blue-green drain relies on that. uvicorn alone would re-raise the signal after its graceful
shutdown and so end with status 143; `GracefulServer` keeps the drain and drops the re-raise.

With `workers > 1` each worker binds its own socket with SO_REUSEPORT, so the kernel spreads
connections over them and the supervisor holds no listening socket: once the workers have
closed theirs, new connections are refused rather than queued behind a draining server.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Generator
from types import FrameType
from typing import Final

import uvicorn

from imdb_api.app import create_app
from imdb_api.logs import configure_logging
from imdb_api.metrics import MULTIPROCESS_ENV, mark_worker_dead, record_restarts
from imdb_api.settings import Settings

logger = logging.getLogger("imdb_api.server")

EXIT_OK: Final[int] = 0
EXIT_FAILED: Final[int] = 1
# The supervisor gives workers this long beyond the grace period before it kills them.
KILL_MARGIN_S: Final[float] = 5.0
_SIGNALS: Final[tuple[signal.Signals, ...]] = (signal.SIGTERM, signal.SIGINT)


class GracefulServer(uvicorn.Server):
    """uvicorn's server without the signal re-raise after a graceful shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Turn SIGTERM/SIGINT into a graceful shutdown while serving; restore handlers after."""
        if threading.current_thread() is not threading.main_thread():  # pragma: no cover
            yield
            return
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        logger.info("received %s: draining", signal.Signals(sig).name)
        self.handle_exit(sig, frame)


def bind_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A bound TCP socket for host:port (SO_REUSEPORT when several workers share the port)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _loop_name() -> str:
    # uvloop is a dependency except on Windows, where asyncio's loop is the fallback.
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def build_server(settings: Settings, verify_first: bool = False) -> GracefulServer:
    """A uvicorn server for the app (uvloop, httptools, our JSON logs, no uvicorn access log).

    `verify_first` loads the artifact before the server starts, for workers sharing a port: the
    kernel hands connections to any listening worker, so a worker still verifying would answer
    503 while a sibling's /ready says 200. Connections queued for it meanwhile wait instead.
    """
    app = create_app(settings)
    if verify_first:
        app.state.load()
    config = uvicorn.Config(
        app,
        loop=_loop_name(),
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=int(settings.graceful_shutdown_s + 0.999),
        timeout_keep_alive=5,
        backlog=2048,
    )
    return GracefulServer(config)


def run_worker(settings: Settings, reuse_port: bool = False) -> int:
    """Serve until SIGTERM/SIGINT in this process; 0 after a clean drain, 1 if it never started."""
    configure_logging(settings.log_level)
    try:
        sock = bind_socket(settings.host, settings.port, reuse_port)
    except OSError as exc:
        logger.error("cannot listen on %s:%s: %s", settings.host, settings.port, exc)
        return EXIT_FAILED
    server = build_server(settings, verify_first=reuse_port)
    host, port = sock.getsockname()[:2]
    logger.info("listening", extra={"host": host, "port": port, "pid": os.getpid()})
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        mark_worker_dead(os.getpid())
    return EXIT_OK if server.started else EXIT_FAILED


def _worker_entry(settings: Settings) -> None:
    """What a spawned worker runs (measured: coverage's multiprocessing support)."""
    raise SystemExit(run_worker(settings, reuse_port=True))


class CrashLoop:
    """The supervisor's restart budget: `limit` replacements within any `window_s`."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit, self.window_s = limit, window_s
        self.restarts: list[float] = []  # when each replacement happened (monotonic)

    def allow(self, now: float) -> bool:
        """Record a replacement at `now` if the budget allows it; False: a crash loop."""
        recent = [t for t in self.restarts if now - t < self.window_s]
        if len(recent) >= self.limit:
            return False
        self.restarts.append(now)
        return True


def run_supervisor(settings: Settings) -> int:
    """Start `settings.workers` worker processes and keep them running; on SIGTERM drain them
    all, then exit.

    A worker that dies on its own is replaced (its slot gets a new process; the others keep
    serving), and counted in `imdb_api_worker_restarts_total`. More than
    `worker_restart_limit` replacements within `worker_restart_window_s` is a crash loop: the
    service stops (exit 1) and its container's restart policy, with its own backoff, takes over.
    Exits 0 when every worker drained cleanly on SIGTERM.
    """
    configure_logging(settings.log_level)
    metrics_dir = tempfile.mkdtemp(prefix="imdb-api-metrics-")
    os.environ[MULTIPROCESS_ENV] = metrics_dir
    stop = threading.Event()

    def on_signal(sig: int, frame: FrameType | None) -> None:
        logger.info("supervisor received %s: draining workers", signal.Signals(sig).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in _SIGNALS}
    context = multiprocessing.get_context("spawn")

    def new_worker(slot: int) -> multiprocessing.process.BaseProcess:
        worker = context.Process(
            target=_worker_entry, args=(settings,), name=f"imdb-api-worker-{slot}"
        )
        worker.start()
        return worker

    budget = CrashLoop(settings.worker_restart_limit, settings.worker_restart_window_s)
    workers: list[multiprocessing.process.BaseProcess] = []
    failed = False
    try:
        record_restarts(0)
        workers = [new_worker(slot) for slot in range(settings.workers)]
        while not stop.wait(0.2):
            dead = [(slot, w) for slot, w in enumerate(workers) if not w.is_alive()]
            for slot, worker in dead:
                if stop.is_set():
                    break
                mark_worker_dead(worker.pid or 0)
                if not budget.allow(time.monotonic()):
                    logger.error(
                        "crash loop: stopping the service",
                        extra={"restarts": len(budget.restarts), "pid": worker.pid,
                               "code": worker.exitcode, "window_s": budget.window_s},
                    )  # fmt: skip
                    failed = True
                    break
                workers[slot] = new_worker(slot)
                record_restarts(len(budget.restarts))
                logger.error(
                    "worker died; replaced",
                    extra={"pid": worker.pid, "code": worker.exitcode,
                           "new_pid": workers[slot].pid, "restarts": len(budget.restarts)},
                )  # fmt: skip
            if failed:
                break
        for worker in workers:
            if worker.is_alive() and worker.pid is not None:
                os.kill(worker.pid, signal.SIGTERM)
        deadline = time.monotonic() + settings.graceful_shutdown_s + KILL_MARGIN_S
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                logger.error("worker did not drain in time; killing it", extra={"pid": worker.pid})
                worker.kill()
                worker.join()
                failed = True
            elif worker.exitcode not in (0, -signal.SIGTERM):
                # -SIGTERM: a worker still starting up when told to stop (nothing in flight).
                failed = True
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.environ.pop(MULTIPROCESS_ENV, None)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    logger.info("supervisor exiting", extra={"failed": failed})
    return EXIT_FAILED if failed else EXIT_OK


def serve(settings: Settings) -> int:
    """Run the service as configured (one process, or a supervisor with workers)."""
    if settings.workers > 1:
        return run_supervisor(settings)
    return run_worker(settings)
