"""Blue-green deploys of one environment: lock, prepare, switch, drain, audit; and undo.

A deploy runs in phases over all hosts (in parallel within a phase):

    lock      the environment's lock on every host (refused if held; an expired one is taken
              over, and a switch the dead holder left half-done is put back first)
    prepare   per host: image present (pull), the idle colour started with the new version,
              N consecutive /ready passes, a smoke prediction on the colour's own port
    switch    journal written, nginx upstream rewritten, `nginx -t`, reload, checked through nginx
    commit    state.json on every host says the new colour is live; journal removed
    drain     the old colour keeps serving its in-flight requests for `drain.seconds`, then stops
              (kept, stopped, as the fast rollback target); old releases beyond retention pruned

All-or-nothing: a failure before the commit undoes the phase on every host (new containers
removed, switched hosts switched back), so the environment ends on one version. Rolling mode does
the same batch by batch, and a failing batch switches the earlier ones back too.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import TypeVar

import tenacity

from imdb_deploy.bluegreen import auditlog, commands, hostsetup, loadcheck
from imdb_deploy.bluegreen.config import (
    ConfigError,
    Environment,
    Host,
    Redactor,
    current_user,
)
from imdb_deploy.bluegreen.errors import (
    ApprovalError,
    DeployError,
    LockLostError,
    RegressionError,
)
from imdb_deploy.bluegreen.layout import HostLayout
from imdb_deploy.bluegreen.lock import EnvironmentLock
from imdb_deploy.bluegreen.runner import (
    HostRunner,
    RemoteError,
    Result,
    key_fingerprint,
    on_each,
)
from imdb_deploy.bluegreen.state import HostState, Journal, StateError, new_id, now_iso
from imdb_deploy.images.retention import RegistryClient, RetentionError
from imdb_deploy.supply_chain import signing

T = TypeVar("T")

# Movies the smoke test predicts: no model-specific knowledge, only the API contract.
SMOKE_MOVIES: list[dict[str, object]] = [
    {"primaryTitle": "Smoke Test", "startYear": 1999, "runtimeMinutes": 120,
     "genres": ["Drama"], "isAdult": False},
    {"primaryTitle": "Second Smoke", "startYear": None, "runtimeMinutes": None,
     "genres": ["Comedy", "Romance"], "isAdult": False},
]  # fmt: skip


@dataclass
class Event:
    """One line of the deploy's timeline: a step on a host (or `*` for the environment)."""

    at: float
    host: str
    step: str
    detail: str = ""
    ok: bool = True


@dataclass
class Outcome:
    """What a deploy or rollback did, for the CLI, the audit and the deployment report."""

    id: str
    action: str
    environment: str
    user: str
    started: str
    from_versions: dict[str, str | None]
    to_version: str | None
    to_digest: str | None = None  # the release's image digest, which the hosts run
    # The key whose signature the hosts' engines required on it ("": none required).
    signed_by: str = ""
    release: dict[str, object] | None = None  # what the release says it is (/model/info)
    # Hosts of the environment left out on purpose (`--hosts ... --partial`): not changed.
    skipped: list[str] = field(default_factory=list)
    result: str = "running"
    detail: str = ""
    seconds: float = 0.0
    events: list[Event] = field(default_factory=list)
    benchmark: dict[str, object] | None = None

    def audit_entry(self) -> dict[str, object]:
        entry = asdict(self)
        del entry["events"], entry["benchmark"]
        return entry


