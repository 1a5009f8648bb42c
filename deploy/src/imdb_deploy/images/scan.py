"""Per-image supply-chain evidence: an SBOM of what is installed, pip-audit, Trivy.

The inventory comes from the image itself: a short script run in a container of the image
(no network, read-only root) lists the Python distributions the image's interpreter sees and
the Debian packages in dpkg's status file. From it:

  reports/sbom-image-<name>.cdx.json        CycloneDX 1.6 JSON: the image as root component,
                                            the PyPI and Debian packages as components
  reports/pip-audit-image-<name>.json       `imdb_deploy.supply_chain.audit` over the image's
                                            third-party Python packages (OSV_OFFLINE_DIR honoured)
  reports/trivy-image-<name>.json           Trivy's vulnerability scan of the saved image (OS and
                                            language packages), when the `trivy` binary is
                                            installed: HIGH and CRITICAL findings that have a
                                            fix fail the build
  reports/image-scan.json                   per image: its SBOM, pip-audit and Trivy reports and
                                            whether its OS packages were scanned, and if not why
                                            (the deployment report says so in plain words)

Where Trivy is not installed the OS packages are NOT scanned, and that is said (printed and
recorded), not skipped quietly; with MLOPS_REQUIRE_TRIVY=1 (the GitHub workflows that install
Trivy set it) it is a failure.

pip-audit needs hashed requirements; the image holds no wheel files, so each line carries the
sha256 of the distribution's installed RECORD: well-formed, and pip-audit checks only that a hash
is present (`--disable-pip`), never that it matches.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import docker
from cyclonedx.model import Property
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL
from packaging.utils import canonicalize_name

from imdb_deploy.images import build
from imdb_deploy.images.services import IMAGE_PREFIX
from imdb_deploy.supply_chain import audit, sbom

# Runs inside the image with its own interpreter; standard library only.
INVENTORY_SCRIPT = r"""
import hashlib, json, sys
import importlib.metadata as md
from pathlib import Path
seen, dists = set(), []
for dist in md.distributions():
    name = dist.metadata["Name"]
    if not name or name.lower() in seen:
        continue
    seen.add(name.lower())
    record = dist.read_text("RECORD") or name + "==" + dist.version
    dists.append({"name": name, "version": dist.version,
                  "record_sha256": hashlib.sha256(record.encode()).hexdigest()})
debs = []
status = Path("/var/lib/dpkg/status")
if status.is_file():
    for block in status.read_text(errors="replace").split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if line[:1] not in (" ", "\t") and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields.get("Status", "").endswith(" installed") and fields.get("Package"):
            debs.append({"name": fields["Package"], "version": fields.get("Version", ""),
                         "arch": fields.get("Architecture", "")})
