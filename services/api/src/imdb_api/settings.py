"""Service settings, read from the environment (prefix `IMDB_API_`) and overridable by the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX: Final[str] = "IMDB_API_"
LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class Settings(BaseSettings):
    """Everything the service can be configured with; each field is `IMDB_API_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    artifact: Path | None = Field(
        default=None, description="model artifact directory (verified at start)"
    )
    release_file: Path | None = Field(
        default=None,
        description="the release record the image was built as (/model/info shows it; its model "
        "must be the artifact's, else the service is not ready)",
    )
    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port to listen on")
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="server processes sharing the port (SO_REUSEPORT); metrics are aggregated",
    )
    worker_restart_limit: int = Field(
        default=5,
        ge=0,
        description="a worker that dies is replaced, unless this many were replaced within "
        "`worker_restart_window_s` (a crash loop): then the service stops, exit 1",
    )
    worker_restart_window_s: float = Field(
        default=60.0, gt=0, description="the window of the crash-loop limit, in seconds"
    )
    max_batch: int = Field(
        default=1000, ge=1, description="most movies in one /predict/batch request (more: 413)"
    )
    max_body_bytes: int = Field(
        default=2 * 1024 * 1024,
        ge=1024,
        description="largest request body in bytes (more: 413, refused before it is read)",
    )
    max_string_length: int = Field(
        default=500, ge=1, description="longest primaryTitle/originalTitle in characters"
    )
    graceful_shutdown_s: float = Field(
        default=20.0,
        ge=0.0,
        description="on SIGTERM, how long in-flight requests may take before they are cancelled",
    )
    log_level: LogLevel = Field(default="info", description="level of the JSON logs on stderr")
    access_log: bool = Field(default=True, description="one JSON log line per request")
    onnx_threads: int = Field(
        default=1, ge=1, description="onnxruntime threads per worker (1 suits a web server)"
    )
    fast_path: bool = Field(
        default=True,
        description="answer the prediction routes without FastAPI's routing (same behaviour)",
    )
    benchmark_noop: bool = Field(
        default=False,
        description="expose POST /noop, an endpoint that does no work (the benchmark's ceiling)",
    )
    debug_delay_s: float = Field(
        default=0.0,
        ge=0.0,
        description="test-only: sleep this long in every prediction request (drain tests)",
    )