class Orchestrator:
    """Deploy, roll back, inspect and unlock one environment."""

    def __init__(
        self,
        environment: Environment,
        *,
        environ: Mapping[str, str] | None = None,
        echo: Callable[[str], None] | None = None,
        on_step: Callable[[str, str], None] | None = None,
        runner_factory: Callable[[Environment, Host, Redactor], HostRunner] | None = None,
        skipped: Sequence[str] = (),
    ) -> None:
        """`skipped`: hosts of the environment's file that `environment` leaves out on purpose
        (Environment.only); releases say so in their timeline and audit entry."""
        self.environment = environment
        self.skipped = list(skipped)
        self.environ = dict(os.environ if environ is None else environ)
        self.redact = Redactor(environment.secret_values(self.environ))
        self._echo = echo or (lambda line: print(line, flush=True))
        self._on_step = on_step
        self._runner_factory = runner_factory or (
            lambda env, host, redactor: HostRunner(env, host, redactor, self.environ)
        )
        self.runners: dict[str, HostRunner] = {
            host.name: self._new_runner(host) for host in environment.hosts
        }
        self._lock: EnvironmentLock | None = None  # while a release holds the lock
        self._t0 = time.monotonic()
        self.outcome: Outcome | None = None
        self._trusted_key: str | None = None
        self._events_lock = threading.Lock()
        # Release -> image digest, from the caller and the hosts' records: hosts run by digest.
        self.digests: dict[str, str] = {}

    # ---- plumbing ----------------------------------------------------------------------------

    def _new_runner(self, host: Host) -> HostRunner:
        return self.runner_for(self.environment, host)

    def runner_for(self, environment: Environment, host: Host) -> HostRunner:
        """A new connection to `host` as `environment` says (setup's root phase logs in as
        another user)."""
        return self._runner_factory(environment, host, self.redact)

    def trusted_key(self) -> str:
        """The fingerprint of the key the hosts require releases to be signed with ("": the
        environment names none). Read from the environment's key file once."""
        if self._trusted_key is None:
            settings = self.environment.signing
            try:
                key = "" if settings is None else settings.public_key.read_text()
                self._trusted_key = signing.public_key_fingerprint(key) if key else ""
            except (OSError, signing.SigningError) as error:
                raise DeployError(f"{self.environment.name}'s signing key: {error}") from None
        return self._trusted_key

    def close(self) -> None:
        for runner in self.runners.values():
            runner.close()

    def step(self, host: str, step: str, detail: str = "", ok: bool = True) -> None:
        """Record and print one timeline line; tests hook fault injection onto it."""
        event = Event(round(time.monotonic() - self._t0, 3), host, step, self.redact(detail), ok)
        with self._events_lock:
            if self.outcome is not None:
                self.outcome.events.append(event)
        mark = "" if ok else "FAILED "
        self._echo(
            f"{event.at:7.2f}s  {host:<14} {mark}{step}{': ' if detail else ''}{event.detail}"
        )
        if self._on_step is not None:
            self._on_step(host, step)

    def _layout(self, host: Host) -> HostLayout:
        return self.environment.layout(host)

    def read_state(self, host: Host) -> HostState:
        runner = self.runners[host.name]
        return HostState.parse(runner.run(commands.read_file(self._layout(host).state_file)).stdout)

    def write_state(self, host: Host, state: HostState, *then: str) -> None:
        """Write state.json atomically (and run `then` commands after it, in the same trip)."""
        command = commands.write_file(self._layout(host).state_file, state.dump())
        self.runners[host.name].run(" && ".join([command, *then]))

    def _audit(self, entry: Mapping[str, object]) -> None:
        """Append to the audit log of every reachable host (a broken host cannot lose it).
        Beside the actor the entry claims (`user`: GITHUB_ACTOR, which anyone can set, else
        the local login), it records the SSH login and the key that made the change."""
        identity = {
            "login": self.environment.deploy_user,
            "key": key_fingerprint(self.environment, self.environ),
        }
        line = self.redact.values({**entry, **identity, "logged_at": now_iso(precise=True)})

        def append(host: Host) -> None:
            self.runners[host.name].run(commands.audit_append(self._layout(host), line))

        _, failures = on_each(self.environment.hosts, append)
        if len(failures) == len(self.environment.hosts):
            self._echo(f"WARNING: audit entry not written on any host: {entry}")

    # ---- approval ------------------------------------------------------------------------------

    def check_approval(
        self,
        version: str,
        states: Mapping[str, HostState | None],
        approve: bool,
        confirm: Callable[[str], str] | None = None,
    ) -> str:
        """Production needs a human: a typed confirmation, or --approve from the protected
        GitHub environment. Returns how approval was given."""
        approval = self.environment.approval
        if not approval.required:
            return "not required"
        if approve:
            wanted = approval.github_environment
            if wanted is None:
                return "--approve"
            in_actions = self.environ.get("GITHUB_ACTIONS") == "true"
            if in_actions and self.environ.get("MLOPS_GITHUB_ENVIRONMENT") == wanted:
                return f"--approve in GitHub environment {wanted}"
            raise ApprovalError(
                f"{self.environment.name}: --approve is accepted only from a GitHub Actions job "
                f"in the protected environment {wanted!r}"
            )
        if confirm is None:
            if not sys.stdin.isatty():
                raise ApprovalError(
                    f"{self.environment.name} needs approval: run in a terminal to confirm, "
                    "or pass --approve"
                )
            confirm = input
        change = "\n".join(
            f"  {name}: {(state.live_version if state else None) or '(none)'} -> {version}"
            for name, state in states.items()
        )
        answer = confirm(
            f"Deploy {version} to {self.environment.name}:\n{change}\n"
            f"Type the environment name to approve: "
        )
        if answer.strip() != self.environment.name:
            raise ApprovalError(f"{self.environment.name}: not approved")
        return f"confirmed by {current_user()}"

    # ---- lock -----------------------------------------------------------------------------------

    def new_lock(self, outcome: Outcome) -> EnvironmentLock:
        """This action's lock on every host (not taken yet), named after `outcome`."""
        return EnvironmentLock(
            self.environment, self.environment.hosts, self._new_runner, self.step,
            token=f"{outcome.id}-{new_id()}",
        )  # fmt: skip

    @staticmethod
    def holder(outcome: Outcome) -> dict[str, object]:
        """What the lock tells whoever finds it held."""
        return {
            "holder": outcome.user, "action": outcome.action, "version": outcome.to_version,
            "since": outcome.started, "deploy_id": outcome.id, "pid": os.getpid(),
        }  # fmt: skip

    @contextlib.contextmanager
    def locked(self, outcome: Outcome) -> Iterator[None]:
        """The environment's lock taken for `outcome` (LockHeldError when someone holds it),
        and held (`holding`) while the block runs."""
        lock = self.new_lock(outcome)
        try:
            lock.acquire(self.holder(outcome))
        except DeployError:
            lock.close()
            raise
        with self.holding(lock):
            yield

    @contextlib.contextmanager
    def holding(self, lock: EnvironmentLock) -> Iterator[None]:
        """With `lock` taken: renewed by its heartbeat, confirmed before each change made
        meanwhile (`_confirm_lock`), released and closed at the end, whatever happened."""
        self._lock = lock
        try:
            with lock.heartbeat():
                yield
        finally:
            self._lock = None
            lock.release()
            lock.close()

    def _confirm_lock(self, before: str) -> None:
        """Right before a change: the lock is still ours on every host (LockLostError)."""
        if self._lock is not None:
            self._lock.confirm(before)

    # ---- recovery of a half-done switch ------------------------------------------------------

    def inspect(self) -> dict[str, HostState]:
        """Every host's state, read under the lock; a switch that a dead deploy left half-done
        (its journal still on the host) is put back first."""

        def one(host: Host) -> tuple[HostState, bool]:
            output = (
                self.runners[host.name]
                .run(commands.read_state_and_journal(self._layout(host)))
                .stdout
            )
            state_text, _, journal_text = output.partition(commands.JOURNAL_SEPARATOR)
            state = HostState.parse(state_text)
            journal = Journal.parse(journal_text)
            if journal is None:
                return state, False
            self._switch_back(host, state)
            self.step(host.name, "recovered", f"{journal.deploy_id}'s unfinished switch undone")
            return state, True

        results, failures = on_each(self.environment.hosts, one)
        if failures:
            raise DeployError(f"cannot read the hosts' state: {self._failures_text(failures)}")
        recovered = [name for name, (_, undone) in results.items() if undone]
        if recovered:
            self._audit({"id": new_id(), "action": "recover", "environment":
                         self.environment.name, "user": current_user(), "started": now_iso(),
                         "result": "recovered", "detail": f"hosts {recovered}"})  # fmt: skip
        return {name: state for name, (state, _) in results.items()}

    # ---- per-host steps ------------------------------------------------------------------------

    def _write_upstream(self, host: Host, colour: str, *before: str) -> None:
        """Point nginx at `colour` (one command: write, `nginx -t`, reload, or put it back)."""
        layout = self._layout(host)
        switch = commands.switch_upstream(self.environment, host, layout, colour)
        result = self.runners[host.name].run(" && ".join([*before, switch]), check=False)
        if not result.ok:
            raise RemoteError(host.name, f"nginx refused the switch: {result.stderr.strip()}")

    def _served_release(self, host: Host, url: str) -> str:
        """The release tag the API at `url` (/model/info) says it was built as."""
        reply = self.runners[host.name].run(commands.http_get(url))
        try:
            return str(json.loads(reply.stdout)["release"]["release"])
        except (ValueError, KeyError, TypeError):
            raise RemoteError(host.name, f"{url} answered no release") from None

    def _smoke(self, host: Host, colour: str, version: str) -> None:
        """The new colour must serve this release's model and give sane predictions."""
        env = self.environment
        info = commands.http_get(commands.colour_url(env, host, colour, "/model/info"))
        batch = commands.http_post_json(
            commands.colour_url(env, host, colour, "/predict/batch"), {"movies": SMOKE_MOVIES}
        )
        reply = self.runners[host.name].run(f"{info} && echo && {batch}", check=False)
        try:
            served, answer = (json.loads(line) for line in reply.stdout.splitlines())
            ratings = [float(r) for r in answer["averageRatings"]]
            release = dict(served.get("release") or {})
            models = {served["version"], answer["modelVersion"]}
        except (ValueError, KeyError, TypeError):
            raise DeployError(
                f"{host.name}: smoke test failed: {reply.stdout[:300]}{reply.stderr[:300]}"
            ) from None
        if release.get("release") != version:
            raise DeployError(
                f"{host.name}: serves release {release.get('release')}, expected {version}"
            )
        model = release.get("model")
        if not isinstance(model, dict) or models != {model.get("version")}:
            raise DeployError(f"{host.name}: serves model {sorted(models)}, not {version}'s")
        if self.outcome is not None and self.outcome.to_version == version:
            self.outcome.release = release
        if len(ratings) != len(SMOKE_MOVIES) or not all(1 <= r <= 10 for r in ratings):
            raise DeployError(f"{host.name}: smoke prediction out of range: {ratings}")
        self.step(host.name, "smoke", f"{len(ratings)} predictions {ratings}")

    def _prepare(
        self,
        host: Host,
        version: str,
        reuse: bool,
        started: dict[str, tuple[str, HostState]],
        state: HostState,
    ) -> tuple[str, HostState]:
        """Bring up `version` on the idle colour; returns (colour, state before). What it
        changes is noted in `started` right before it changes it, so a failure half-way is
        undone, and a failure before (signatures refused, a pull refused) undoes nothing: the
        idle colour's container is the kept release, the rollback target, and stays."""
        env = self.environment
        runner = self.runners[host.name]
        layout = self._layout(host)
        colour = state.idle
        name = env.container_name(colour)
        # Each step is recorded when it is done (the report draws it from the step before).
        if reuse and not runner.run(commands.container_exists(name, env.engine), check=False).ok:
            # The kept container is gone (a host restart, a manual clean-up): run it anew.
            self.step(host.name, "kept container missing", f"{name}: starting {version} anew")
            reuse = False
        if reuse:
            started[host.name] = (colour, state)
            runner.run(commands.start_container(name, env.engine))
            self.step(host.name, "started", f"kept {colour} container ({version})")
        else:
            digest = self.digests[version]
            image = env.image_ref(version, digest)
            authfile = self._install_registry_login(host)
            if env.signing is not None:
                self._signatures(host, version, digest, authfile)
            pulled = self._pull_step(
                host,
                "pull",
                commands.ensure_image(image, env.pull.min_free_mb, authfile, env.engine),
            )
            if pulled.exit_code == commands.DISK_LOW:
                raise DeployError(
                    f"{host.name}: not pulling {image}: {pulled.stderr.strip()}, below "
                    f"pull.min_free_mb = {env.pull.min_free_mb} MB; free some space (old "
                    "images: `podman image prune -a`) or give the engine a larger disk"
                )
            if not pulled.ok:
                raise DeployError(f"{host.name}: pull of {image} refused: {_cause(pulled.stderr)}")
            self.step(host.name, "image", f"{image} {pulled.stdout.strip()}")
            values = env.app_environment(self.environ)
            started[host.name] = (colour, state)  # from here on the idle colour is this deploy's
            aside = runner.run(commands.set_aside(name, env.engine)).stdout.strip()
            if aside:
                self.step(host.name, "set aside", f"{colour}'s kept container, until the commit")
            runner.put_text(layout.env_file(colour), commands.env_file(values), mode=0o600)
            run = commands.run_container(env, host, colour, version, layout, digest=digest)
            runner.run(f"{commands.remove_container(name, env.engine)} && {run}")
            self.step(host.name, "started", f"{colour} on port {env.app.ports[colour]}")
        readiness = env.readiness
        ready_url = commands.colour_url(env, host, colour, "/ready")
        wait = commands.wait_ready(
            ready_url, readiness.passes, readiness.interval_s, readiness.timeout_s
        )
        if not runner.run(wait, timeout_s=readiness.timeout_s + 30, check=False).ok:
            logs = runner.run(
                commands.why_not_ready(name, ready_url, engine=env.engine), check=False
            ).stdout.strip()
            raise DeployError(
                f"{host.name}: {colour} ({version}) not ready within "
                f"{readiness.timeout_s:g} s:\n{logs}"
            )
        self.step(host.name, "ready", f"{readiness.passes} consecutive passes")
        self._smoke(host, colour, version)
        return colour, state

    def _signatures(
        self, host: Host, version: str, digest: str | None, authfile: PurePosixPath | None
    ) -> None:
        """The release's signatures on the host before its pull (Docker hosts: checked with
        gpgv too, Docker having no policy of its own); DeployError when they are not there."""
        env, runner, layout = self.environment, self.runners[host.name], self._layout(host)
        if not digest:
            raise DeployError(
                f"{env.name} requires signed images, verified by digest; no digest is "
                f"known for {version} (pass --digest, or deploy a release `images` built)"
            )
        fetch = commands.fetch_signatures(env, digest, layout, authfile)
        fetched = self._pull_step(host, "signatures", fetch)
        if not fetched.ok:
            raise DeployError(
                f"{host.name}: signatures of {digest} not fetched: {_cause(fetched.stderr)}"
            )
        self.step(host.name, "signatures", fetched.stdout.strip())
        if env.engine == "docker":
            checked = runner.run(commands.verify_signature(env, digest, layout), check=False)
            if not checked.ok:
                image = env.image_ref(version, digest)
                raise DeployError(f"{host.name}: not pulling {image}: {_cause(checked.stderr)}")
            self.step(host.name, "signature", checked.stdout.strip())

    def registry_auth(self) -> str | None:
        """The hosts' auth file for the registry login `[pull]` names (the deployer's current
        values, so a rotated token takes effect at the next deploy); None: no login."""
        try:
            login = self.environment.registry_login(self.environ)
        except ConfigError as exc:
            raise DeployError(str(exc)) from None
        if login is None:
            return None
        return commands.registry_auth(self.environment.image.partition("/")[0], *login)

    def _install_registry_login(self, host: Host) -> PurePosixPath | None:
        """The login in the host's auth file (by SFTP, mode 600, rewritten only when it
        differs); its path, or None when the registry needs no login."""
        text = self.registry_auth()
        if text is None:
            return None
        path = self._layout(host).registry_auth_file
        hostsetup.put(self.runners[host.name], path, text, mode=0o600)
        return path

    def _pull_step(self, host: Host, what: str, command: str) -> Result:
        """Run a step that talks to the registry, again after a transient failure (refused,
        reset, timed out, 5xx), with exponential backoff, up to `pull.attempts` tries; the last
        result, failed or not. Other failures (unknown, unsigned, corrupt) return at once."""
        settings = self.environment.pull
        runner = self.runners[host.name]

        def report(state: tenacity.RetryCallState) -> None:
            failed = state.outcome.result() if state.outcome else None
            reason = _cause(failed.stderr)[-200:] if failed else ""
            wait = state.next_action.sleep if state.next_action else 0
            self.step(
                host.name, f"{what} retry",
                f"try {state.attempt_number + 1} of {settings.attempts} in {wait:.0f} s: {reason}",
                ok=False,
            )  # fmt: skip

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(settings.attempts),
            wait=tenacity.wait_exponential(
                multiplier=settings.backoff_s, max=settings.max_backoff_s
            ),
            retry=tenacity.retry_if_result(
                lambda result: not result.ok and commands.transient_pull_error(result.stderr)
            ),
            before_sleep=report,
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )
        result: Result = retrying(runner.run, command, check=False)
        return result

    def _undo_prepare(
        self, host: Host, version: str, colour: str, state: HostState, reuse: bool
    ) -> None:
        """Stop (a kept release) or remove (a new one) what `_prepare` started for `version`;
        a release the host had never run leaves no image behind either (no disk lost to it)."""
        runner, engine = self.runners[host.name], self.environment.engine
        name = self.environment.container_name(colour)
        if reuse:
            runner.run(commands.stop_container(name, self.environment.app.stop_timeout_s, engine))
            self.step(host.name, "undone", f"{colour} stopped")
            return
        put_back = runner.run(commands.put_back(name, engine)).stdout.strip() == "put back"
        if not put_back:  # the colour held nothing before: the state forgets it
            self.write_state(host, state.without(colour))
        removed = f"{colour} removed" + (", its kept container put back" if put_back else "")
        if version not in state.releases:
            image = self.environment.image_ref(version, self.digests.get(version))
            remove = (
                f"{commands.image_exists(image, engine)} && {commands.remove_image(image, engine)}"
            )
            if runner.run(remove, check=False).ok:
                removed += f", image of {version} pruned"
        self.step(host.name, "undone", removed)

    def _switch(self, host: Host, colour: str, version: str, journal: Journal) -> None:
        layout = self._layout(host)
        self._write_upstream(host, colour, commands.write_file(layout.journal, journal.dump()))
        # nginx reloads asynchronously: the switch is done when nginx answers with the new model.
        url = commands.public_url(self.environment, host, "/model/info")
        # Until the reload is done, the old workers may still proxy to the old colour, which
        # can be gone (a redeploy after its container vanished): an error then means "not yet".
        deadline = time.monotonic() + 15
        while True:
            try:
                served = self._served_release(host, url)
            except RemoteError as error:
                served = f"nothing ({error})"
            if served == version:
                break
            if time.monotonic() > deadline:
                raise DeployError(f"{host.name}: nginx still serves {served} after the switch")
            time.sleep(0.05)
        self.step(host.name, "switched", f"nginx -> {colour} ({version})")

    def _switch_back(self, host: Host, state: HostState) -> None:
        layout = self._layout(host)
        if state.live is not None:
            self._write_upstream(host, state.live)
        self.runners[host.name].run(commands.remove_file(layout.journal))
        self.step(host.name, "switched back", f"nginx -> {state.live} ({state.live_version})")

    def _drain_and_stop(self, host: Host, old_colour: str | None) -> None:
        """Stop the old colour (kept: the rollback target now); the container a deploy set
        aside for its new colour goes (its release is no longer the rollback target)."""
        env = self.environment
        for colour in env.app.ports:
            previous = f"{env.container_name(colour)}-previous"
            self.runners[host.name].run(commands.remove_container(previous, env.engine))
        if old_colour is None:
            return
        name = self.environment.container_name(old_colour)
        self.runners[host.name].run(
            commands.stop_container(
                name, self.environment.app.stop_timeout_s, self.environment.engine
            ),
            timeout_s=self.environment.app.stop_timeout_s + 30,
        )
        self.step(host.name, "stopped", f"{old_colour} kept for rollback")

    def _prune(self, host: Host) -> None:
        runner = self.runners[host.name]
        state = self.read_state(host)
        doomed = state.prunable(self.environment.keep_releases)
        for version in doomed:
            image = self.environment.image_ref(version, state.digests.get(version))
            runner.run(commands.remove_image(image, self.environment.engine), check=False)
        if doomed:
            self.write_state(host, state.pruned(doomed))
            self.step(host.name, "pruned", ", ".join(doomed))

    # ---- the release flow ----------------------------------------------------------------------

    def _failures_text(self, failures: Mapping[str, Exception]) -> str:
        return "; ".join(self.redact(str(exc)) for exc in failures.values())

    def _release_batch(
        self,
        hosts: Sequence[Host],
        version: str,
        reuse: bool,
        outcome: Outcome,
        states: Mapping[str, HostState],
    ) -> dict[str, tuple[str, HostState]]:
        """Prepare and switch a batch; on any failure, undo it and raise (switched hosts of
        this batch are switched back here, earlier batches by the caller)."""
        names = ", ".join(host.name for host in hosts)
        self._confirm_lock(f"starting {version} on {names}")
        started: dict[str, tuple[str, HostState]] = {}
        prepared, failures = on_each(
            hosts, lambda h: self._prepare(h, version, reuse, started, states[h.name])
        )
        if not failures:
            try:
                self._confirm_lock(f"switching {names} to {version}")
            except LockLostError as lost_lock:
                failures = {"*": lost_lock}
        if failures:
            for name, error in failures.items():
                self.step(name, "prepare", str(error).splitlines()[0], ok=False)
            undo = [h for h in hosts if h.name in started]
            for host in undo:
                self._try(host, lambda h: self._undo_prepare(h, version, *started[h.name], reuse))
            lost = [e for e in failures.values() if isinstance(e, LockLostError)]
            if lost:
                raise lost[0]
            raise DeployError(f"prepare failed: {self._failures_text(failures)}")

        def switch(host: Host) -> None:
            colour, before = prepared[host.name]
            self._switch(host, colour, version, Journal(outcome.id, before.live, colour, version))

        _, failures = on_each(hosts, switch)
        if failures:
            for name, exc in failures.items():
                self.step(name, "switch", str(exc), ok=False)
            for host in hosts:  # switch back all: a host may have switched before it failed
                self._try(host, lambda h: self._switch_back(h, prepared[h.name][1]))
            for host in hosts:
                self._try(host, lambda h: self._undo_prepare(h, version, *prepared[h.name], reuse))
            raise DeployError(f"switch failed: {self._failures_text(failures)}")
        return prepared

    def _try(self, host: Host, action: Callable[[Host], None]) -> None:
        try:
            action(host)
        except (RemoteError, DeployError, StateError) as exc:
            self.step(host.name, "undo", f"could not undo: {exc}", ok=False)

    def _release_version(
        self, version: str, reuse: bool, outcome: Outcome, states: Mapping[str, HostState]
    ) -> None:
        env = self.environment
        hosts = list(env.hosts)
        size = len(hosts) if env.strategy == "all-or-nothing" else env.batch_size
        done: dict[str, tuple[str, HostState]] = {}
        try:
            for start in range(0, len(hosts), size):
                batch = hosts[start : start + size]
                done.update(self._release_batch(batch, version, reuse, outcome, states))
            self._confirm_lock(f"recording {version} as live")
        except DeployError:
            earlier = [h for h in hosts if h.name in done]
            for host in earlier:  # rolling mode, or a lost lock: switched hosts go back too
                self._try(host, lambda h: self._switch_back(h, done[h.name][1]))
                self._try(host, lambda h: self._undo_prepare(h, version, *done[h.name], reuse))
            raise

        # Commit: every host switched; record it, then let the old colour drain and stop.
        def commit(host: Host) -> None:
            colour, before = done[host.name]
            journal = commands.remove_file(self._layout(host).journal)
            self.write_state(host, before.switched(colour, version, self.digests[version]), journal)

        _, failures = on_each(hosts, commit)
        if failures:
            raise DeployError(f"switched, but recording it failed: {self._failures_text(failures)}")
        self.step("*", "switched", f"{version} live on {len(hosts)} host(s); draining the old "
                  f"colour for {env.drain.seconds:g} s")  # fmt: skip
        time.sleep(env.drain.seconds)
        self._confirm_committed(version, "stopping the old colour")
        on_each(hosts, lambda h: self._drain_and_stop(h, done[h.name][1].live))
        self._confirm_committed(version, "pruning old releases")
        on_each(hosts, self._prune)

    def _confirm_committed(self, version: str, before: str) -> None:
        """The lock, before a change after the commit: lost, the deploy stops there and undoes
        nothing (its release is live; the old colour and the prune are the new holder's)."""
        try:
            self._confirm_lock(before)
        except LockLostError as lost:
            raise LockLostError(
                f"{lost}: {version} is live on every host; the old colour left running and "
                "nothing pruned",
                undone=False,
            ) from None

    def _benchmark_history(self, host: Host) -> dict[str, dict[str, object]]:
        stored = self.runners[host.name].run(commands.read_file(self._layout(host).benchmarks))
        try:
            history = json.loads(stored.stdout) if stored.stdout.strip() else {}
        except ValueError:
            return {}  # a damaged record only loses the baselines
        return history if isinstance(history, dict) else {}

    def _save_benchmark(self, host: Host, version: str, figures: loadcheck.Measurement) -> None:
        """The release's figures, newest last, beside those of the releases the host keeps
        (no more: the record stays the size of a few releases, whatever the host's age), by
        SFTP (never as a command's argument, whose length Linux bounds)."""
        history = self._benchmark_history(host)
        history.pop(version, None)
        history[version] = figures.as_dict()
        kept = dict(list(history.items())[-self.environment.keep_releases :])
        self.runners[host.name].put_text(self._layout(host).benchmarks, json.dumps(kept))

    def _measure(self, host: Host) -> loadcheck.Measurement:
        settings = self.environment.benchmark
        address = self.environment.http_address(host)
        return loadcheck.measure(address, "/predict", settings.seconds, settings.connections)

    def _refresh_baselines(self, states: Mapping[str, HostState]) -> None:
        """Measure the live release right before the deploy: its figures, stored as its
        baseline, then come from the same machine conditions as the new release's (a shared or
        busy machine would otherwise compare today's load with last week's)."""

        def one(host: Host) -> None:
            live = states[host.name].live_version
            if live is None:
                return
            figures = self._measure(host)
            if figures.errors or figures.requests < self.environment.benchmark.min_requests:
                return  # a sick live release is no baseline: the stored one stays
            self._save_benchmark(host, live, figures)
            self.step(host.name, "baseline", f"{live}: p95 {figures.p95_ms:.1f} ms")

        _, failures = on_each(self.environment.hosts, one)
        for name, exc in failures.items():
            self.step(name, "baseline", f"not refreshed: {exc}", ok=False)

    def _benchmark_gate(
        self, version: str, outcome: Outcome, before: Mapping[str, HostState]
    ) -> None:
        """Load every host through its nginx, compare with the previous release's figures on
        that host; a regression rolls back (when configured) and fails the deploy."""
        env = self.environment
        settings = env.benchmark

        def one(host: Host) -> dict[str, object]:
            history = self._benchmark_history(host)
            previous = before[host.name].live_version
            baseline = (
                loadcheck.Measurement.from_dict(history[previous]) if previous in history else None
            )
            now = self._measure(host)
            verdict, reason = loadcheck.judge(now, baseline, settings)
            self.step(host.name, f"benchmark {verdict}", reason)
            if verdict != "regression":
                self._save_benchmark(host, version, now)
            return {
                **now.as_dict(),
                "baseline": (
                    None if baseline is None else {"version": previous, **baseline.as_dict()}
                ),
                "verdict": verdict,
                "reason": reason,
            }

        results, failures = on_each(env.hosts, one)
        if failures:
            raise DeployError(f"benchmark failed: {self._failures_text(failures)}")
        regressions = {
            n: str(r["reason"]) for n, r in results.items() if r["verdict"] == "regression"
        }
        outcome.benchmark = {
            "result": "regression" if regressions else "pass",
            "rolled_back": False,
            "tolerance": {"p95": settings.p95_tolerance, "max_error_rate": settings.max_error_rate},
            "hosts": results,
        }
        if not regressions:
            passed_at = now_iso()
            self._confirm_committed(version, "recording that it passed the benchmark gate")
            on_each(
                env.hosts,
                lambda h: self.write_state(h, self.read_state(h).gate_passed(version, passed_at)),
            )
            return
        text = "; ".join(f"{name}: {reason}" for name, reason in regressions.items())
        previous = {state.live_version for state in before.values()}
        if not settings.rollback or len(previous) != 1 or None in previous:
            raise RegressionError(f"benchmark regression ({text}); not rolled back", "failed")
        target = str(previous.pop())
        self.step("*", "rolling back", f"benchmark regression: {text}")
        states = self.inspect()
        kept = {state.kept_version for state in states.values()}
        self._release_version(target, kept == {target}, outcome, states)
        outcome.benchmark["rolled_back"] = True
        raise RegressionError(
            f"benchmark regression ({text}); rolled back to {target}", "rolled_back"
        )

    def _all_serving(self) -> bool:
        """Every host's nginx answers /ready: state.json alone cannot tell whether the live
        container survived (a host restart, a manual clean-up)."""

        def ready(host: Host) -> bool:
            url = commands.public_url(self.environment, host, "/ready")
            return bool(self.runners[host.name].run(commands.http_get(url), check=False).ok)

        results, failures = on_each(self.environment.hosts, ready)
        return not failures and all(results.values())

    def _plan(
        self,
        outcome: Outcome,
        version_for: Callable[[dict[str, HostState]], tuple[str, bool]],
        approve: bool,
        confirm: Callable[[str], str] | None,
        force: bool,
    ) -> tuple[str, bool] | None:
        """Before the lock: the hosts' states, the target, approval. None: nothing to do."""
        states, failures = on_each(self.environment.hosts, self.read_state)
        if failures:
            raise DeployError(
                f"hosts not ready for a {outcome.action}: {self._failures_text(failures)}"
            )
        outcome.from_versions = {name: states[name].live_version for name in states}
        for state in states.values():  # what the caller gave comes first
            for known, digest in state.digests.items():
                self.digests.setdefault(known, digest)
        version, reuse = version_for(states)
        outcome.to_version = version
        outcome.to_digest = self._digest_of(version)
        outcome.signed_by = self.trusted_key()
        already = all(
            state.live_version == version and state.live_digest == outcome.to_digest
            for state in states.values()
        )
        if outcome.action != "rollback" and already and not force and self._all_serving():
            return None
        how = self.check_approval(version, states, approve, confirm)
        self.step("*", outcome.action, f"{version} to {self.environment.name} (approval: {how})")
        return version, reuse

    def _run(
        self,
        action: str,
        version_for: Callable[[dict[str, HostState]], tuple[str, bool]],
        approve: bool,
        confirm: Callable[[str], str] | None,
        *,
        force: bool = False,
        requested: str | None = None,
    ) -> Outcome:
        """The frame around every release: states, approval, lock, heartbeat, audit. A deploy
        of the version every host already runs does nothing, unless `force`. `requested` is
        the release asked for, named by the audit entry even when it is refused."""
        env = self.environment
        outcome = self._begin(action, requested)
        outcome.skipped = self.skipped
        if self.skipped:
            self.step("*", "partial", f"only {[h.name for h in env.hosts]}; skipped on purpose: "
                      f"{self.skipped} (the next full {action} brings them in line)")  # fmt: skip
        lock = self.new_lock(outcome)
        try:
            planned = self._plan(outcome, version_for, approve, confirm, force)
            if planned is None:
                outcome.result = "ok"
                outcome.detail = "already live on every host (--force redeploys)"
                self._finish(outcome)
                return outcome
            version, reuse = planned
            lock.acquire(self.holder(outcome))
        except (DeployError, RemoteError, StateError) as exc:
            lock.close()
            outcome.result, outcome.detail = "refused", self.redact(str(exc))
            self._finish(outcome)
            raise DeployError(outcome.detail) from None
        with self.holding(lock):
            self._under_lock(action, version, reuse, version_for, outcome)
        self._finish(outcome)
        if outcome.result != "ok":
            raise DeployError(outcome.detail)
        return outcome

    def _under_lock(
        self,
        action: str,
        version: str,
        reuse: bool,
        version_for: Callable[[dict[str, HostState]], tuple[str, bool]],
        outcome: Outcome,
    ) -> None:
        """The release itself, once locked; its result and detail go into `outcome`."""
        env = self.environment
        try:
            states = self.inspect()
            if action == "rollback":  # states may have changed while we waited for the lock
                version, reuse = version_for(states)
            gated = action != "rollback" and env.benchmark.enabled
            if gated:
                self._refresh_baselines(states)
            self._release_version(version, reuse, outcome, states)
            outcome.result = "ok"
            if gated:
                self._benchmark_gate(version, outcome, states)
        except RegressionError as exc:
            outcome.result, outcome.detail = exc.result, self.redact(str(exc))
        except LockLostError as exc:
            outcome.result = "failed"
            undone = ": stopped there, and undid what it had changed" if exc.undone else ""
            outcome.detail = self.redact(f"{exc}{undone}")
        except (DeployError, RemoteError, StateError, ValueError) as exc:
            outcome.result, outcome.detail = "failed", self.redact(str(exc))

    def _begin(self, action: str, requested: str | None = None) -> Outcome:
        """A new audited action, timed from now; `_finish` prints and audits it."""
        self._t0 = time.monotonic()
        self.outcome = Outcome(new_id(), action, self.environment.name, current_user(), now_iso(),
                               {}, requested)  # fmt: skip
        return self.outcome

    def _finish(self, outcome: Outcome) -> None:
        outcome.seconds = round(time.monotonic() - self._t0, 3)
        summary = outcome.detail.splitlines()[0] if outcome.detail else ""
        self.step(
            "*",
            f"{outcome.action} {outcome.result}",
            summary or f"{outcome.to_version} in {outcome.seconds:.1f} s",
        )
        self._audit(outcome.audit_entry())

    # ---- public actions ------------------------------------------------------------------------

    def deploy(
        self,
        version: str,
        approve: bool = False,
        confirm: Callable[[str], str] | None = None,
        force: bool = False,
        digest: str | None = None,
    ) -> Outcome:
        """Release `version` (by `digest`, else the one the hosts or the registry know) to every
        host (all-or-nothing by default); nothing to do when every host runs it already, unless
        `force`."""
        if digest:
            self.digests[version] = digest

        def target(states: dict[str, HostState]) -> tuple[str, bool]:
            source = self.environment.promote_from
            if source is not None:  # only what passed there, as it passed there
                passed = self._source_states(source)
                passed_release(source, passed, version, self._digest_of(version))
            return version, False

        return self._run("deploy", target, approve, confirm, force=force, requested=version)

    def promote(
        self,
        source: Environment,
        approve: bool = False,
        confirm: Callable[[str], str] | None = None,
        planned: str | None = None,
    ) -> Outcome:
        """Deploy exactly the release live on `source` (this environment's `promote_from`), by
        its digest, once it passed `source`'s benchmark gate there on every host; refused (and
        audited here) otherwise, and when it is not the `planned` digest. The rest is a deploy
        like any other."""
        allowed = self.environment.promote_from
        if allowed != source.name:
            raise DeployError(
                f"{self.environment.name} promotes from {allowed or 'nowhere'} (promote_from), "
                f"not from {source.name}"
            )

        def target(states: dict[str, HostState]) -> tuple[str, bool]:
            states = self._source_states(source.name)
            version, digest = promotable_release(source, states, planned)
            self.digests[version] = digest
            self.step("*", "promotable", f"{version} ({digest[:19]}) passed {source.name}")
            return version, False

        return self._run("promote", target, approve, confirm)

    def states(self) -> dict[str, HostState]:
        """Every host's state (no lock: a read); DeployError naming the hosts that failed."""
        states, failures = on_each(self.environment.hosts, self.read_state)
        if failures:
            raise DeployError(
                f"cannot read what {self.environment.name} runs: "
                f"{self._failures_text(failures)}"
            )
        return states

    def promotable(self, source: str) -> tuple[str, str]:
        """(release, digest) this environment would promote from `source` now (DeployError
        saying why none)."""
        return promotable_release(self.environment.sibling(source), self._source_states(source))

    def _source_states(self, name: str) -> dict[str, HostState]:
        """The hosts' states of environment `name` (the one this one promotes from)."""
        reader = Orchestrator(
            self.environment.sibling(name), environ=self.environ, echo=lambda line: None
        )
        try:
            return reader.states()
        finally:
            reader.close()

    def _digest_of(self, version: str) -> str:
        """The digest `version` runs by: given, recorded by the hosts, or else what the registry
        serves for it now (loopback registries only: a real environment deploys a release from
        the job that built it, or promotes one); asked once, then kept."""
        if version in self.digests:
            return self.digests[version]
        location, _, repository = self.environment.image.partition("/")
        try:
            digest, _ = RegistryClient(location).manifest(repository, version)
        except RetentionError as exc:
            raise DeployError(
                f"no digest known for {version}: pass the one its build recorded "
                f"(reports/release.json) or promote it ({exc})"
            ) from None
        if not digest:
            raise DeployError(f"the registry named no digest for {version}")
        self.digests[version] = digest
        return digest

    def rollback(
        self,
        version: str | None = None,
        approve: bool = False,
        confirm: Callable[[str], str] | None = None,
    ) -> Outcome:
        """Back to the previous release kept on every host (a start and a proxy switch), or to
        `version` (its kept container if every host has it, else a full deploy of it)."""

        def target(states: dict[str, HostState]) -> tuple[str, bool]:
            kept = {state.kept_version for state in states.values()}
            live = {state.live_version for state in states.values()}
            if version is None:
                # The kept release, unless it is the live one (a redeploy of the same version).
                if len(kept) == 1 and None not in kept and not kept & live:
                    return str(kept.pop()), True
                histories = [state.releases for state in states.values()]
                previous = _previous_common_release(histories, states)
                if previous is None:
                    raise DeployError(f"{self.environment.name}: no previous release to return to")
                return previous, False
            return version, kept == {version}

        return self._run("rollback", target, approve, confirm, requested=version)

    def setup(self) -> dict[str, list[str]]:
        """Prepare every host (safe to repeat: `hostsetup`); what changed per host. Audited
        like a release: when a host was provisioned, by whom, and what it changed."""
        outcome = self._begin("setup")
        try:
            changes = hostsetup.HostSetup(self).run()
        except DeployError as error:
            outcome.result, outcome.detail = "failed", str(error)
            self._finish(outcome)  # on the hosts that have a deploy root to log in
            raise
        outcome.result = "ok"
        outcome.detail = "; ".join(
            f"{host}: {', '.join(changed) or 'nothing changed'}"
            for host, changed in changes.items()
        )
        self._finish(outcome)
        return changes

    def prune(self) -> set[str]:
        """Remove releases beyond `keep_releases` from every host, under the lock (a deploy
        prunes too, when it is done); returns the versions that must stay anywhere: what each
        host runs and would roll back to."""
        outcome = self._begin("prune")
        with self.locked(outcome):
            _, failures = on_each(self.environment.hosts, self._prune)
            states, more = on_each(self.environment.hosts, self.read_state)
        failures.update(more)
        outcome.result = "failed" if failures else "ok"
        outcome.detail = self._failures_text(failures)
        self._finish(outcome)
        if failures:
            raise DeployError(f"prune failed: {outcome.detail}")
        return {
            version
            for state in states.values()
            for version in (state.live_version, state.kept_version)
            if version
        }

    def status(self) -> list[dict[str, object]]:
        """Per host: addresses, live colour, version, health through nginx, lock, journal."""

        def one(host: Host) -> dict[str, object]:
            env = self.environment
            row: dict[str, object] = {
                "host": host.name,
                "ssh": f"{host.address}:{env.ssh_port(host)}",
                "http": f"http://{env.http_address(host)}",
            }
            try:
                state = self.read_state(host)
                runner = self.runners[host.name]
                ready = runner.run(
                    commands.http_get(commands.public_url(env, host, "/ready")), check=False
                )
                journal = runner.run(commands.read_file(self._layout(host).journal)).stdout
                info = runner.run(
                    commands.http_get(commands.public_url(env, host, "/model/info")), check=False
                )
                row.update(
                    reachable=True,
                    colour=state.live,
                    version=state.live_version,
                    digest=state.live_digest,
                    signed_by=self.trusted_key(),
                    kept=state.kept_version,
                    healthy=ready.ok,
                    interrupted_switch=bool(journal.strip()),
                    releases=state.releases,
                    passed=state.passed,
                    **served_release(info.stdout if info.ok else ""),
                )
            except (RemoteError, StateError) as exc:
                row.update(reachable=False, healthy=False, error=self.redact(str(exc)))
            return row

        results, _ = on_each(self.environment.hosts, one)
        return [results[h.name] for h in self.environment.hosts if h.name in results]

    def lock_info(self) -> dict[str, object] | None:
        """The current lock record with seconds until expiry, from the first reachable host."""
        for host in self.environment.hosts:
            try:
                out = self.runners[host.name].run(commands.lock_show(self._layout(host))).stdout
            except RemoteError:
                continue
            lines = [*out.splitlines(), "", "", ""]
            if not lines[2].strip():
                return None
            record: dict[str, object] = json.loads(lines[2])
            record["expires_in_s"] = int(lines[1]) - int(lines[0])
            return record
        return None

    def audit_log(self, limit: int = 20) -> list[dict[str, object]]:
        """The newest entries, merged over all reachable hosts (each is written to all)."""
        entries: dict[str, dict[str, object]] = {}
        for host in self.environment.hosts:
            try:
                out = (
                    self.runners[host.name]
                    .run(commands.audit_read(self._layout(host), limit * 2))
                    .stdout
                )
            except RemoteError:
                continue
            for line in out.splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                entries[f"{entry.get('id')}-{entry.get('result')}"] = entry
        ordered = sorted(entries.values(), key=lambda e: str(e.get("logged_at", "")))
        return ordered[-limit:]

    def verify_audit(self) -> dict[str, str]:
        """Per host: how many entries chain, or the first that does not (auditlog.chain_break),
        or why the log cannot be read; and whether the hosts' chains end alike."""
        found: dict[str, str] = {}
        ends: dict[str, str] = {}
        for host in self.environment.hosts:
            try:
                out = self.runners[host.name].run(commands.audit_whole(self._layout(host))).stdout
            except RemoteError as exc:
                found[host.name] = f"unreadable: {exc}"
                continue
            lines = out.splitlines()
            broken = auditlog.chain_break(lines)
            if broken is None:
                found[host.name] = f"{len(lines)} entries chain"
                ends[host.name] = lines[-1] if lines else ""
            else:
                found[host.name] = f"BROKEN at line {broken.line}: {broken.reason}"
        last_ids = {
            name: str(json.loads(line).get("id")) if line else "" for name, line in ends.items()
        }
        if len(set(last_ids.values())) > 1:
            found["*"] = f"the hosts' logs end in different entries: {last_ids}"
        return found

    def unlock(self, reason: str = "") -> list[str]:
        """Force-release the lock on every host, with an audit entry naming who did it."""
        released = []
        for host in self.environment.hosts:
            try:
                out = (
                    self.runners[host.name]
                    .run(commands.lock_force_release(self._layout(host)))
                    .stdout
                )
            except RemoteError as exc:
                self.step(host.name, "unlock", str(exc), ok=False)
                continue
            if out.strip():
                released.append(out.strip())
        self._audit(
            {"id": new_id(), "action": "unlock", "environment": self.environment.name,
             "user": current_user(), "started": now_iso(), "result": "ok",
             "detail": f"{reason or 'forced'}; released: {released or 'no lock was held'}"}
        )  # fmt: skip
        return released


