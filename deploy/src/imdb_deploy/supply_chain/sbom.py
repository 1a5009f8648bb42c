"""Validate CycloneDX JSON SBOMs against the schema of the version each one declares.

    python -m imdb_deploy.supply_chain.sbom validate FILE...

The schemas are the ones bundled with cyclonedx-python-lib (no network), used strictly: for
1.2 and 1.3 the "strict" variants, which refuse unknown properties. Beyond the schema, an SBOM
must name its root component (`metadata.component`) and list at least one component: an SBOM
of nothing is no evidence of anything.

Exit status: 0 when every file is valid, 1 when any is not, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cyclonedx.schema import SchemaVersion

if TYPE_CHECKING:
    from cyclonedx.validation.json import JsonStrictValidator

MAX_SCHEMA_ERRORS = 20
# CycloneDX has a JSON schema from 1.2 on.
SPEC_VERSIONS = {version.to_version(): version for version in SchemaVersion}
JSON_SPEC_VERSIONS = sorted(
    (name for name, version in SPEC_VERSIONS.items() if version >= SchemaVersion.V1_2),
    key=lambda name: SPEC_VERSIONS[name].value,
)


@cache
def _validator(version: SchemaVersion) -> JsonStrictValidator:
    # Imported on first use: its jsonschema import builds dozens of grammars (about 3 s), which
    # every command importing this module (the deploy CLI and fab among them) would pay.
    from cyclonedx.validation.json import JsonStrictValidator  # noqa: PLC0415

    return JsonStrictValidator(version)


def validate_document(text: str) -> tuple[list[str], str]:
    """(errors, description) for one SBOM's JSON text; no errors means valid."""
    try:
        document = json.loads(text)
    except ValueError as error:
        return [f"not JSON: {error}"], ""
    if not isinstance(document, dict):
        return ["not a JSON object"], ""
    if document.get("bomFormat") != "CycloneDX":
        return [f"bomFormat is {document.get('bomFormat')!r}, not 'CycloneDX'"], ""
    spec = document.get("specVersion")
    if spec not in JSON_SPEC_VERSIONS:
        supported = ", ".join(JSON_SPEC_VERSIONS)
        return [f"specVersion {spec!r} is not a CycloneDX JSON version ({supported})"], ""
    errors = []
    found = _validator(SPEC_VERSIONS[spec]).validate_str(text, all_errors=True)
    for index, problem in enumerate(found or ()):
        if index == MAX_SCHEMA_ERRORS:
            errors.append("... (more schema errors)")
            break
        errors.append(f"schema: {_describe(problem.data)}")
    metadata = document.get("metadata")
    root = metadata.get("component") if isinstance(metadata, dict) else None
    if not isinstance(root, dict):
        errors.append("no root component (metadata.component)")
    components = document.get("components")
    if not isinstance(components, list) or not components:
        errors.append("no components: the SBOM lists nothing")
    name = f"{root.get('name')} {root.get('version', '')}".strip() if isinstance(root, dict) else ""
    count = len(components) if isinstance(components, list) else 0
    return errors, f"CycloneDX {spec}, root {name or '?'}, {count} components"


def _describe(error: Any) -> str:
    """One line for a jsonschema ValidationError: where, then what."""
    where = getattr(error, "json_path", "$")
    message = getattr(error, "message", str(error))
    text = " ".join(str(message).split())
    return f"{where}: {text[:300]}"


def validate_file(path: Path) -> bool:
    """Validate one file, print the verdict, and say whether it is valid."""
    try:
        errors, description = validate_document(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        errors, description = [f"cannot read: {error}"], ""
    if errors:
        print(f"INVALID {path}" + (f" ({description})" if description else ""))
        for message in errors:
            print(f"  {message}")
        return False
    print(f"valid {path} ({description})")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imdb_deploy.supply_chain.sbom",
        description="CycloneDX SBOM checks (offline, with cyclonedx-python-lib's schemas).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser(
        "validate", help="validate CycloneDX JSON files against their specVersion's schema"
    )
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE")
    args = parser.parse_args(argv)
    results = [validate_file(path) for path in args.files]
    invalid = results.count(False)
    if invalid:
        print(f"sbom: {invalid} of {len(results)} SBOMs invalid", file=sys.stderr)
        return 1
    print(f"sbom: {len(results)} SBOMs valid")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
