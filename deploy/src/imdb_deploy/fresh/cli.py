"""`python -m imdb_deploy.fresh [run|down]`: the README's two commands on a fresh Debian 12 machine.

run (the default), stage by stage, each timed:
  1. the machine's image: Debian's minimal base that boots (imdb_deploy.fresh.machine), cached;
  2. the source: a bare clone of this checkout's HEAD (uncommitted changes are not in it);
  3. its network namespace, which reaches only the package registries (imdb_deploy.fresh.network);
  4. boot;
  5. the README's prerequisites, as a newcomer would get them: make and git from Debian, and
     Python 3.10-3.13: this machine's pyenv interpreters, mounted read-only, with the Debian
     libraries they link;
  6. `git clone`;
  7. each command of the README's Quick start, exactly as written, from the clone, with CI=true
     (a missing prerequisite then fails instead of skipping). Within each: the uv bootstrap, the
     Debian packages, and every nox session (nox's own report).
Then the machine is removed (`--keep` keeps it: `podman --root .state/fresh/engine/storage ...`),
the namespace and its rules too, and any binfmt_misc handler it registered in this kernel.

Given to the machine, beyond Debian's base, and said in the summary: the interpreters (building
four Pythons is not what is tested), this workplace's TLS trust (its egress proxy's public CA
certificates and the variables naming the bundle), and the PyPA advisory snapshot beside the
clone, as on our machines (pip-audit's online service is out of reach here).

down: removes what an interrupted run left (machine, namespace, rules).

Output: every line of the machine's console, prefixed with the run's elapsed time; then the
summary, also in reports/fresh/summary.{md,json}, the full log in reports/fresh/fresh.log.
Needs root (namespaces, nftables, a privileged engine).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from imdb_deploy.engine.processes import run_tool
from imdb_deploy.fresh.machine import (
    FreshMachine,
    Volume,
    binfmt_entries,
    remove_binfmt_entries,
)
from imdb_deploy.fresh.network import REGISTRIES, Isolation, resolve, resolvers
from imdb_deploy.sandbox.machines import MachineEngine
from imdb_deploy.session_times import table

REPO_ROOT = Path(__file__).resolve().parents[4]
STATE_DIR = REPO_ROOT / ".state" / "fresh"
REPORTS = REPO_ROOT / "reports" / "fresh"
# Podman refuses long runroots; one fresh machine at a time on this machine.
RUNROOT = Path("/run/mlops-fresh")
NETNS = "mlops-fresh"
# Inside the machine: the clone, and the advisory snapshot where our machines keep it beside.
WORK = "/work"
CLONE = f"{WORK}/mlops-imdb"
ADVISORIES = Path("shared/data/pypa-advisory-db")
PYENV = Path.home() / ".pyenv"
CA_CERTIFICATES = Path("/usr/local/share/ca-certificates")
# Variables through which this workplace's programs find the CA bundle (its egress proxy's CA).
TLS_VARIABLES = (
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_CERT",
    "GIT_SSL_CAINFO", "NODE_EXTRA_CA_CERTS",
)  # fmt: skip
# Where a README command's time goes, by the line its Makefile recipe echoes first.
PHASES = (
    ("uv bootstrap (.tools)", re.compile(r"^python3 -m venv \S*\.tools")),
    ("Debian packages (system-packages.sh)", re.compile(r"^bash deploy/system-packages\.sh")),
    ("nox sessions", re.compile(r"imdb_deploy\.session_times")),
)
COMMAND_TIMEOUT_S = 3 * 3600


class FreshError(RuntimeError):
    """The fresh run could not be set up (not the README's commands failing: those are results)."""


def quick_start_commands(readme: Path) -> list[str]:
    """The commands of the README's Quick start: its first code block."""
    text = readme.read_text(encoding="utf-8")
    section = text.partition("\n## Quick start\n")[2]
    block = re.search(r"^```[a-z]*\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    if not section or block is None:
        raise FreshError(f"{readme} has no `## Quick start` with a code block")
    commands = [line.strip() for line in block.group(1).splitlines() if line.strip()]
    return [command for command in commands if not command.startswith("#")]


def python_libraries(pyenv: Path = PYENV) -> list[str]:
    """The Debian packages whose libraries this machine's Python 3.10-3.13 link (ldd, then
    dpkg; Tk's aside: nothing here opens a window)."""
    versions = sorted(pyenv.glob("versions/3.1[0-3].*"))
    binaries = [path for version in versions for path in version.glob("bin/python3.1[0-3]")]
    binaries += [
        path
        for version in versions
        for path in version.glob("lib/python3.*/lib-dynload/*.so")
        if not path.name.startswith("_tkinter")
    ]
    linked: set[str] = set()
    for binary in binaries:
        done = subprocess.run(  # noqa: S603 - fixed argv, no shell
            ["ldd", str(binary)], capture_output=True, text=True, check=False  # noqa: S607
        )
        for words in (line.split() for line in done.stdout.splitlines()):
            if len(words) >= 3 and words[1] == "=>" and words[2].startswith("/"):
                # Merged /usr: dpkg knows a file by one of its spellings only.
                real = str(Path(words[2]).resolve())
                linked.update({words[2], real, real.removeprefix("/usr")})
    if not linked:
        return []
    owners = subprocess.run(  # noqa: S603 - fixed argv, no shell
        ["dpkg-query", "--search", *sorted(linked)],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return sorted({line.split(":")[0] for line in owners.splitlines() if ": /" in line})


@dataclass
class Timeline:
    """Stages and their seconds, printed as each ends; the console lines, timestamped."""

    log: TextIO
    started: float = field(default_factory=time.monotonic)
    stages: list[dict[str, Any]] = field(default_factory=list)

    def say(self, line: str) -> None:
        elapsed = time.monotonic() - self.started
        stamped = f"[{int(elapsed // 60):3d}:{int(elapsed % 60):02d}] {line}"
        print(stamped, flush=True)
        self.log.write(stamped + "\n")
        self.log.flush()

    @contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        self.say(f"== {name}")
        entry: dict[str, Any] = {"stage": name}
        began = time.monotonic()
        try:
            yield entry
        finally:
            entry["seconds"] = round(time.monotonic() - began, 1)
            self.stages.append(entry)
            self.say(
                f"== {name}: {entry['seconds']:.0f} s"
                + (f", exit {entry['exit']}" if "exit" in entry else "")
            )


@dataclass
class Phases:
    """Where a README command's time went, by the lines its recipe echoes (PHASES)."""

    began: float = field(default_factory=time.monotonic)
    marks: list[tuple[str, float]] = field(default_factory=list)

    def see(self, line: str) -> None:
        for name, pattern in PHASES:
            if pattern.search(line) and name not in (mark for mark, _ in self.marks):
                self.marks.append((name, time.monotonic()))

    def seconds(self, ended: float) -> list[tuple[str, float]]:
        edges = [*(at for _, at in self.marks), ended]
        return [
            (name, round(edges[index + 1] - at, 1)) for index, (name, at) in enumerate(self.marks)
        ]


def bare_clone(state: Path, repo_root: Path = REPO_ROOT) -> tuple[Path, str]:
    """A bare clone of HEAD for the machine to clone from; (its path, HEAD's commit)."""
    share = state / "share"
    shutil.rmtree(share, ignore_errors=True)
    share.mkdir(parents=True)
    repo = share / "repo.git"
    clone = ["git", "clone", "--quiet", "--bare", "--no-local", str(repo_root), str(repo)]
    run_tool(clone, error=FreshError)
    head = run_tool(["git", "-C", str(repo_root), "rev-parse", "HEAD"], error=FreshError)
    return repo, head.strip()


def uncommitted(repo_root: Path = REPO_ROOT) -> int:
    listed = run_tool(["git", "-C", str(repo_root), "status", "--porcelain"], error=FreshError)
    return len(listed.splitlines())


def volumes(state: Path, advisories: Path | None) -> list[Volume]:
    """The machine's mounts; its writable directories start empty (nothing of an earlier run)."""
    for writable in ("containers", "work"):
        shutil.rmtree(state / writable, ignore_errors=True)
    mounted = [
        Volume(state / "containers", "/var/lib/containers"),
        Volume(state / "work", WORK),
        Volume(state / "share", "/share", read_only=True),
        Volume(PYENV, str(PYENV), read_only=True),
    ]
    if CA_CERTIFICATES.is_dir() and any(CA_CERTIFICATES.glob("*.crt")):
        mounted.append(Volume(CA_CERTIFICATES, str(CA_CERTIFICATES), read_only=True))
    if advisories is not None:
        mounted.append(Volume(advisories, f"{WORK}/{ADVISORIES}", read_only=True))
    for volume in mounted:
        if not volume.read_only:
            volume.source.mkdir(parents=True, exist_ok=True)
    return mounted


# What pyenv's installation asks for in ~/.profile (a login shell's PATH is set by /etc/profile).
PYENV_PROFILE = f"""
export PYENV_ROOT="{PYENV}"
[ -d "$PYENV_ROOT/bin" ] && export PATH="$PYENV_ROOT/bin:$PATH"
eval "$(pyenv init - bash)"
"""


def console_env() -> dict[str, str]:
    """What the console adds to a login shell (whose ~/.profile puts pyenv on PATH): the
    workplace's TLS variables, and CI=true, so that a missing prerequisite fails the tests
    instead of skipping them."""
    env = {"CI": "true", "HOME": "/root", "LANG": "C.UTF-8"}
    env.update({name: os.environ[name] for name in TLS_VARIABLES if name in os.environ})
    return env


def prerequisites_command(libraries: list[str]) -> str:
    """make and git, the CA bundle, Python's libraries; pyenv in root's ~/.profile."""
    packages = ["ca-certificates", "make", "git", *libraries]
    apt = "DEBIAN_FRONTEND=noninteractive apt-get"
    return (
        f"{apt} update -qq && {apt} install -y -qq {' '.join(map(shlex.quote, packages))} "
        f"> /dev/null && update-ca-certificates > /dev/null "
        f"&& printf '%s' {shlex.quote(PYENV_PROFILE)} >> /root/.profile"
    )


class Machine(Protocol):
    """What a run needs of the machine (imdb_deploy.fresh.machine.FreshMachine)."""

    @property
    def container(self) -> str: ...

    def image(self) -> str: ...

    def boot(self, image: str, netns: str, volumes: Sequence[Volume]) -> float: ...

    def stream(
        self, command: str, *, env: Mapping[str, str], cwd: str, on_line: Callable[[str], None]
    ) -> int: ...

    def destroy(self) -> None: ...


class Network(Protocol):
    """What a run needs of its network (imdb_deploy.fresh.network.Isolation)."""

    @property
    def netns_path(self) -> str: ...

    def up(self, allowed: Sequence[str], dns: Sequence[str]) -> str: ...

    def down(self, ip_forward: str | None = None) -> list[str]: ...


@dataclass
class FreshRun:
    """One run: the machine, its network, where its state and reports go."""

    machine: Machine
    isolation: Network
    state: Path = STATE_DIR
    reports: Path = REPORTS
    repo: Path = REPO_ROOT
    keep: bool = False

    @property
    def clone(self) -> Path:
        """The clone, seen from this machine (the fresh machine's /work is state/work)."""
        return self.state / "work" / Path(CLONE).name

    def __call__(self) -> int:
        self.reports.mkdir(parents=True, exist_ok=True)
        commands = quick_start_commands(self.repo / "README.md")
        advisories = self.repo.parent / ADVISORIES
        summary: dict[str, Any] = {"commands": commands, "given": [], "results": []}
        status = 1
        with (self.reports / "fresh.log").open("w", encoding="utf-8") as log:
            timeline = Timeline(log)
            binfmt_before = binfmt_entries()
            ip_forward: str | None = None
            try:
                with timeline.stage("image: Debian 12 minimal base that boots (cached once)"):
                    image = self.machine.image()
                with timeline.stage("source: a bare clone of HEAD") as entry:
                    _, entry["commit"] = bare_clone(self.state, self.repo)
                    if changed := uncommitted(self.repo):
                        timeline.say(f"note: {changed} uncommitted change(s) are not in HEAD")
                allowed, dns = resolve(REGISTRIES), resolvers()
                timeline.say(f"network: only {', '.join(allowed)} (80, 443), {', '.join(dns)} (53)")
                ip_forward = self.isolation.up(allowed, dns)
                mounts = volumes(self.state, advisories if advisories.is_dir() else None)
                with timeline.stage("boot (systemd)"):
                    self.machine.boot(image, self.isolation.netns_path, mounts)
                summary["given"] = given(advisories.is_dir())
                for line in summary["given"]:
                    timeline.say(f"given: {line}")
                status = self.prepare(timeline)
                for command in commands if status == 0 else []:
                    status = self.readme_command(timeline, command, summary)
                    if status != 0:
                        break
            finally:
                self.cleanup(ip_forward, binfmt_before, timeline)
            summary["stages"] = timeline.stages
            summary["ok"] = status == 0 and len(summary["results"]) == len(commands)
            write_summary(summary, timeline, self.reports)
        return 0 if summary["ok"] else 1

    def prepare(self, timeline: Timeline) -> int:
        """The README's prerequisites, then the clone."""
        packages = python_libraries()
        with timeline.stage("prerequisites: make, git, CA certificates, Python's libraries") as e:
            e["exit"] = self.machine.stream(
                prerequisites_command(packages), env=console_env(), cwd="/", on_line=timeline.say
            )
        if e["exit"] != 0:
            return int(e["exit"])
        with timeline.stage("git clone") as e:
            e["exit"] = self.machine.stream(
                f"git clone --quiet /share/repo.git {CLONE}", env=console_env(), cwd=WORK,
                on_line=timeline.say,
            )  # fmt: skip
        return int(e["exit"])

    def readme_command(self, timeline: Timeline, command: str, summary: dict[str, Any]) -> int:
        phases = Phases()

        def line(text: str) -> None:
            phases.see(text)
            timeline.say(text)

        with timeline.stage(f"README: {command}") as entry:
            entry["exit"] = self.machine.stream(command, env=console_env(), cwd=CLONE, on_line=line)
            ended = time.monotonic()
        target = command.rsplit(maxsplit=1)[-1] if command.startswith("make ") else ""
        sessions = self.nox_report(target) if target else []
        summary["results"].append(
            {
                "command": command,
                "exit": entry["exit"],
                "seconds": entry["seconds"],
                "phases": [{"phase": name, "seconds": s} for name, s in phases.seconds(ended)],
                "sessions": [session_row(session) for session in sessions],
            }
        )
        if sessions:
            timeline.say(f"{command}: nox sessions\n{table(sessions, entry['seconds'])}")
        return int(entry["exit"])

    def nox_report(self, target: str) -> list[dict[str, Any]]:
        """The sessions of `make TARGET`, from the report the Makefile asks nox for."""
        path = self.clone / "reports" / f"sessions-{target}.json"
        try:
            sessions: list[dict[str, Any]] = json.loads(path.read_text())["sessions"]
        except (OSError, ValueError, KeyError, TypeError):
            return []
        return sessions

    def cleanup(self, ip_forward: str | None, binfmt_before: set[str], timeline: Timeline) -> None:
        """Keep the clone's report files; remove the machine, its network and its directories
        (all but the network with --keep); and any binfmt_misc handler it registered here."""
        kept = self.reports / "clone"
        shutil.rmtree(kept, ignore_errors=True)
        if (self.clone / "reports").is_dir():  # its files (session times, deployment report)
            kept.mkdir(parents=True)
            for path in (self.clone / "reports").iterdir():
                if path.is_file():
                    shutil.copy2(path, kept / path.name)
        if self.keep:
            timeline.say(f"kept: {self.machine.container} (`python -m imdb_deploy.fresh down`)")
        else:
            self.machine.destroy()
            for writable in ("containers", "work"):
                shutil.rmtree(self.state / writable, ignore_errors=True)
            self.isolation.down(ip_forward)
        registered = binfmt_entries() - binfmt_before
        if registered:
            remove_binfmt_entries(registered)
            timeline.say(
                f"removed binfmt_misc handlers the machine registered: {sorted(registered)}"
            )


def given(advisories: bool) -> list[str]:
    lines = [
        "Python 3.10-3.13: this machine's pyenv interpreters, mounted read-only at "
        f"{PYENV} (with the Debian libraries they link)",
        "TLS: this workplace's egress CA certificates (public) and "
        + ", ".join(name for name in TLS_VARIABLES if name in os.environ),
    ]
    if advisories:
        lines.append(f"the PyPA advisory snapshot at {WORK}/{ADVISORIES}, beside the clone")
    else:
        lines.append("no advisory snapshot: pip-audit asks its online service")
    return lines


def session_row(session: dict[str, Any]) -> dict[str, Any]:
    """One nox session of the report: `tests-3.12`, its result and seconds."""
    name = (session.get("signatures") or [session.get("name")])[0]
    seconds = round(float(session.get("duration") or 0), 1)
    return {"session": name, "result": session.get("result"), "seconds": seconds}


def write_summary(summary: dict[str, Any], timeline: Timeline, reports: Path) -> None:
    lines = ["# A fresh Debian 12 machine runs the README's commands", ""]
    lines += [f"- given: {line}" for line in summary["given"]]
    lines += ["", "| stage | seconds | exit |", "| --- | ---: | ---: |"]
    lines += [
        f"| {s['stage']} | {s['seconds']:.0f} | {s.get('exit', '')} |" for s in summary["stages"]
    ]
    for result in summary["results"]:
        lines += ["", f"## `{result['command']}`: exit {result['exit']}, {result['seconds']:.0f} s"]
        lines += ["", "| phase or nox session | seconds | result |", "| --- | ---: | --- |"]
        lines += [f"| {p['phase']} | {p['seconds']:.0f} | |" for p in result["phases"]]
        lines += [
            f"| nox -s {s['session']} | {s['seconds']:.0f} | {s['result']} |"
            for s in result["sessions"]
        ]
    verdict = "green" if summary["ok"] else "FAILED"
    lines += ["", f"Result: {verdict}."]
    (reports / "summary.md").write_text("\n".join(lines) + "\n")
    (reports / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    timeline.say("summary:\n" + "\n".join(lines))
    timeline.say(f"fresh machine: {verdict} (reports/fresh/summary.md, reports/fresh/fresh.log)")


def down() -> int:
    engine = MachineEngine(STATE_DIR / "engine", RUNROOT, "mlops")
    FreshMachine(engine).destroy()
    absent = Isolation(NETNS).down()
    for writable in ("containers", "work"):
        shutil.rmtree(STATE_DIR / writable, ignore_errors=True)
    print(
        "removed the fresh machine and its network"
        + (f" ({', '.join(absent)}: not there)" if absent else "")
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imdb_deploy.fresh", description=__doc__)
    parser.add_argument("action", nargs="?", default="run", choices=["run", "down"])
    parser.add_argument("--keep", action="store_true", help="keep the machine and its network")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("error: the fresh machine needs root (namespaces, nftables)", file=sys.stderr)
        return 2
    if args.action == "down":
        return down()
    machine = FreshMachine(MachineEngine(STATE_DIR / "engine", RUNROOT, "mlops"))
    return FreshRun(machine, Isolation(NETNS), keep=args.keep)()