def _cause(stderr: str) -> str:
    """The last line of a failed engine command: its error, after any retry warnings."""
    lines = stderr.strip().splitlines()
    return lines[-1] if lines else "(no message)"


def served_release(model_info: str) -> dict[str, object]:
    """What the live API says it is (its /model/info): release, commit, tree, model version."""
    try:
        release = json.loads(model_info)["release"]
        model = release["model"]
        return {
            "served_release": str(release["release"]), "commit": str(release["commit"]),
            "tree": str(release["tree"]), "model_version": str(model["version"]),
            "model_manifest_sha256": str(model["manifest_sha256"]),
        }  # fmt: skip
    except (ValueError, KeyError, TypeError):
        return {}


def running_release(name: str, states: Mapping[str, HostState]) -> tuple[str, str] | None:
    """(release, digest) every host of environment `name` runs, None when none runs any;
    DeployError when the hosts disagree or a release has no recorded digest."""
    live = {(state.live_version, state.live_digest) for state in states.values()}
    if live == {(None, None)}:
        return None
    if len(live) != 1:
        raise DeployError(f"{name} does not run one release: {sorted(map(str, live))}")
    version, digest = live.pop()
    if version is None or digest is None:
        raise DeployError(f"{name} runs {version} without a recorded digest")
    return version, digest


