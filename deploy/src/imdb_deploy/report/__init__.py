"""The deployment report: what the deploys and rollbacks did, from their timelines.

`timeline` reads the JSON each deploy or rollback leaves in `reports/deploys/`; `plots` draws the
per-host timeline and the post-deploy latency; `render` writes Markdown, HTML and JSON; `cli` is
`python -m imdb_deploy.report`, which writes `reports/deployment-report.{md,html,json}` and adds
the Markdown to the GitHub step summary in CI.
"""