print(json.dumps({"python": sys.version.split()[0], "distributions": dists, "debs": debs}))
"""
PROJECT_PREFIX = "imdb-"
# Set to 1 where Trivy is installed on purpose (the GitHub workflows): then a missing one fails.
REQUIRE_TRIVY_VAR = "MLOPS_REQUIRE_TRIVY"
# The per-image summary of the scans, beside the reports it names.
SUMMARY_FILE = "image-scan.json"
TRIVY_MISSING = "trivy is not installed here (pip-audit covered the Python packages)"


class ScanError(RuntimeError):
    """The image could not be inventoried or scanned."""


@dataclass(frozen=True)
class Inventory:
    """What an image contains, as reported from inside it."""

    python: str
    distributions: list[dict[str, str]]
    debs: list[dict[str, str]]

    def third_party(self) -> list[dict[str, str]]:
        """Python distributions that come from PyPI (not our own imdb-* wheels)."""
        return [
            dist
            for dist in self.distributions
            if not canonicalize_name(dist["name"]).startswith(PROJECT_PREFIX)
        ]


def inventory(client: docker.DockerClient, image: str) -> Inventory:
    """Run the inventory script in a throw-away container of `image`."""
    output = client.containers.run(
        image,
        entrypoint=["python3", "-c", INVENTORY_SCRIPT],
        command=[],
        remove=True,
        read_only=True,
        network_mode="none",
        stdout=True,
        stderr=False,
    )
    try:
        data: Any = json.loads(bytes(output).decode())
        return Inventory(str(data["python"]), list(data["distributions"]), list(data["debs"]))
    except (ValueError, KeyError, TypeError) as error:
        raise ScanError(f"inventory of {image} is unreadable: {error}") from error


def make_sbom(found: Inventory, name: str, version: str, image_id: str, platform: str) -> str:
    """CycloneDX 1.6 JSON for the image: root component (container) and what it holds."""
    bom = Bom()
    root = Component(
        type=ComponentType.CONTAINER,
        name=IMAGE_PREFIX + name,
        version=version,
        bom_ref=f"image:{IMAGE_PREFIX}{name}:{version}",
        properties=[
            Property(name="oci:image:id", value=image_id),
            Property(name="oci:image:platform", value=platform),
            Property(name="python:version", value=found.python),
        ],
    )
    bom.metadata.component = root
    components = []
    for dist in sorted(found.distributions, key=lambda d: canonicalize_name(d["name"])):
        purl = PackageURL(
            type="pypi", name=canonicalize_name(dist["name"]), version=dist["version"]
        )
        components.append(
            Component(
                type=ComponentType.LIBRARY,
                name=dist["name"],
                version=dist["version"],
                purl=purl,
                bom_ref=purl.to_string(),
            )
        )
    for deb in sorted(found.debs, key=lambda d: d["name"]):
        purl = PackageURL(
            type="deb",
            namespace="debian",
            name=deb["name"],
            version=deb["version"],
            qualifiers={"arch": deb["arch"]},
        )
        components.append(
            Component(
                type=ComponentType.LIBRARY,
                name=deb["name"],
                version=deb["version"],
                purl=purl,
                bom_ref=purl.to_string(),
            )
        )
    for component in components:
        bom.components.add(component)
    bom.register_dependency(root, components)
    return str(JsonV1Dot6(bom).output_as_string(indent=2))


def audit_requirements(found: Inventory) -> str:
    """Hashed `name==version` lines for the image's third-party Python packages."""
    return "".join(
        f"{canonicalize_name(d['name'])}=={d['version']} --hash=sha256:{d['record_sha256']}\n"
        for d in sorted(found.third_party(), key=lambda d: canonicalize_name(d["name"]))
    )


def trivy_argv(trivy: str, tarball: Path, report: Path) -> list[str]:
    """Trivy over a saved image: fails (exit 1) on HIGH or CRITICAL vulnerabilities with a fix."""
    return [
        trivy, "image", "--quiet", "--input", str(tarball), "--format", "json",
        "--output", str(report), "--scanners", "vuln", "--severity", "HIGH,CRITICAL",
        "--ignore-unfixed", "--exit-code", "1",
    ]  # fmt: skip


