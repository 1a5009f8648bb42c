"""The environment's deploy lock, held on every host at once.

- Taken on all hosts or on none: a refusal anywhere gives back the hosts already taken.
- Kept alive by a heartbeat that renews every host in parallel, each renewal bounded by a
  timeout well under the TTL, over SSH connections of its own (a hung deploy command cannot hold
  a renewal up, and a renewal that times out cannot cut a deploy command's connection).
- Lost when a host's lock expired, was taken over or released by someone else, or could not be
  renewed for a whole TTL (it may have expired there). `confirm` renews every host right before
  each change the deploy makes and raises LockLostError then: the deploy stops there and undoes
  what it did, instead of carrying on beside whoever may now hold the lock.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from imdb_deploy.bluegreen import commands
from imdb_deploy.bluegreen.config import Environment, Host
from imdb_deploy.bluegreen.errors import DeployError, LockHeldError, LockLostError
from imdb_deploy.bluegreen.runner import HostRunner, RemoteError, on_each

Step = Callable[..., None]  # Orchestrator.step(host, step, detail="", ok=True)


def renew_timeout_s(environment: Environment) -> float:
    """How long one renewal may take: a quarter of the TTL (so a hung host is given up on long
    before the lock could expire elsewhere), at most the command timeout, at least a second."""
    lock = environment.lock
    return max(1.0, min(lock.ttl_s / 4, environment.ssh.command_timeout_s))


class EnvironmentLock:
    """The lock of one deploy (its `token`) on `hosts`."""

    def __init__(
        self,
        environment: Environment,
        hosts: Sequence[Host],
        runner_for: Callable[[Host], HostRunner],
        step: Step,
        token: str,
    ) -> None:
        self.environment = environment
        self.hosts = list(hosts)
        self.token = token
        self._runner_for = runner_for
        self._runners: dict[str, HostRunner] = {}
        self._step = step
        self._guard = threading.Lock()  # one renewal round at a time
        self._renewed: dict[str, float] = {}  # host -> when its last good renewal was sent
        self.lost: dict[str, str] = {}  # host -> why the lock is no longer ours there

    # ---- plumbing ----------------------------------------------------------------------------

    def _runner(self, host: Host) -> HostRunner:
        if host.name not in self._runners:
            self._runners[host.name] = self._runner_for(host)
        return self._runners[host.name]

    def close(self) -> None:
        for runner in self._runners.values():
            runner.close()

    # ---- take and give back ------------------------------------------------------------------

    def acquire(self, holder: Mapping[str, object]) -> None:
        """Take the lock on every host, or on none (LockHeldError names the holder)."""
        ttl = self.environment.lock.ttl_s
        name = self.environment.name

        def take(host: Host) -> str:
            sent = time.monotonic()
            command = commands.lock_acquire(self.environment.layout(host), holder, self.token, ttl)
            result = self._runner(host).run(command, check=False)
            if result.exit_code == commands.LOCK_HELD:
                raise LockHeldError(
                    f"{name} is locked by {result.stdout.strip()} (on {host.name}); wait for "
                    f"it, or `fab unlock --env {name}` if that deploy is gone"
                )
            if not result.ok:
                raise RemoteError(host.name, f"lock failed: {result.stderr.strip()}")
            self._renewed[host.name] = sent
            return str(result.stdout)

        taken, failures = on_each(self.hosts, take)
        if failures:  # all or none: give back what was taken
            self.release([host for host in self.hosts if host.name in taken])
            held = [exc for exc in failures.values() if isinstance(exc, LockHeldError)]
            raise held[0] if held else DeployError("; ".join(map(str, failures.values())))
        for host_name, output in taken.items():
            if output.startswith("expired"):
                stale = output.removeprefix("expired").strip()
                self._step(host_name, "lock", f"took over an expired lock: {stale}")
        self._step("*", "locked", f"{len(taken)} host(s), expires after {ttl:g} s unless renewed")

    def release(self, hosts: Sequence[Host] | None = None) -> None:
        """Give the lock back where it is still ours (someone else's is left alone)."""

        def give_back(host: Host) -> None:
            command = commands.lock_release(self.environment.layout(host), self.token)
            self._runner(host).run(command)

        _, failures = on_each(self.hosts if hosts is None else hosts, give_back)
        for name, exc in failures.items():
            self._step(name, "unlock", f"left to expire: {exc}", ok=False)

    # ---- keep and check ----------------------------------------------------------------------

    def renew(self) -> dict[str, str]:
        """Renew every host where the lock is not lost yet, in parallel; returns `lost`."""
        lock = self.environment.lock
        timeout = renew_timeout_s(self.environment)

        def one(host: Host) -> str | None:
            """Why the lock is lost on `host`; None once renewed. A failed renewal raises."""
            sent = time.monotonic()
            command = commands.lock_renew(self.environment.layout(host), self.token, lock.ttl_s)
            result = self._runner(host).run(command, timeout_s=timeout, check=False)
            if result.exit_code == commands.LOCK_HELD:
                return "released or taken over by someone else"
            if result.exit_code == commands.LOCK_EXPIRED:
                return "it expired (not renewed within its TTL)"
            if not result.ok:
                raise RemoteError(host.name, result.stderr.strip()[-200:])
            self._renewed[host.name] = sent
            return None

        with self._guard:
            pending = [host for host in self.hosts if host.name not in self.lost]
            verdicts, failures = on_each(pending, one)
            self.lost.update({name: why for name, why in verdicts.items() if why is not None})
            for name, exc in failures.items():
                # Unconfirmed: still ours unless a whole TTL passed since the last renewal.
                silent = time.monotonic() - self._renewed.get(name, 0.0)
                if silent >= lock.ttl_s:
                    self.lost[name] = f"not renewed for {silent:.0f} s (error: {exc})"
            return dict(self.lost)

    def confirm(self, before: str) -> None:
        """Renew everywhere now; LockLostError (naming the hosts and why) if the lock is no
        longer this deploy's on every host. Called right before each change."""
        lost = self.renew()
        if lost:
            where = "; ".join(f"{name}: {why}" for name, why in sorted(lost.items()))
            raise LockLostError(f"lost the deploy lock before {before} ({where})")

    @contextlib.contextmanager
    def heartbeat(self) -> Iterator[None]:
        """Renew every `heartbeat_s` while the block runs (a thread; stopped at the end)."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.environment.lock.heartbeat_s):
                known = set(self.lost)
                for name, why in self.renew().items():
                    if name not in known:
                        self._step(name, "lock lost", why, ok=False)

        thread = threading.Thread(target=beat, name="lock-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
