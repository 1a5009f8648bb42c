"""`imdb-api`: serve a model artifact over HTTP.

Every setting has a flag and an environment variable (`IMDB_API_<NAME>`); a flag wins over the
environment, which wins over the default. The flags are generated from `Settings`, so `--help`
always lists all of them.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from imdb_api.server import serve
from imdb_api.settings import ENV_PREFIX, Settings

EXIT_USAGE: Final[int] = 2

EPILOG: Final[str] = """exit codes:
  0  stopped by SIGTERM/SIGINT after draining in-flight requests
  1  could not start (address in use, ...) or a worker failed
  2  invalid options or environment settings

The process starts and answers /health even when the artifact is missing or fails
verification; /ready then stays 503 with the reasons, and no prediction is ever served.
"""


def _flag_type(annotation: Any) -> tuple[Any, dict[str, Any]]:
    """argparse `type` and extra keywords for a Settings field annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is typing.Literal:
        return str, {"choices": list(typing.get_args(annotation))}
    if annotation is bool:
        return None, {"action": argparse.BooleanOptionalAction}
    if annotation in (int, float, str, Path):
        return annotation, {}
    raise TypeError(f"no flag type for {annotation!r}")  # pragma: no cover (a new field type)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one flag per setting."""
    parser = argparse.ArgumentParser(
        prog="imdb-api",
        description="Serve the IMDb rating model: /predict, /predict/batch, /health, /ready, "
        "/model/info, /metrics (OpenAPI at /openapi.json, docs at /docs).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, info in Settings.model_fields.items():
        kind, extra = _flag_type(info.annotation)
        if kind is not None:
            extra["type"] = kind
            if "choices" not in extra:
                extra["metavar"] = name.upper()
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=argparse.SUPPRESS,
            help=f"{info.description} (env {ENV_PREFIX}{name.upper()}; default {info.default})",
            **extra,
        )
    return parser


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Settings from the environment, overridden by the flags in `argv`."""
    overrides = vars(build_parser().parse_args(argv))
    return Settings(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `imdb-api`."""
    try:
        settings = parse_settings(argv)
    except ValidationError as exc:
        print(f"imdb-api: invalid settings:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    if settings.workers > 1 and settings.port == 0:
        print("imdb-api: --workers above 1 needs a fixed --port, not 0", file=sys.stderr)
        return EXIT_USAGE
    return serve(settings)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
