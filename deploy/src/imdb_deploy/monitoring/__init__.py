"""Monitoring: Prometheus scrape config for the environments, deploy markers, the local stack
(Prometheus and a Pushgateway for the sandbox: `python -m imdb_deploy.monitoring up|down|status`)
and their CLI.

The alert rules, their unit tests and the Grafana dashboard live in `deploy/monitoring/`; this
package generates what depends on the environments (the scrape targets) and records deploys
(`markers`), which the rules and the dashboard then read back from the Pushgateway.
"""

from __future__ import annotations

from pathlib import Path

# deploy/src/imdb_deploy/monitoring/__init__.py -> the repository root, as in bluegreen.config
# (not imported from there: recording a marker should not need the deploy's config models).
MONITORING_DIR: Path = Path(__file__).resolve().parents[3] / "monitoring"
RULES_FILE: Path = MONITORING_DIR / "alerts.yml"