def trivy_required(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a missing `trivy` is a failure (MLOPS_REQUIRE_TRIVY=1), not a recorded note."""
    environ = os.environ if environ is None else environ
    return environ.get(REQUIRE_TRIVY_VAR, "").strip() == "1"


@dataclass(frozen=True)
class ScanResult:
    """Where the reports went, whether the OS packages were scanned, and whether it passed."""

    name: str  # the image's name, mlops-imdb-<service>[-<arch>]
    reference: str
    platform: str
    sbom: Path
    audit_report: Path
    trivy_report: Path | None
    trivy_installed: bool
    os_packages_scanned: bool
    reason: str  # why the OS packages were not scanned; empty when they were
    failures: list[str]

    @property
    def reports(self) -> list[Path]:
        """The reports this scan wrote: the evidence a release carries for the image."""
        return [self.sbom, self.audit_report, *([self.trivy_report] if self.trivy_report else [])]

    def record(self) -> dict[str, object]:
        """This image's entry in reports/image-scan.json (the reports named relative to it)."""
        return {
            "name": self.name,
            "reference": self.reference,
            "platform": self.platform,
            "scanned_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "sbom": self.sbom.name,
            "pip_audit": self.audit_report.name,
            "trivy": None if self.trivy_report is None else self.trivy_report.name,
            "trivy_installed": self.trivy_installed,
            "os_packages_scanned": self.os_packages_scanned,
            "reason": self.reason,
            "passed": not self.failures,
        }


def run_trivy(
    client: docker.DockerClient, image: str, trivy: str, report: Path
) -> tuple[bool, str, list[str]]:
    """Trivy over the saved image: (OS packages scanned, why not, failures)."""
    report.unlink(missing_ok=True)  # a report left by an earlier run must not pass for this one
    with tempfile.TemporaryDirectory(prefix="mlops-trivy-") as tmp:
        tarball = build.export(client, image, Path(tmp))
        result = subprocess.run(  # noqa: S603 - fixed argv, no shell
            trivy_argv(trivy, tarball, report), check=False
        )
    if result.returncode == 0:
        return True, "", []
    if not report.is_file():
        reason = f"trivy failed (exit {result.returncode}) before writing its report"
        return False, reason, [f"OS packages of {image} NOT scanned: {reason}"]
    return (
        True,
        "",
        [f"trivy found HIGH/CRITICAL vulnerabilities with a fix in {image}, see {report}"],
    )


def scan_image(
    client: docker.DockerClient,
    image: str,
    *,
    name: str,
    version: str,
    platform: str,
    reports: Path,
    osv_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> ScanResult:
    """SBOM, pip-audit and (when installed) Trivy for one image; `failures` empty means passed.

    Without Trivy the OS packages are not scanned: printed, recorded in the result, and a failure
    when `trivy_required(environ)`.
    """
    reports.mkdir(parents=True, exist_ok=True)
    found = inventory(client, image)
    image_id = str(client.images.get(image).id)
    sbom_file = reports / f"sbom-image-{name}.cdx.json"
    sbom_file.write_text(make_sbom(found, name, version, image_id, platform))
    failures = []
    if not sbom.validate_file(sbom_file):
        failures.append(f"SBOM {sbom_file} is invalid")
    audit_report = reports / f"pip-audit-image-{name}.json"
    requirements = reports / f"requirements-image-{name}.txt"
    requirements.write_text(audit_requirements(found))
    status = audit.audit(requirements, audit_report, osv_dir)
    if status != audit.EXIT_OK:
        failures.append(f"pip-audit of {image} failed (exit {status}), see {audit_report}")
    trivy_file = reports / f"trivy-image-{name}.json"
    trivy = shutil.which("trivy")
    if trivy is not None:
        scanned, reason, trivy_failures = run_trivy(client, image, trivy, trivy_file)
        failures += trivy_failures
    else:
        trivy_file.unlink(missing_ok=True)  # an earlier run's report is not this image's
        scanned, reason = False, TRIVY_MISSING
        print(f"scan {image}: OS packages NOT scanned for vulnerabilities: {reason}")
        if trivy_required(environ):
            failures.append(
                f"OS packages of {image} NOT scanned for vulnerabilities: {reason}; "
                f"{REQUIRE_TRIVY_VAR}=1 requires trivy"
            )
    return ScanResult(
        name=IMAGE_PREFIX + name,
        reference=image,
        platform=platform,
        sbom=sbom_file,
        audit_report=audit_report,
        trivy_report=trivy_file if trivy_file.is_file() else None,
        trivy_installed=trivy is not None,
        os_packages_scanned=scanned,
        reason=reason,
        failures=failures,
    )


def write_summary(results: Sequence[ScanResult], path: Path) -> Path:
    """Write (or update) reports/image-scan.json: one entry per image, these results replacing
    the entries of the same images (a build for another platform keeps the others')."""
    names = {result.name for result in results}
    try:
        earlier = json.loads(path.read_text())["images"]
        kept = [e for e in earlier if isinstance(e, dict) and e.get("name") not in names]
    except (OSError, ValueError, KeyError, TypeError):
        kept = []  # none yet, or not ours to keep
    entries = sorted([*kept, *(r.record() for r in results)], key=lambda e: str(e.get("name")))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": entries}, indent=2) + "\n")
    return path


def scan_all(
    client: docker.DockerClient,
    images: Sequence[tuple[str, str, str, str]],
    reports: Path,
    osv_dir: Path | None,
    environ: Mapping[str, str] | None = None,
) -> list[ScanResult]:
    """Scan (image, name, version, platform) tuples and write reports/image-scan.json; each
    result's `failures` say what failed."""
    results = [
        scan_image(
            client,
            image,
            name=name,
            version=version,
            platform=platform,
            reports=reports,
            osv_dir=osv_dir,
            environ=environ,
        )
        for image, name, version, platform in images
    ]
    summary = write_summary(results, reports / SUMMARY_FILE)
    print(f"scan summary: {summary}")
    return results
