"""`imdb-trainer`: generate data, train, evaluate and verify artifacts."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from imdb_model.artifact import ArtifactVerificationError, verify_artifact
from imdb_model.schema import KNOWN_TITLE_TYPES
from imdb_trainer.download import DEFAULT_BASE_URL, DEFAULT_MAX_BYTES, download_imdb
from imdb_trainer.formats import DataError
from imdb_trainer.publish import OutputExistsError
from imdb_trainer.tracking import (
    TrackingError,
    TrackingUnavailableError,
    ending_run_on_error,
    finish_training_run,
    start_training_run,
    tag_release,
)

# Where the IMDb files are downloaded from, when not from IMDb itself (`download --base-url`).
BASE_URL_VAR: Final[str] = "MLOPS_IMDB_BASE_URL"
EXIT_OK: Final[int] = 0
EXIT_ERROR: Final[int] = 1
EXIT_USAGE: Final[int] = 2
EXIT_DATA: Final[int] = 3
EXIT_GATE: Final[int] = 4
EXIT_ARTIFACT: Final[int] = 5
EXIT_EXISTS: Final[int] = 6
EXIT_TRACKING: Final[int] = 7

EPILOG: Final[str] = """exit codes:
  0  success
  1  unexpected error (a bug or an environment problem; see the traceback)
  2  usage error (bad options)
  3  data error: missing/unreadable files, wrong header, too many bad rows, no usable rows
  4  gate failed: the new model is worse than the linear baseline or than --reference;
     nothing was published
  5  artifact verification failed (tampered, incomplete or unusable artifact)
  6  the output directory already exists (train without --overwrite)
  7  MLflow tracking failed (MLFLOW_TRACKING_URI set): before training, nothing was trained;
     after it, the artifact was published all the same