def promotable_release(
    source: Environment, states: Mapping[str, HostState], planned: str | None = None
) -> tuple[str, str]:
    """(release, digest) live on every host of `source` and benchmark-passed on each; else
    DeployError saying what is missing. With `planned` (the digest CD's plan chose, before the
    reviewers' wait), a different release now on `source` is refused, not promoted instead."""
    running = running_release(source.name, states)
    if running is None:
        raise DeployError(f"{source.name} runs no release to promote")
    if planned is not None and running[1] != planned:
        raise DeployError(
            f"{source.name} now runs {running[0]} ({running[1][:19]}), not the planned "
            f"{planned[:19]}: a newer release reached {source.name} after the plan. Nothing "
            "promoted; the next run of main's CD plans again"
        )
    passed_release(source.name, states, *running)
    return running


def passed_release(source: str, states: Mapping[str, HostState], version: str, digest: str) -> None:
    """DeployError unless `version`, by `digest`, passed `source`'s benchmark gate on every
    one of its hosts."""
    not_passed = sorted(name for name, state in states.items() if version not in state.passed)
    if not_passed:
        raise DeployError(
            f"{version} has not passed {source}'s benchmark gate on {not_passed}: "
            f"deploy it to {source} first"
        )
    other = sorted({s.digests.get(version) for s in states.values()} - {digest}, key=str)
    if other:
        raise DeployError(
            f"{version} passed {source} as {other}, not as {digest}: a rebuilt image must "
            f"pass {source} again"
        )


def _previous_common_release(
    histories: Sequence[Sequence[str]], states: Mapping[str, HostState]
) -> str | None:
    """The newest release before the live one that every host has in its history."""
    live = {state.live_version for state in states.values()}
    common = set(histories[0]).intersection(*histories[1:]) if histories else set()
    for version in reversed(histories[0] if histories else []):
        if version in common and version not in live:
            return version
    return None
