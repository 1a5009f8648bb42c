"""Supply-chain checks of the delivery pipeline, each a small module with a `python -m` CLI.

- `osv_database`, `osv_mirror`: an offline OSV-compatible endpoint for pip-audit.
- `audit`: pip-audit over a locked requirements file, online or against the offline mirror.
- `sbom`: CycloneDX JSON validation against the bundled schemas.
- `coverage_gate`: line and branch thresholds over coverage.py's JSON report.
"""