"""

ProgressCallback = Callable[[int], None]


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a share between 0 and 1")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _title_types(text: str) -> tuple[str, ...]:
    types = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in types if t not in KNOWN_TITLE_TYPES]
    if not types or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown title types {unknown}; choose from {', '.join(KNOWN_TITLE_TYPES)}"
        )
    return types


def _digest(text: str) -> str:
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", text):
        raise argparse.ArgumentTypeError(f"{text} is not an image digest (sha256:<64 hex digits>)")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to render --help in docs)."""
    parser = argparse.ArgumentParser(
        prog="imdb-trainer",
        description="Train, evaluate and verify the IMDb rating model; generate IMDb-format data.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    gen = command("generate", "write title.basics and title.ratings files of synthetic data")
    gen.add_argument("--out", type=Path, required=True, help="directory to write the files into")
    gen.add_argument(
        "--rows", type=_positive, default=20_000, help="rated titles to generate (default 20000)"
    )
    gen.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    gen.add_argument("--plain", action="store_true", help="write plain .tsv instead of .tsv.gz")
    gen.add_argument(
        "--unrated-ratio",
        type=float,
        default=1.0,
        help="unrated title.basics rows per rated title, mostly TV episodes (default 1.0)",
    )
    gen.add_argument(
        "--bad-share",
        type=_share,
        default=0.002,
        help="share of deliberately malformed rows, per rated title (default 0.002)",
    )

    trn = command("train", "train a model on DIR and publish an artifact (with its report)")
    trn.add_argument("--data", type=Path, required=True, help="directory with the two IMDb files")
    trn.add_argument("--out", type=Path, required=True, help="artifact directory to create")
    trn.add_argument(
        "--reference",
        type=Path,
        help="champion artifact: fail (exit 4) when the new model is worse on the same "
        "held-out rows",
    )
    trn.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="RMSE by which the new model may be worse than --reference (default 0.01)",
    )
    trn.add_argument(
        "--max-bad-share",
        type=_share,
        default=0.02,
        help="fail (exit 3) when bad rows / examined rows exceeds this (default 0.02)",
    )
    trn.add_argument(
        "--title-types",
        type=_title_types,
        default=("movie",),
        help="comma-separated titleType values to model (default movie)",
    )
    trn.add_argument(
        "--test-share",
        type=_share,
        default=0.2,
        help="held-out share, by tconst hash (default 0.2)",
    )
    trn.add_argument(
        "--valid-share",
        type=_share,
        default=0.1,
        help="early-stopping share, by tconst hash (default 0.1)",
    )
    trn.add_argument(
        "--num-rounds", type=_positive, default=200, help="max boosting rounds (default 200)"
    )
    trn.add_argument(
        "--learning-rate", type=float, default=0.15, help="LightGBM learning rate (default 0.15)"
    )
    trn.add_argument(
        "--num-leaves", type=_positive, default=31, help="leaves per tree (default 31)"
    )
    trn.add_argument(
        "--min-data-in-leaf", type=_positive, default=40, help="min rows per leaf (default 40)"
    )
    trn.add_argument(
        "--early-stopping",
        type=_positive,
        default=20,
        help="stop after this many rounds without validation improvement (default 20)",
    )
    trn.add_argument(
        "--threads", type=_positive, default=None, help="CPU threads (default: cores, at most 4)"
    )
    trn.add_argument("--seed", type=int, default=0, help="LightGBM seed (default 0)")
    trn.add_argument("--no-report", action="store_true", help="skip the Markdown/PNG report")
    trn.add_argument("--overwrite", action="store_true", help="replace an existing --out")

    rel = command(
        "track-release",
        "tag the MLflow run of an artifact (MLFLOW_TRACKING_URI) with the release it became",
    )
    run_of = rel.add_mutually_exclusive_group(required=True)
    run_of.add_argument(
        "--artifact",
        type=Path,
        metavar="DIR",
        help="artifact trained with tracking: its run is in DIR.mlflow-run.json, beside it",
    )
    run_of.add_argument("--run-id", help="the MLflow run id")
    rel.add_argument("--release", required=True, metavar="TAG", help="the release, e.g. its tag")
    rel.add_argument(
        "--digest", type=_digest, metavar="sha256:HEX", help="the release image's digest"
    )

    ev = command("evaluate", "print an artifact's metrics on a data set as JSON")
    ev.add_argument("--artifact", type=Path, required=True, help="artifact directory")
    ev.add_argument("--data", type=Path, required=True, help="directory with the two IMDb files")
    ev.add_argument(
        "--split",
        choices=("test", "all"),
        default="test",
        help="test: the artifact's held-out rule (default); all: every usable row",
    )
    ev.add_argument(
        "--max-bad-share",
        type=_share,
        default=0.02,
        help="fail (exit 3) above this share of bad rows (default 0.02)",
    )

    ver = command("verify", "check that an artifact is complete and untampered (exit 0 or 5)")
    ver.add_argument("artifact", type=Path, help="artifact directory")

    dl = command(
        "download",
        "download title.basics.tsv.gz and title.ratings.tsv.gz, check them whole and print "
        "their record (also written to DIR/download.json) as JSON; a failed download (exit 3) "
        "leaves DIR as it was",
    )
    dl.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="directory to download into"
    )
    dl.add_argument(
        "--base-url",
        # A team's mirror of the datasets (and the CD rehearsal's local stand-in) is named by
        # the variable; an empty one, as GitHub gives an unset `vars.X`, means the default.
        default=os.environ.get(BASE_URL_VAR) or DEFAULT_BASE_URL,
        metavar="URL",
        help=f"http(s) URL the files are under (default: ${BASE_URL_VAR}, else {DEFAULT_BASE_URL})",
    )
    dl.add_argument(
        "--max-bytes",
        type=_positive,
        default=DEFAULT_MAX_BYTES,
        metavar="N",
        help=f"refuse a file larger than this many bytes (default {DEFAULT_MAX_BYTES})",
    )
    return parser


