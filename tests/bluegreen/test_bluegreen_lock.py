"""The environment lock's keeping and losing, on local host roots (no SSH): renewals in
parallel and bounded by a timeout under the TTL, and a lock that expired, was taken over or went
unrenewed for a TTL reported lost, so the deploy stops before its next change."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from imdb_deploy.bluegreen import commands
from imdb_deploy.bluegreen.config import Environment, Host, Redactor
from imdb_deploy.bluegreen.errors import LockLostError
from imdb_deploy.bluegreen.lock import EnvironmentLock, renew_timeout_s
from imdb_deploy.bluegreen.runner import RemoteError, Result
from tests.bluegreen.test_bluegreen_cli import LocalRunner, make_env


def sh_run(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)


def environment(tmp_path: Path, ttl_s: int = 8, heartbeat_s: float = 2) -> Environment:
    env = make_env(tmp_path / "roots", name="sandbox-test")
    return env.model_copy(
        update={"lock": env.lock.model_copy(update={"ttl_s": ttl_s, "heartbeat_s": heartbeat_s})}
    )


class HungRunner(LocalRunner):
    """A host whose commands hang until the runner's timeout, then fail as the SSH runner's do."""

    def run(self, command: str, timeout_s: float | None = None, check: bool = True) -> Result:
        time.sleep(timeout_s or 30)
        raise RemoteError(self.name, f"timed out after {timeout_s:g} s")


def new_lock(
    env: Environment, hung: frozenset[str] = frozenset(), lines: list[str] | None = None
) -> EnvironmentLock:
    def runner(host: Host) -> LocalRunner:
        kind = HungRunner if host.name in hung else LocalRunner
        return kind(env, host, Redactor([]), {})

    def step(host: str, step: str, detail: str = "", ok: bool = True) -> None:
        (lines if lines is not None else []).append(f"{host} {step}: {detail}")

    return EnvironmentLock(env, env.hosts, runner, step, "token-mine")


def test_renewals_are_bounded_well_under_the_ttl() -> None:
    env = make_env(name="production")
    assert renew_timeout_s(env) == 15.0  # ttl 60 s / 4
    short = env.model_copy(update={"lock": env.lock.model_copy(update={"ttl_s": 2})})
    assert renew_timeout_s(short) == 1.0  # never below a second
    slow_ssh = env.model_copy(update={"ssh": env.ssh.model_copy(update={"command_timeout_s": 5})})
    assert renew_timeout_s(slow_ssh) == 5.0  # nor above the command timeout


def test_a_held_lock_renews_on_every_host(tmp_path: Path) -> None:
    env = environment(tmp_path)
    lock = new_lock(env)
    lock.acquire({"holder": "me"})
    for host in env.hosts:
        Path(str(env.layout(host).lock_expires)).write_text(f"{int(time.time()) + 2}\n")
    assert lock.renew() == {}
    lock.confirm("switching")  # no error: still ours everywhere
    for host in env.hosts:
        assert int(Path(str(env.layout(host).lock_expires)).read_text()) >= time.time() + 6


def test_an_expired_lock_is_lost_and_confirm_says_where_and_why(tmp_path: Path) -> None:
    env = environment(tmp_path)
    lock = new_lock(env)
    lock.acquire({"holder": "me"})
    h1 = env.layout(env.hosts[0])
    Path(str(h1.lock_expires)).write_text(f"{int(time.time()) - 1}\n")

    with pytest.raises(LockLostError, match=r"before switching h1 \(h1: it expired"):
        lock.confirm("switching h1")
    assert list(lock.lost) == ["h1"]


def test_a_lock_taken_over_is_lost(tmp_path: Path) -> None:
    env = environment(tmp_path)
    lock = new_lock(env)
    lock.acquire({"holder": "me"})
    h2 = env.layout(env.hosts[1])
    sh_run(commands.lock_force_release(h2))
    sh_run(commands.lock_acquire(h2, {"holder": "carol"}, "token-carol", 60))

    with pytest.raises(LockLostError, match="h2: released or taken over by someone else"):
        lock.confirm("recording v2 as live")
    lock.release()  # gives back its own, leaves carol's
    assert '"carol"' in sh_run(commands.lock_show(h2)).stdout
    assert sh_run(commands.lock_show(env.layout(env.hosts[0]))).stdout.splitlines()[2] == ""


def test_a_hung_host_delays_no_renewal_and_is_lost_only_after_a_ttl(tmp_path: Path) -> None:
    env = environment(tmp_path, ttl_s=4, heartbeat_s=2)  # renewals time out after 1 s
    lock = new_lock(env)
    lock.acquire({"holder": "me"})
    hung = new_lock(env, hung=frozenset({"h2"}))
    hung._renewed = dict(lock._renewed)  # the same deploy, its h2 now hanging
    hung.token = lock.token

    started = time.monotonic()
    assert hung.renew() == {}  # h2 unconfirmed, but its lock cannot have expired yet
    assert time.monotonic() - started < 2.5  # one timeout (1 s), not one per host in turn
    h1 = env.layout(env.hosts[0])
    assert int(Path(str(h1.lock_expires)).read_text()) > time.time() + 1  # h1 renewed

    hung._renewed["h2"] -= 4  # its last good renewal is now a whole TTL ago
    with pytest.raises(
        LockLostError, match=r"h2: not renewed for \d+ s \(error: h2: timed out after 1 s\)"
    ):
        hung.confirm("switching h1, h2")


def test_the_heartbeat_reports_a_loss_once(tmp_path: Path) -> None:
    env = environment(tmp_path, ttl_s=2, heartbeat_s=0.2)
    lines: list[str] = []
    lock = new_lock(env, lines=lines)
    lock.acquire({"holder": "me"})
    Path(str(env.layout(env.hosts[0]).lock_expires)).write_text("1\n")
    with lock.heartbeat():
        time.sleep(1.0)
    lost = [line for line in lines if "lock lost" in line]
    assert lost == ["h1 lock lost: it expired (not renewed within its TTL)"]
