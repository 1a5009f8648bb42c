"""Runs the command builders' output on a host over SSH (Fabric), with verified host keys.

Host keys come only from the environment's pinned known_hosts file; an unknown or changed key
refuses the connection (paramiko's RejectPolicy), never adds it. Credentials: the environment's
identity file, else a private key in $MLOPS_DEPLOY_SSH_KEY (a CI secret), else the SSH agent.
Every message that leaves this layer goes through the environment's Redactor.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import io
import os
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol, TypeVar

import paramiko
import tenacity
from fabric import Config, Connection
from invoke.exceptions import CommandTimedOut

from imdb_deploy.bluegreen import commands
from imdb_deploy.bluegreen.config import SSH_KEY_VAR, Environment, Host, Redactor

T = TypeVar("T")


def on_each(
    hosts: Sequence[Host], work: Callable[[Host], T]
) -> tuple[dict[str, T], dict[str, Exception]]:
    """Run `work` for every host at once; results and failures by host name."""
    results: dict[str, T] = {}
    failures: dict[str, Exception] = {}
    if not hosts:
        return results, failures
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        futures = {host.name: pool.submit(work, host) for host in hosts}
        for name, future in futures.items():
            try:
                results[name] = future.result()
            except Exception as exc:  # every failure is reported per host
                failures[name] = exc
    return results, failures


class RemoteError(RuntimeError):
    """A command failed on a host, or the host could not be reached."""

    def __init__(self, host: str, message: str) -> None:
        super().__init__(f"{host}: {message}")
        self.host = host


class UnreachableError(RemoteError):
    """No SSH session: refused, timed out, dropped, or the host key did not match."""

    def __init__(self, host: str, message: str, *, transient: bool = True) -> None:
        super().__init__(host, message)
        self.transient = transient  # worth another try (not a changed key or refused login)


@dataclass(frozen=True)
class Result:
    stdout: str
    stderr: str
    exit_code: int

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def private_key(text: str) -> paramiko.PKey:
    """A private key given as text (a CI secret): ed25519, ECDSA or RSA."""
    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return kind.from_private_key(io.StringIO(text))
        except paramiko.SSHException:
            continue
    raise ValueError(f"${SSH_KEY_VAR} holds no usable private key")


def key_fingerprint(environment: Environment, environ: Mapping[str, str]) -> str:
    """The key deploys log in with, as `ssh-keygen -l` names it (SHA256:...): what the audit
    records beside the claimed actor. `agent` when the SSH agent chooses it."""
    try:
        if environment.ssh.identity_file is not None:
            key = paramiko.PKey.from_path(environment.ssh.identity_file)
        elif environ.get(SSH_KEY_VAR):
            key = private_key(environ[SSH_KEY_VAR])
        else:
            return "agent"
    except (OSError, ValueError, paramiko.SSHException):
        return "unreadable"
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class HostRunner:
    """One SSH connection to one host, opened on first use and reopened after a drop."""

    connect_backoff_s = 0.5  # before the second connect; doubles (a blip is over in a second)

    def __init__(
        self,
        environment: Environment,
        host: Host,
        redactor: Redactor,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.environment = environment
        self.host = host
        self.redact = redactor
        self._environ = dict(os.environ if environ is None else environ)
        self._connection: Connection | None = None
        self._guard = threading.Lock()

    @property
    def name(self) -> str:
        return self.host.name

    def _connect(self) -> Connection:
        ssh = self.environment.ssh
        connect_kwargs: dict[str, object] = {"look_for_keys": False, "allow_agent": False}
        if ssh.identity_file is not None:
            connect_kwargs["key_filename"] = str(ssh.identity_file)
        elif self._environ.get(SSH_KEY_VAR):
            connect_kwargs["pkey"] = private_key(self._environ[SSH_KEY_VAR])
        else:
            connect_kwargs["allow_agent"] = True
        connection = Connection(
            config=Config(overrides={"load_ssh_configs": False, "run": {"in_stream": False}}),
            host=self.host.address,
            user=ssh.user or getpass.getuser(),
            port=self.environment.ssh_port(self.host),
            connect_timeout=int(ssh.connect_timeout_s),
            connect_kwargs=connect_kwargs,
        )
        # Fabric adds unknown host keys by default; we pin them instead.
        connection.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        connection.client.load_host_keys(str(ssh.known_hosts))
        try:
            connection.open()
        except paramiko.BadHostKeyException as exc:
            connection.client.close()
            raise UnreachableError(
                self.name,
                f"host key changed for {exc.hostname}: refusing to connect",
                transient=False,
            ) from None
        except paramiko.AuthenticationException as exc:
            connection.client.close()
            raise UnreachableError(
                self.name, self.redact(f"login refused: {exc}"), transient=False
            ) from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            # Connection.close() does nothing for a connection that never opened, and paramiko's
            # transport thread would live on: close the client itself.
            connection.client.close()
            address = f"{self.host.address}:{self.environment.ssh_port(self.host)}"
            raise UnreachableError(
                self.name, self.redact(f"cannot connect to {address}: {exc}")
            ) from None
        return connection

    def connection(self) -> Connection:
        """The open connection, or a new one: a connect that fails on something transient
        (refused, timed out, reset) is tried again with backoff, `ssh.connect_attempts` times."""
        with self._guard:
            current = self._connection
            if current is None or not current.is_connected:
                if current is not None:
                    current.close()
                retrying = tenacity.Retrying(
                    stop=tenacity.stop_after_attempt(self.environment.ssh.connect_attempts),
                    wait=tenacity.wait_exponential(multiplier=self.connect_backoff_s, max=4),
                    retry=tenacity.retry_if_exception(
                        lambda exc: isinstance(exc, UnreachableError) and exc.transient
                    ),
                    reraise=True,
                )
                self._connection = retrying(self._connect)
            return self._connection

    def run(self, command: str, timeout_s: float | None = None, check: bool = True) -> Result:
        """Run one command; with `check`, a non-zero exit raises RemoteError with its output."""
        timeout = timeout_s or self.environment.ssh.command_timeout_s
        try:
            outcome = self.connection().run(
                command, hide=True, warn=True, timeout=timeout, in_stream=False
            )
        except CommandTimedOut:
            self.close()
            raise RemoteError(
                self.name, f"timed out after {timeout:g} s: {self.redact(command)[:200]}"
            ) from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.close()
            raise UnreachableError(self.name, self.redact(f"connection lost: {exc}")) from None
        result = Result(outcome.stdout, outcome.stderr, int(outcome.exited))
        if result.exit_code < 0:  # the channel closed without an exit status: the link dropped
            self.close()
            raise UnreachableError(self.name, "connection lost while a command ran")
        if check and not result.ok:
            detail = (result.stderr or result.stdout).strip()[-800:]
            raise RemoteError(
                self.name,
                self.redact(f"`{command[:200]}` exited {result.exit_code}: {detail}"),
            )
        return result

    def upload(self, path: PurePosixPath, text: str) -> None:
        """Write `text` to the host's `path` by SFTP, readable by the login user only."""
        try:
            sftp = self.connection().sftp()
            with sftp.open(str(path), "w") as remote:
                remote.chmod(0o600)  # restricted before the content (secrets) arrives
                remote.write(text.encode())
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.close()
            raise UnreachableError(
                self.name, self.redact(f"upload of {path} failed: {exc}")
            ) from None

    def put_text(self, path: PurePosixPath, text: str, mode: int = 0o644) -> None:
        """Write a file atomically: upload beside it, then rename into place."""
        temporary = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
        self.upload(temporary, text)
        self.run(commands.install_file(temporary, path, mode))

    def close(self) -> None:
        with self._guard:
            if self._connection is not None:
                with contextlib.suppress(OSError, EOFError):
                    self._connection.close()
                self._connection = None


