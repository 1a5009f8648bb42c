"""The inventory of programs (deploy/programs.txt): the code runs nothing it does not list, it
lists nothing the code does not run, system-packages.sh installs exactly its packages, and each
listed program found here belongs to the package it names. Then the finder's rules, one by one."""

from __future__ import annotations

import re
import subprocess
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest

from imdb_deploy import programs
from imdb_deploy.programs import Entry, InventoryError, Use
from tests.conftest import running_in_ci
from tests.programs_guard import unlisted


@pytest.fixture(scope="module")
def inventory(repo_root: Path) -> dict[str, Entry]:
    return programs.load_inventory(repo_root / programs.INVENTORY)


def test_the_code_runs_only_listed_programs_and_every_entry_is_used(
    repo_root: Path, inventory: dict[str, Entry]
) -> None:
    findings = programs.check(inventory, programs.find_uses(repo_root))
    assert not findings, "\n".join(findings.lines(programs.INVENTORY))


def test_system_packages_installs_exactly_the_inventorys_packages(
    repo_root: Path, inventory: dict[str, Entry], require_tool: Callable[[str], str]
) -> None:
    listed = subprocess.run(
        [require_tool("bash"), "deploy/system-packages.sh", "--list"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert listed == programs.debian_packages(inventory)
    assert "sudo" in listed  # the package a fresh machine lacked (issue 24)


def test_a_runners_own_docker_is_kept_only_what_the_machine_lacks_is_installed(
    repo_root: Path,
    inventory: dict[str, Entry],
    require_tool: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """GitHub's runners bring their own Docker (docker-ce, containerd.io's runc), which
    Debian's docker.io and runc would replace: a package is chosen only for a program of its
    the machine lacks. Here every program but podman is on PATH (stand-ins)."""
    script = [require_tool("bash"), "deploy/system-packages.sh", "--missing"]
    tools = {name: require_tool(name) for name in ("awk", "sort", "dirname")}  # the script's own
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for entry in inventory.values():
        if entry.debian and not entry.library and entry.program != "podman":
            (bin_dir / entry.program).write_text("#!/bin/sh\nexit 0\n")
            (bin_dir / entry.program).chmod(0o755)
    for name, path in tools.items():
        (bin_dir / name).unlink(missing_ok=True)
        (bin_dir / name).symlink_to(path)
    chosen = subprocess.run(
        script, cwd=repo_root, env={"PATH": str(bin_dir)}, capture_output=True, text=True,
        check=True,
    ).stdout.split()  # fmt: skip
    libraries = {entry.source for entry in inventory.values() if entry.library}
    assert "podman" in chosen
    assert not {"docker.io", "runc", "containerd"} & set(chosen)
    assert set(chosen) <= {"podman"} | libraries  # and a library this machine may lack


def owners(paths: list[str], dpkg_query: str) -> dict[str, set[str]]:
    """path -> the packages dpkg says own it (nothing for a path no package owns)."""
    done = subprocess.run(
        [dpkg_query, "--search", *paths], capture_output=True, text=True, check=False
    )
    owned: dict[str, set[str]] = {}
    for line in done.stdout.splitlines():
        if line.startswith("diversion by"):
            continue
        names, _, path = line.partition(": ")
        owned.setdefault(path, set()).update(name.split(":")[0] for name in names.split(", "))
    return owned


def candidates(program: str) -> list[str]:
    """Where Debian puts a program or a library (merged /usr: dpkg may know either spelling)."""
    if ".so" in program:
        found = [path for pattern in ("lib/*", "usr/lib/*") for path in Path("/").glob(pattern)]
        found = [path / program for path in found if (path / program).exists()]
    else:
        spots = [f"{prefix}/{program}" for prefix in ("/usr/bin", "/usr/sbin", "/bin", "/sbin")]
        found = [Path(spot) for spot in spots if Path(spot).exists()]
    usr = [Path(str(path).removeprefix("/usr")) for path in found if str(path).startswith("/usr")]
    spellings = {*found, *(path.resolve() for path in found), *usr}
    return sorted(str(path) for path in spellings)


def test_each_listed_program_here_comes_from_the_package_it_names(
    inventory: dict[str, Entry], require_tool: Callable[[str], str]
) -> None:
    """Under CI=true (after system-packages.sh) every Debian program must be installed, from
    its package; elsewhere the ones present are checked."""
    dpkg_query = require_tool("dpkg-query")
    debian = {program: entry for program, entry in inventory.items() if entry.debian}
    paths = {program: candidates(program) for program in debian}
    owned = owners(sorted({path for found in paths.values() for path in found}), dpkg_query)
    wrong, missing = [], []
    for program, entry in sorted(debian.items()):
        packages = set().union(*(owned.get(path, set()) for path in paths[program]))
        if not packages:
            missing.append(f"{program} ({entry.source})")
        elif entry.source not in packages:
            wrong.append(f"{program}: listed as {entry.source}, dpkg says {sorted(packages)}")
    assert not wrong, "\n".join(wrong)
    if missing and running_in_ci():
        pytest.fail(
            "not installed with CI=true (run deploy/system-packages.sh): " + ", ".join(missing)
        )


@pytest.mark.integration
def test_every_library_the_wheels_load_from_the_system_is_listed(
    inventory: dict[str, Entry], require_tool: Callable[[str], str]
) -> None:
    """What this session's virtualenv loads that no wheel bundles (LightGBM's libgomp, which a
    fresh Debian machine lacked): a library the list does not name would be missing there.
    In the integration layer: its virtualenv holds every group's wheels, and reading them all
    with ldd takes seconds."""
    require_tool("ldd")
    site_packages = Path(sysconfig.get_paths()["platlib"])
    linked = programs.linked_libraries(site_packages)
    assert "libgomp.so.1" in linked  # lightgbm's, in every session that tests the model
    unlisted = {name: modules[:2] for name, modules in linked.items() if name not in inventory}
    assert not unlisted, f"loaded from the system but not in {programs.INVENTORY}: {unlisted}"


def test_ldd_output_names_the_system_libraries_not_the_bundled_ones(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    ldd = (
        f"{site}/lightgbm/lib/lib_lightgbm.so:\n"
        "\tlinux-vdso.so.1 (0x00007ffd)\n"
        "\tlibgomp.so.1 => /lib/x86_64-linux-gnu/libgomp.so.1 (0x00007f)\n"
        "\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n"
        f"{site}/numpy/linalg/_umath.so:\n"
        f"\tlibopenblas-ff651d7f.so => {site}/numpy.libs/libopenblas-ff651d7f.so\n"
        "\tlibquadmath-96973f99.so.0.0.0 => not found\n"
        "\tlibfoo.so.2 => not found\n"
    )
    found = list(programs.system_libraries(ldd, site, "first"))
    assert found == [
        ("libgomp.so.1", "lightgbm/lib/lib_lightgbm.so"),
        ("libfoo.so.2", "numpy/linalg/_umath.so"),
    ]


# ---- the inventory file --------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "programs.txt"
    path.write_text(text)
    return path


def test_the_inventory_reads_sources_comments_and_implicit_entries(tmp_path: Path) -> None:
    entries = programs.load_inventory(
        write(tmp_path, "# header\n\ngit   git   # the README's\nuv @bootstrap\nq qemu implicit\n")
    )
    assert entries["git"] == Entry("git", "git", 3)
    assert not entries["uv"].debian
    assert entries["q"].implicit
    assert programs.debian_packages(entries) == ["git", "qemu"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("git\n", "expected `program source [implicit]`"),
        ("git git extra\n", "expected `program source [implicit]`"),
        ("uv @nowhere\n", "unknown source @nowhere"),
        ("git git\ngit git-core\n", "git listed twice (first on line 1)"),
    ],
)
def test_a_malformed_inventory_is_refused_with_its_line(
    tmp_path: Path, text: str, reason: str
) -> None:
    with pytest.raises(InventoryError, match=re.escape(reason)):
        programs.load_inventory(write(tmp_path, text))


def test_check_names_unlisted_programs_and_unused_entries() -> None:
    entries = {
        "git": Entry("git", "git", 1),
        "gone": Entry("gone", "gone", 2),
        "qemu": Entry("qemu", "qemu-user-static", 3, implicit=True),
        "libgomp.so.1": Entry("libgomp.so.1", "libgomp1", 4),
    }
    findings = programs.check(entries, [Use("git", "a.py:1"), Use("cowsay", "b.py:7")])
    assert findings.unlisted == {"cowsay": ["b.py:7"]}
    assert findings.unused == [entries["gone"]]  # implicit ones and libraries aside
    lines = findings.lines(Path("deploy/programs.txt"))
    assert lines[0].startswith("cowsay is run (b.py:7) but not listed in deploy/programs.txt")
    assert lines[1] == "deploy/programs.txt:2: gone is listed but nothing runs it: remove it"
    assert not programs.check(entries, [Use("git", "a.py:1"), Use("gone", "c.sh:2")])


# ---- shell text ----------------------------------------------------------------------------


def names(found: list[tuple[str, int]]) -> list[str]:
    return [program for program, _ in found]


def test_shell_commands_through_wrappers_pipes_and_substitutions() -> None:
    script = (
        "set -e\n"
        "if refusal=$(sudo -n -u deploy /usr/sbin/nginx -t 2>&1); then echo ok; fi\n"
        "env -i A=1 B=2 podman ps | grep -q x && command -v curl >/dev/null\n"
        "DEBIAN_FRONTEND=noninteractive apt-get install -y sudo\n"
        "comm -13 a b | xargs -r -n 1 dpkg-query -L\n"
    )
    assert names(programs.shell_programs(script)) == [
        "sudo", "nginx", "env", "podman", "grep", "curl", "apt-get", "comm", "xargs", "dpkg-query",
    ]  # fmt: skip


def test_shell_functions_builtins_expansions_and_placeholders_are_no_programs() -> None:
    script = (
        'helper() { "$tool" --version; ./local.sh; }\nhelper\n'
        f"{programs.HOLE} pull image; cd /tmp; [ -d x ] || exit 1\n"
        "$(dirname x)/run\n"
    )
    assert names(programs.shell_programs(script)) == ["dirname"]


def test_shell_lines_are_reported() -> None:
    assert programs.shell_programs("true\n\ngit status\n") == [("git", 3)]


def test_makefile_recipes_with_make_expansions_as_placeholders() -> None:
    makefile = (
        "X := $(shell command -v pyenv >/dev/null && pyenv versions | paste -sd:)\n"
        "t: $(UV) ## help\n"
        "\t$(NOX) -s deploy -- $(or $(ENV),staging)\n"
        "\t@python3 -m venv $(TOOLS) && $(TOOLS)/bin/python -c 'x'\n"
        "\tgrep -hE '^[a-z]+$$' $(MAKEFILE_LIST)\n"
    )
    found = [
        (program, line)
        for text, line in programs.makefile_shell(makefile)
        for program, _ in programs.shell_programs(text)
    ]
    assert found == [("pyenv", 1), ("pyenv", 1), ("paste", 1), ("python3", 4), ("grep", 5)]


def test_workflow_run_steps_with_expressions_as_placeholders() -> None:
    workflow = (
        "jobs:\n  a:\n    steps:\n      - uses: actions/checkout@x\n"
        "      - run: |\n          ${{ env.NOX }} -s lint\n          jq -c . x.json\n"
    )
    steps = programs.workflow_shell(workflow)
    assert [line for _, line in steps] == [6]  # where the script starts
    assert names(programs.shell_programs(steps[0][0])) == ["jq"]


# ---- Python --------------------------------------------------------------------------------


def test_python_argv_lookups_and_nox_externals() -> None:
    source = """
import shutil, subprocess
subprocess.run(["git", "status"], check=True)
subprocess.Popen(("/usr/sbin/sshd", "-D"))
shutil.which("trivy")
require_tool("promtool")
session.run("uv", "sync", external=True)
session.run("pytest", "-x")
subprocess.run(["sh", "-c", "flock -w 1 x true"])
subprocess.run(["sudo", "--user", "u", "--", "env", "-i", "A=1", "bash", "x"])
"""
    assert names(programs.python_programs(source)) == [
        "git", "sshd", "trivy", "promtool", "uv", "flock", "sh", "sudo", "env", "bash",
    ]  # fmt: skip


def test_python_argv_assembled_from_named_lists() -> None:
    source = """
def clone(source, target):
    clone = ["git", "clone", "--quiet"]
    subprocess.run([*clone, source, target], check=True)
    chown = ["chown", "-R", "u", target]
    return subprocess.run(chown, check=False)
"""
    assert names(programs.python_programs(source)) == ["git", "chown"]


def test_python_shell_text_of_runners_and_annotated_builders() -> None:
    source = """
CHECK: ShellCommand = "sudo -n true"
SSHD: Program = "/usr/sbin/sshd"

def start(command: Sequence[Program] = ("prometheus",), engine: Program = "podman"): ...

def pull(image: str) -> ShellCommand:
    apt = "DEBIAN_FRONTEND=noninteractive apt-get -o X"
    path = "/etc/nginx/default"
    return f"{apt} update && {engine} pull {image} || cat {path}"

def conf() -> str:
    return "user nobody; events {}"

connection.run("id -u")
connection.run(f"rm -f {path}", check=False)
logger.info("deploy to staging took 3 s")
"""
    assert sorted(names(programs.python_programs(source))) == sorted(
        ["sudo", "sshd", "prometheus", "podman", "apt-get", "cat", "id", "rm"]
    )


# ---- the guard that checks what tests start -------------------------------------------------


@pytest.mark.parametrize(
    ("args", "missing"),
    [
        (["git", "status"], []),
        (["cowsay", "moo"], ["cowsay"]),
        (["sh", "-c", "sudo -n nginx -t && cowsay moo"], ["cowsay"]),
        (["sudo", "-n", "cowsay"], ["cowsay"]),
        (["python3.12", "-c", "pass"], []),
    ],
)
def test_the_guard_names_what_a_test_starts_outside_the_inventory(
    inventory: dict[str, Entry], args: list[str], missing: list[str]
) -> None:
    assert unlisted(args, None, None, inventory) == missing


def test_the_guard_passes_programs_of_python_environments_and_stand_ins(
    inventory: dict[str, Entry], tmp_path: Path
) -> None:
    stand_in = tmp_path / "bin" / "cowsay"
    stand_in.parent.mkdir()
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    assert unlisted(["cowsay"], None, {"PATH": str(stand_in.parent)}, inventory) == []
    assert unlisted([str(stand_in)], None, None, inventory) == []