class _Bars:
    """Rich progress bars on stderr behind the trainer's `progress(label, total)` callbacks."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    def __call__(self, label: str, total: int) -> ProgressCallback:
        task = self._progress.add_task(label, total=total)

        def update(completed: int) -> None:
            self._progress.update(task, completed=completed)

        return update


@contextmanager
def _bars(console: Console, quiet: bool) -> Iterator[_Bars | None]:
    if quiet:
        yield None
        return
    progress = Progress(
        TextColumn("{task.description:<18}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    with progress:
        yield _Bars(progress)


def _metrics_table(manifest: dict[str, Any]) -> Table:
    table = Table(title=f"held-out metrics, version {manifest['version']}")
    for column in ("", "RMSE", "MAE", "R²", "rows"):
        table.add_column(column, justify="right" if column else "left")
    for key, label in (
        ("model", "model"),
        ("linear_baseline", "linear baseline"),
        ("mean_baseline", "mean baseline"),
    ):
        m = manifest["metrics"]["test"][key]
        table.add_row(
            label, f"{m['rmse']:.4f}", f"{m['mae']:.4f}", f"{m['r2']:.4f}", str(m["rows"])
        )
    return table


def _generate(args: argparse.Namespace, err: Console) -> int:
    from imdb_trainer.generate import generate  # noqa: PLC0415  (keeps --help fast)

    try:
        result = generate(
            args.out,
            rows=args.rows,
            seed=args.seed,
            gzipped=not args.plain,
            unrated_ratio=args.unrated_ratio,
            bad_share=args.bad_share,
        )
    except ValueError as exc:
        err.print(f"error: {exc}", markup=False)
        return EXIT_USAGE
    if not args.quiet:
        err.print(
            f"wrote {result.basics_path} ({result.basics_rows} rows) and "
            f"{result.ratings_path} ({result.ratings_rows} rows)"
        )
    return EXIT_OK


def _train(args: argparse.Namespace, out: Console, err: Console) -> int:
    from imdb_trainer.train import TrainOptions, train  # noqa: PLC0415

    options = TrainOptions(
        data_dir=args.data,
        out=args.out,
        reference=args.reference,
        title_types=args.title_types,
        max_bad_share=args.max_bad_share,
        tolerance=args.tolerance,
        test_share=args.test_share,
        valid_share=args.valid_share,
        num_rounds=args.num_rounds,
        learning_rate=args.learning_rate,
        num_leaves=args.num_leaves,
        min_data_in_leaf=args.min_data_in_leaf,
        early_stopping=args.early_stopping,
        seed=args.seed,
        report=not args.no_report,
        overwrite=args.overwrite,
    )
    if args.threads is not None:
        options.threads = args.threads
    # MLflow, with MLFLOW_TRACKING_URI only: the run opens before training (exit 2 without
    # mlflow, 7 without a server) and is logged after it, without ever unpublishing.
    run = start_training_run(options)
    with _bars(err, args.quiet) as bars, ending_run_on_error(run):
        outcome = train(options, progress=bars, log=None if args.quiet else err.print)
    out.print(_metrics_table(outcome.manifest))
    tracked = finish_training_run(
        run,
        outcome,
        log=None if args.quiet else err.print,
        warn=lambda text: err.print(text, markup=False),
    )
    if not outcome.gate.passed:
        for reason in outcome.gate.reasons:
            err.print(f"gate failed: {reason}")
        err.print("nothing was published")
        return EXIT_GATE
    return EXIT_OK if tracked else EXIT_TRACKING


def _track_release(args: argparse.Namespace) -> int:
    done = tag_release(
        release=args.release, digest=args.digest, run_id=args.run_id, artifact=args.artifact
    )
    _print_data(done)
    return EXIT_OK


def _evaluate(args: argparse.Namespace, err: Console) -> int:
    from imdb_trainer.train import evaluate  # noqa: PLC0415

    with _bars(err, args.quiet) as bars:
        result = evaluate(args.artifact, args.data, args.split, args.max_bad_share, bars)
    _print_data(result)
    return EXIT_OK


def _print_data(document: object) -> None:
    """JSON on stdout for scripts: plain, whatever colours the console would use (FORCE_COLOR
    in CI makes rich colour even a pipe)."""
    print(json.dumps(document, indent=2))


def _verify(args: argparse.Namespace) -> int:
    artifact = verify_artifact(args.artifact)
    summary = {
        "ok": True,
        "artifact": str(args.artifact),
        "version": artifact.version,
        "files": len(artifact.manifest["files"]),
    }
    _print_data(summary)
    return EXIT_OK


def _download(args: argparse.Namespace, err: Console) -> int:
    with _bars(err, args.quiet) as bars:
        record = download_imdb(
            args.out, base_url=args.base_url, max_bytes=args.max_bytes, progress=bars
        )
    _print_data(record.to_dict())
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (see EPILOG)."""
    args = build_parser().parse_args(argv)
    out = Console(soft_wrap=True)
    err = Console(stderr=True, soft_wrap=True)
    commands: dict[str, Callable[[], int]] = {
        "generate": lambda: _generate(args, err),
        "train": lambda: _train(args, out, err),
        "track-release": lambda: _track_release(args),
        "evaluate": lambda: _evaluate(args, err),
        "verify": lambda: _verify(args),
        "download": lambda: _download(args, err),
    }
    try:
        return commands[args.command]()
    except DataError as exc:
        err.print(f"data error: {exc}", markup=False)
        return EXIT_DATA
    except ArtifactVerificationError as exc:
        err.print(f"artifact error: {exc}", markup=False)
        return EXIT_ARTIFACT
    except OutputExistsError as exc:
        err.print(f"error: {exc}", markup=False)
        return EXIT_EXISTS
    except TrackingUnavailableError as exc:
        err.print(f"error: {exc}", markup=False)
        return EXIT_USAGE
    except TrackingError as exc:
        err.print(f"tracking error: {exc}", markup=False)
        return EXIT_TRACKING


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