class Shell(Protocol):
    """What setup needs of a login on a host: a command, a file."""

    @property
    def name(self) -> str: ...

    def run(self, command: str, timeout_s: float | None = None, check: bool = True) -> Result: ...

    def put_text(self, path: PurePosixPath, text: str, mode: int = 0o644) -> None: ...


class Login(Shell, Protocol):
    """One user's SSH login to a host (a HostRunner): what AsRoot builds on."""

    environment: Environment

    def upload(self, path: PurePosixPath, text: str) -> None: ...

    def close(self) -> None: ...


class AsRoot:
    """Root on a host through one login: the login itself when it is root, else through
    passwordless sudo, as a cloud image's admin user (`admin` on Debian's, `ubuntu` on
    Ubuntu's) has it. Files are uploaded to the login's own temporary file first, then
    installed owned by root."""

    def __init__(self, login: Login) -> None:
        self.login = login
        self._via_sudo: bool | None = None

    @property
    def name(self) -> str:
        return self.login.name

    def via_sudo(self) -> bool:
        """Whether commands go through `sudo -n` (asked of the host once); RemoteError when the
        login is neither root nor allowed passwordless sudo."""
        if self._via_sudo is None:
            if self.login.run("id -u").stdout.strip() == "0":
                self._via_sudo = False
            else:
                refused = self.login.run(commands.SUDO_CHECK, check=False)
                if not refused.ok:
                    user = self.login.environment.ssh.user
                    detail = (refused.stderr or refused.stdout).strip()[-300:]
                    raise RemoteError(
                        self.name,
                        f"setup.user {user!r} is neither root nor allowed passwordless sudo "
                        f"(`sudo -n true`: {detail or f'exit {refused.exit_code}'})",
                    )
                self._via_sudo = True
        return self._via_sudo

    def run(self, command: str, timeout_s: float | None = None, check: bool = True) -> Result:
        if self.via_sudo():
            command = commands.as_root(command)
        return self.login.run(command, timeout_s=timeout_s, check=check)

    def put_text(self, path: PurePosixPath, text: str, mode: int = 0o644) -> None:
        if not self.via_sudo():
            self.login.put_text(path, text, mode=mode)
            return
        staged = PurePosixPath(self.login.run("mktemp").stdout.strip())  # the login's, 0600
        try:
            self.login.upload(staged, text)
            self.run(commands.install_root_file(staged, path, mode))
        finally:
            self.login.run(f"rm -f {commands.q(staged)}", check=False)

    def close(self) -> None:
        self.login.close()
