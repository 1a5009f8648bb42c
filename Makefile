# Thin targets over nox sessions: the noxfile is the single source of truth for every step.
# The first use bootstraps uv into .tools/ and nox from uv.lock; nothing else needs installing.
.DEFAULT_GOAL := help
SHELL := bash
UV_VERSION := 0.13.9
TOOLS := $(CURDIR)/.tools
UV := $(TOOLS)/bin/uv
export PATH := $(TOOLS)/bin:$(PATH)
# With pyenv, enable every installed CPython 3.10-3.13 so that python3.X (and so nox and uv) find them.
export PYENV_VERSION ?= $(shell command -v pyenv >/dev/null && pyenv versions --bare --skip-aliases | grep -E '^3\.1[0-3]\.[0-9]+$$' | paste -sd:)
# Offline vulnerability audits: our machines cannot reach pip-audit's service but keep the PyPA
# advisory snapshot beside the clone. Set OSV_OFFLINE_DIR= (empty) to audit online instead.
export OSV_OFFLINE_DIR ?= $(abspath $(wildcard $(CURDIR)/../shared/data/pypa-advisory-db/vulns))
NOX := $(UV) run --locked --no-default-groups --only-group=nox nox
# The long runs end with a table of each session's wall time (from nox's report); nox's exit status stays.
TIMED = PYTHONPATH=deploy/src $(TOOLS)/bin/python -m imdb_deploy.session_times --report=reports/sessions-$@.json --

.PHONY: help bootstrap system-packages pipeline ci check test lint fmt typecheck security sbom images gates train serve benchmark engine sandbox deploy promote rollback status report prune sessions clean

help: ## Show the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(UV):
	python3 -m venv $(TOOLS) && $(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

bootstrap: $(UV) ## Install the pinned uv into .tools/ (the other targets do it on demand)

system-packages: ## Install the Debian packages behind the real parts (podman, registry, debootstrap)
	bash deploy/system-packages.sh $(SYSTEM_PACKAGES_FLAGS)

# A warm pipeline reuses each stage that already passed on exactly the same inputs (MLOPS_STAGE_CACHE=0 reruns all).
pipeline: export MLOPS_STAGE_CACHE ?= 1
# Releases are multi-arch: amd64 and arm64 (built and parity-checked under qemu), one signed list.
pipeline: export MLOPS_PLATFORMS ?= linux/amd64,linux/arm64
pipeline: SYSTEM_PACKAGES_FLAGS := --arm64
pipeline: $(UV) system-packages ## The main job: every stage on the built-in defaults (generated data)
	$(TIMED) $(NOX) -t pipeline --stop-on-first-error

ci: $(UV) system-packages ## Everything GitHub CI runs: quality, tests on all Pythons, coverage, gates, sbom, images
	$(TIMED) $(NOX) -t ci

check: $(UV) system-packages ## The CI steps that are not tests: lint, typecheck, security, sbom, images
	$(TIMED) $(NOX) -t quality build

test: $(UV) system-packages ## Tests on Python 3.10-3.13, combined coverage gate, fault-injection gates
	$(TIMED) $(NOX) -t tests

lint: $(UV) ## ruff, black, hadolint, workflow checks
	$(NOX) -s lint

fmt: $(UV) ## Format the code in place (ruff fixes, black)
	$(NOX) -s fmt

typecheck: $(UV) system-packages ## mypy --strict
	$(NOX) -s typecheck

security: $(UV) ## bandit and pip-audit (set OSV_OFFLINE_DIR for the offline database)
	$(NOX) -s security

sbom: $(UV) ## CycloneDX SBOM per service
	$(NOX) -s sbom

images: $(UV) system-packages ## One release: train (or reuse), build, push, scan and test both images
	$(NOX) -s images

gates: $(UV) ## Prove each gate fails on an injected fault
	$(NOX) -s gates

train: $(UV) ## Train the model on generated data into artifacts/model (gated against the live one)
	$(NOX) -s train

serve: $(UV) ## Train the default model, then serve it on http://127.0.0.1:8000
	$(NOX) -s train serve

benchmark: $(UV) system-packages ## Benchmarks: make benchmark WHAT=trainer|api|hosts
	$(NOX) -s benchmark -- $(WHAT)

engine: $(UV) system-packages ## Start the local container engine and registry (nox -s engine -- up)
	$(NOX) -s engine -- up

sandbox: $(UV) system-packages ## Sandbox fleet (2 light hosts, 2 booting machines): ACTION=up|down|status|"reboot HOST"
	$(NOX) -s sandbox -- $(or $(ACTION),up)

deploy: $(UV) ## Blue-green deploy: make deploy ENV=sandbox-staging [VERSION=v] [APPROVE=1]
	$(NOX) -s deploy -- $(or $(ENV),sandbox-staging) $(if $(VERSION),--version=$(VERSION)) $(if $(APPROVE),--approve)

promote: $(UV) ## Promote what passed staging, by digest: make promote ENV=sandbox-production [APPROVE=1]
	$(NOX) -s promote -- $(or $(ENV),sandbox-production) $(if $(APPROVE),--approve)

rollback: $(UV) ## Roll back: make rollback ENV=sandbox-staging [VERSION=v]
	$(NOX) -s rollback -- $(or $(ENV),sandbox-staging) $(if $(VERSION),--version=$(VERSION)) $(if $(APPROVE),--approve)

status: $(UV) ## Colour, version and health per host: make status ENV=sandbox-staging
	$(UV) run --locked fab status --env $(or $(ENV),sandbox-staging)

report: $(UV) ## Deployment report (Markdown, HTML, JSON) of the newest deploy per environment
	$(NOX) -s report

prune: $(UV) ## Releases beyond retention on the sandbox hosts, in the local engine and registry
	$(NOX) -s prune

sessions: $(UV) ## List the nox sessions (the pipeline's table of contents)
	$(NOX) -l

clean: ## Remove virtualenvs, caches and reports
	rm -rf .nox .venv .tools reports .mypy_cache .ruff_cache .pytest_cache
