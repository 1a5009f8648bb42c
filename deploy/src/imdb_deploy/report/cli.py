"""Write the deployment report for some deploy timelines.

python -m imdb_deploy.report TIMELINE.json ...     report on these timelines
python -m imdb_deploy.report --latest              the newest timeline per environment and action
                                                   in reports/deploys (--deploys DIR elsewhere)

Writes deployment-report.md, .html and .json into --out (default: reports/), prints their paths
and, when GITHUB_STEP_SUMMARY names a file (GitHub Actions), appends the Markdown to it.
When --image-scan (default: reports/image-scan.json, written by the images' scans) is there, the
Markdown and HTML say per image whether its OS packages were scanned for vulnerabilities; when it
is not (older runs), they say nothing about it.
Deploys are reported in time order. Exit status: 0 written (whatever the deploys' results: the
report is not a gate), 1 the report could not be written, 2 a usage or input problem.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from imdb_deploy.bluegreen.config import REPO_ROOT
from imdb_deploy.report.timeline import (
    TIMELINES_VAR,
    Deploy,
    TimelineError,
    in_order,
    latest,
    load_all,
    timelines_dir,
)

REPORTS = REPO_ROOT / "reports"
BASENAME = "deployment-report"
SUMMARY_VAR = "GITHUB_STEP_SUMMARY"
# What the images' scans covered (imdb_deploy.images.scan writes it beside their reports).
IMAGE_SCAN = REPORTS / "image-scan.json"


class ImageScanError(ValueError):
    """The image scan summary is there but not readable as one; the message names the file."""


@dataclass(frozen=True)
class ImageScan:
    """One image's entry in the image scan summary: were its OS packages scanned?"""

    name: str
    os_packages_scanned: bool
    trivy_installed: bool
    trivy_report: str | None
    reason: str


def read_image_scans(path: Path) -> list[ImageScan]:
    """The entries of the image scan summary at `path`; none when there is no such file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ImageScanError(f"{path}: not an image scan summary ({exc})") from exc
    entries = data.get("images") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ImageScanError(f"{path}: not an image scan summary (no list of images)")
    scans = []
    for number, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        scanned = entry.get("os_packages_scanned") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not isinstance(scanned, bool):
            raise ImageScanError(f"{path}: images.{number} has no name or os_packages_scanned")
        trivy = entry.get("trivy")
        installed = entry.get("trivy_installed")
        scans.append(
            ImageScan(
                name=name,
                os_packages_scanned=scanned,
                # Older summaries may lack it: a scan that ran means Trivy was there.
                trivy_installed=installed if isinstance(installed, bool) else trivy is not None,
                trivy_report=trivy if isinstance(trivy, str) else None,
                reason=str(entry.get("reason") or ""),
            )
        )
    return scans


def write_report(
    deploys: Sequence[Deploy],
    out: Path,
    generated: datetime | None = None,
    image_scans: Sequence[ImageScan] = (),
) -> tuple[list[Path], str]:
    """Write the three forms into `out`; return their paths and the Markdown."""
    # Imported here: matplotlib takes a second to load, and a usage or input error needs none.
    from imdb_deploy.report.render import html_page, json_report, markdown  # noqa: PLC0415

    generated = generated or datetime.now(timezone.utc)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(deploys, generated, image_scans)
    paths = [out / f"{BASENAME}.md", out / f"{BASENAME}.html", out / f"{BASENAME}.json"]
    paths[0].write_text(text + "\n", encoding="utf-8")
    paths[1].write_text(html_page(deploys, generated, image_scans), encoding="utf-8")
    # allow_nan=False: the input was validated finite, and the output must stay strict JSON.
    document = json.dumps(json_report(deploys, generated), indent=2, allow_nan=False)
    paths[2].write_text(document + "\n", encoding="utf-8")
    return paths, text


def append_summary(path: Path, text: str) -> None:
    """Append (never overwrite: earlier steps of the job wrote there too) the Markdown."""
    with path.open("a", encoding="utf-8") as summary:
        # A blank line first, so our heading does not run into what is already there.
        if summary.tell() > 0:
            summary.write("\n")
        summary.write(text + "\n")


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the CLI; returns the exit status (see the module docstring)."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="python -m imdb_deploy.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("timelines", nargs="*", type=Path, metavar="TIMELINE.json")
    parser.add_argument(
        "--latest", action="store_true",
        help="add the newest timeline per environment and action found in --deploys",
    )  # fmt: skip
    parser.add_argument(
        "--deploys", type=Path, default=timelines_dir(), metavar="DIR",
        help=f"where --latest looks (default: ${TIMELINES_VAR}, else reports/deploys)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=REPORTS, metavar="DIR",
        help=f"where the report is written (default: {REPORTS})",
    )  # fmt: skip
    parser.add_argument(
        "--image-scan", type=Path, default=IMAGE_SCAN, metavar="FILE",
        help=f"what the images' scans covered, when there (default: {IMAGE_SCAN})",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if not args.timelines and not args.latest:
        parser.error("name TIMELINE.json files, or pass --latest")
    try:
        named = load_all(args.timelines)
        deploys = in_order([*named, *(latest(args.deploys) if args.latest else [])])
    except TimelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        image_scans = read_image_scans(args.image_scan)
    except ImageScanError as exc:
        # The deploys are still worth a report; what the scans covered is then not in it.
        print(f"warning: image scans left out of the report: {exc}", file=sys.stderr)
        image_scans = []
    try:
        paths, text = write_report(deploys, args.out, image_scans=image_scans)
    except OSError as exc:
        print(f"error: cannot write the report into {args.out}: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    summary = environ.get(SUMMARY_VAR, "").strip()
    if summary:
        try:
            append_summary(Path(summary), text)
        except OSError as exc:
            # The report itself is written; a step summary is a convenience, not worth failing.
            print(f"warning: not added to {SUMMARY_VAR} ({summary}): {exc}", file=sys.stderr)
    return 0
