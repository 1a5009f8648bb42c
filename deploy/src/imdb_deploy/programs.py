"""The programs the project runs outside its Python environments, and where each one comes from.

`deploy/programs.txt` is the inventory: every such program once, with the Debian package that
provides it, or with how it arrives otherwise (`SOURCES`). `deploy/system-packages.sh` installs
every Debian package the inventory names and nothing else, so a fresh machine gets what the
code runs, not what a developer's machine happens to have.

`find_uses(root)` reads what the code runs, so the inventory cannot silently fall behind (the
unit test tests/deploy/test_programs.py fails on a program the inventory does not name, and on
an entry nothing uses):
- Python, every file git tracks, by its syntax tree: the program of an argv literal handed to a
  process runner (`subprocess.run(["git", ...])`, `run_tool([...])`, ...); the names asked of
  `shutil.which` and of the tests' `require_tool`; the noxfile's `session.run(..., external=True)`;
  and shell text: what `sh -c`, a one-string `.run("...")` (Fabric, the deploy's runner, the
  tests' `sh`) and a builder annotated `-> ShellCommand` (the host commands, built as data)
  run.
- Shell, parsed with tree-sitter's bash grammar: the shell scripts, the Makefile's recipes and
  the workflows' `run:` steps.
Shell text counts every command in it, through `sudo`, `env` and the like, and `command -v X`.
What code assembles from variables is not seen here; the test layers check, as the tests run,
that every program a test starts is in the inventory (tests/layers.py).

`python -m imdb_deploy.programs` prints the inventory with where each program is used, and with
`--check` fails on what the unit test fails on. `--packages` prints the Debian packages.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    import tree_sitter

# Annotations the inventory check reads (both only a str to the type checker): a shell command
# line, as the host command builders return it (`-> ShellCommand`: the programs it runs), and a
# program's name or path kept in data (`SSHD: Program = "/usr/sbin/sshd"`, a parameter's default).
ShellCommand: TypeAlias = str
Program: TypeAlias = str

INVENTORY = Path("deploy") / "programs.txt"
# How a program arrives when no Debian package brings it.
SOURCES = {
    "@python": "the Python interpreters the README asks for (3.10-3.13, pyenv's or the system's)",
    "@bootstrap": "the Makefile installs the pinned uv into .tools/ on first use",
    "@lock": "a console script of the workspace or a tool it locks (uv.lock), in a session's venv",
    "@trivy": "a pinned release from GitHub: deploy/system-packages.sh --trivy",
    "@optional": "used only where present (pyenv: the Makefile enables its interpreters)",
}
# Calls that run an argv: the first word of a list or tuple literal handed to one is a program.
RUNNERS = frozenset(
    {"run", "Popen", "call", "check_call", "check_output", "run_tool", "_run", "start", "as_user"}
)
# Calls whose one string argument is shell text: Fabric's and the runner's `run`, the tests' `sh`.
SHELL_SINKS = frozenset({"run", "sh"})
# Calls that name one program to look for on PATH.
LOOKUPS = frozenset({"which", "require_tool"})
# Shell words that are not programs: builtins and keywords of POSIX sh and bash.
SHELL_BUILTINS = frozenset(
    (  # noqa: SIM905 - a word list reads better as words
        "! . : [ [[ ]] alias bg break builtin caller case cd command compgen complete continue "
        "declare dirs disown do done echo elif else enable esac eval exec exit export false fc fg "
        "fi for function getopts hash if in jobs kill let local logout mapfile popd printf pushd "
        "pwd read readarray readonly return select set shift shopt source test then time times "
        "trap true type typeset ulimit umask unalias unset until wait while"
    ).split()
)
# Programs that run the program named after their options (and the options that take a value).
WRAPPERS: Mapping[str, frozenset[str]] = {
    "sudo": frozenset({"-u", "--user", "-g", "--group", "-C", "-D", "-h", "-p", "-r", "-t"}),
    "env": frozenset({"-u", "--unset", "-C", "--chdir", "-S"}),
    "exec": frozenset({"-a"}),
    "nohup": frozenset(),
    "nice": frozenset({"-n"}),
    "timeout": frozenset({"-s", "-k"}),
    "xargs": frozenset({"-a", "-d", "-E", "-I", "-L", "-n", "-P", "-s", "--max-args"}),
}
# Where a placeholder stands for what an f-string inserts (never a program itself).
HOLE = "__hole__"
PROGRAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
# GitHub expressions in shell text: placeholders too (and make's `$(...)`, see _make_holes).
GITHUB_EXPRESSION = re.compile(r"\$\{\{.*?\}\}")


class InventoryError(ValueError):
    """The inventory file is malformed."""


@dataclass(frozen=True)
class Entry:
    program: str
    source: str  # a Debian package, or one of SOURCES
    line: int
    implicit: bool = False  # run by another program (the kernel, gpg), never named by the code

    @property
    def debian(self) -> bool:
        return not self.source.startswith("@")

    @property
    def library(self) -> bool:
        """A shared library (`libgomp.so.1`) a wheel's compiled module loads, not a program."""
        return ".so" in self.program


@dataclass(frozen=True)
class Use:
    program: str
    where: str  # path:line


def load_inventory(path: Path) -> dict[str, Entry]:
    """program -> Entry. Lines: `program source [implicit]`; `#` starts a comment."""
    entries: dict[str, Entry] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        words = raw.partition("#")[0].split()
        if not words:
            continue
        if len(words) not in (2, 3) or words[2:] not in ([], ["implicit"]):
            raise InventoryError(
                f"{path}:{number}: expected `program source [implicit]`, got {raw!r}"
            )
        program, source = words[:2]
        if source.startswith("@") and source not in SOURCES:
            raise InventoryError(f"{path}:{number}: unknown source {source} (one of {SOURCES})")
        if program in entries:
            raise InventoryError(
                f"{path}:{number}: {program} listed twice (first on line {entries[program].line})"
            )
        entries[program] = Entry(program, source, number, implicit=len(words) == 3)
    return entries


def debian_packages(entries: Mapping[str, Entry]) -> list[str]:
    return sorted({entry.source for entry in entries.values() if entry.debian})


# ---- shell text --------------------------------------------------------------------------------


@cache
def _parser() -> tree_sitter.Parser:
    import tree_sitter  # noqa: PLC0415 - only the inventory check needs the grammar
    import tree_sitter_bash  # noqa: PLC0415

    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_bash.language()))


def _words(node: tree_sitter.Node) -> list[str]:
    """A command's words as written (its name first), without its redirections."""
    skipped = ("file_redirect", "heredoc_redirect", "herestring_redirect", "variable_assignment")
    return [
        child.text.decode(errors="replace")
        for child in node.children
        if child.type not in skipped and child.text is not None
    ]


def through_wrappers(words: list[str]) -> Iterator[str]:
    """The program a command runs and, through sudo/env/exec/..., the program those run;
    `command -v X` (a check for X) counts X."""
    while words:
        name, rest = words[0], words[1:]
        if name == "command":
            yield from (word for word in rest if not word.startswith("-"))
            return
        yield name
        if name not in WRAPPERS:
            return
        takes_value = WRAPPERS[name]
        index = 0
        while index < len(rest):
            word = rest[index]
            if word == "--":
                index += 1
                break
            if word in takes_value:
                index += 2
            elif word.startswith("-") or (name == "env" and "=" in word):
                index += 1
            else:
                break
        words = rest[index:]


def shell_programs(text: str) -> list[tuple[str, int]]:
    """(program, line) of every command in shell text, placeholders and builtins left out."""
    source = text.encode("utf-8", errors="replace")
    tree = _parser().parse(source)
    functions: set[str] = set()
    found: list[tuple[str, int]] = []

    def walk(node: tree_sitter.Node) -> None:
        if node.type == "function_definition":
            name = node.child_by_field_name("name")
            if name is not None and name.text is not None:
                functions.add(name.text.decode())
        if node.type == "command" and node.child_by_field_name("name") is not None:
            for word in through_wrappers(_words(node)):
                found.append((word, node.start_point[0] + 1))
        for child in node.children:
            walk(child)

    walk(tree.root_node)
    return [
        (_program(word), line)
        for word, line in found
        if _program(word) and word not in functions and word not in SHELL_BUILTINS
    ]


def _program(word: str) -> str:
    """The program a command word names (a path's last part), or "" when it names none: a
    placeholder, an expansion, a relative path."""
    word = word.strip("'\"")
    if HOLE in word or word.startswith(("$", ".", "~")) or "=" in word:
        return ""
    if "/" in word:
        if not word.startswith("/"):
            return ""
        word = word.rsplit("/", 1)[1]
    return word if PROGRAM_NAME.fullmatch(word) else ""


# ---- Python ------------------------------------------------------------------------------------


def _text(node: ast.AST) -> str | None:
    """A string literal's text; an f-string's with HOLE where it inserts a value."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            str(part.value) if isinstance(part, ast.Constant) else HOLE for part in node.values
        )
    return None


def _name(call: ast.Call) -> str:
    function = call.func
    if isinstance(function, ast.Attribute):
        return function.attr
    return function.id if isinstance(function, ast.Name) else ""


def _annotated(annotation: ast.expr | None, alias: str) -> bool:
    """Whether an annotation is, or contains (`Sequence[Program]`), the alias."""
    if annotation is None:
        return False
    return any(
        (isinstance(node, ast.Name) and node.id == alias)
        or (isinstance(node, ast.Attribute) and node.attr == alias)
        for node in ast.walk(annotation)
    )


def _named_program(value: ast.expr | None) -> str:
    """The program a `Program` value names: the string, or a sequence literal's first."""
    if isinstance(value, (ast.Tuple, ast.List)) and value.elts:
        value = value.elts[0]
    text = _text(value) if value is not None else None
    return _program(text) if text is not None else ""


def _defaults(arguments: ast.arguments) -> Iterator[tuple[ast.arg, ast.expr | None]]:
    positional = [*arguments.posonlyargs, *arguments.args]
    padded = [None] * (len(positional) - len(arguments.defaults)) + list(arguments.defaults)
    yield from zip(positional, padded, strict=True)
    yield from zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True)


def _shell_texts(node: ast.AST) -> Iterator[tuple[str, int]]:
    """The string literals a value is made of: itself, the parts of a `+`, the branches of a
    conditional (not strings inside calls or lists: those are arguments, not command text)."""
    text = _text(node)
    if text is not None:
        yield text, getattr(node, "lineno", 0)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        yield from _shell_texts(node.left)
        yield from _shell_texts(node.right)
    elif isinstance(node, ast.IfExp):
        yield from _shell_texts(node.body)
        yield from _shell_texts(node.orelse)


def python_programs(source: str) -> list[tuple[str, int]]:
    """(program, line) of what the Python source runs, by the rules in the module docstring."""
    finder = _PythonFinder()
    finder.visit(ast.parse(source))
    return finder.found


class _PythonFinder(ast.NodeVisitor):
    """Walks one module; keeps, per function, the argv lists it assigns to names, so that
    `clone = ["git", "clone", ...]` then `subprocess.run([*clone, path])` counts git."""

    def __init__(self) -> None:
        self.found: list[tuple[str, int]] = []
        self.argvs: list[dict[str, list[ast.expr]]] = [{}]

    def shell(self, text: str, line: int) -> None:
        self.found += [(program, line + offset - 1) for program, offset in shell_programs(text)]

    def named(self, value: ast.expr | None, line: int) -> None:
        if _named_program(value):
            self.found.append((_named_program(value), line))

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for argument, default in _defaults(node.args):
            if _annotated(argument.annotation, "Program"):
                self.named(default, argument.lineno)
        if _annotated(node.returns, "ShellCommand"):
            # What it returns, and the pieces it assembles that from: its local strings of more
            # than one word (a one-word local is a path or an option's value).
            for part in ast.walk(node):
                if isinstance(part, ast.Return) and part.value is not None:
                    for text, line in _shell_texts(part.value):
                        self.shell(text, line)
                elif isinstance(part, ast.Assign):
                    for text, line in _shell_texts(part.value):
                        if len(text.split()) > 1:
                            self.shell(text, line)
        self.argvs.append({})
        self.generic_visit(node)
        self.argvs.pop()

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self.visit_FunctionDef(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        if (
            len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, (ast.List, ast.Tuple))
        ):
            self.argvs[-1][node.targets[0].id] = list(node.value.elts)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if _annotated(node.annotation, "ShellCommand") and node.value is not None:
            for text, line in _shell_texts(node.value):
                self.shell(text, line)
        elif _annotated(node.annotation, "Program"):
            self.named(node.value, node.lineno)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if node.args:
            self.call(node)
        self.generic_visit(node)

    def argv(self, node: ast.expr) -> list[str | None]:
        """An argv's words as far as they are literal (None for the rest), through names this
        function assigned a list to and `*name` inside a list."""
        if isinstance(node, ast.Name):
            elements = self.argvs[-1].get(node.id)
            return self.argv(ast.List(elts=elements)) if elements is not None else []
        if not isinstance(node, (ast.List, ast.Tuple)):
            return []
        words: list[str | None] = []
        for element in node.elts:
            if isinstance(element, ast.Starred):
                words += self.argv(element.value) or [None]
            else:
                words.append(_text(element))
        return words

    def call(self, call: ast.Call) -> None:
        name, first = _name(call), call.args[0]
        text = _text(first)
        named = name in LOOKUPS or (name in {"run", "run_install"} and _external(call))
        if named and text is not None:
            self.found += [(_program(text), call.lineno)] if _program(text) else []
        elif name in SHELL_SINKS and text is not None and len(call.args) == 1:
            self.shell(text, call.lineno)
        elif name in RUNNERS:
            argv = self.argv(first)
            if not argv or argv[0] is None or not _program(argv[0]):
                return
            if argv[0] in {"sh", "bash"} and len(argv) >= 3 and argv[1] == "-c" and argv[2]:
                self.shell(argv[2], call.lineno)
            words = [word for word in argv if word is not None]
            self.found += [
                (_program(program), call.lineno)
                for program in through_wrappers(words)
                if _program(program)
            ]


def _external(call: ast.Call) -> bool:
    """A nox `session.run(..., external=True)`: a program outside the session's virtualenv."""
    return any(
        keyword.arg == "external"
        and not (isinstance(keyword.value, ast.Constant) and keyword.value.value is False)
        for keyword in call.keywords
    )


# ---- files -------------------------------------------------------------------------------------


def tracked_files(root: Path) -> list[str]:
    """Every file git would commit (tracked, and new unignored ones)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],  # noqa: S607
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted(name for name in set(listed.split("\0")) if name and (root / name).is_file())


def _make_holes(line: str) -> str:
    """A recipe line with each of make's `$(...)` expansions (nested ones too) as a placeholder,
    and `$$` as the shell's `$`."""
    out, depth, index = [], 0, 0
    while index < len(line):
        if line.startswith("$$", index):
            out.append("$" if depth == 0 else "")
            index += 2
            continue
        if line.startswith("$(", index):
            if depth == 0:
                out.append(HOLE)
            depth += 1
            index += 2
            continue
        if depth and line[index] == "(":
            depth += 1
        elif depth and line[index] == ")":
            depth -= 1
        elif depth == 0:
            out.append(line[index])
        index += 1
    return "".join(out)


def makefile_shell(text: str) -> list[tuple[str, int]]:
    """(shell text, line) of a Makefile's recipes and `$(shell ...)` calls, make's variables
    turned into placeholders."""
    pieces: list[tuple[str, int]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("\t"):
            pieces.append((line.lstrip("\t@-"), number))
        for call in re.finditer(r"\$\(shell (.*)\)\s*$", line):
            pieces.append((call.group(1), number))
    return [(_make_holes(piece), number) for piece, number in pieces]


def workflow_shell(text: str) -> list[tuple[str, int]]:
    """(shell text, line) of each `run:` step of a GitHub workflow, expressions as placeholders."""
    import yaml  # noqa: PLC0415 - the host command builders import this module for ShellCommand

    lines = text.splitlines()
    steps: list[tuple[str, int]] = []
    for job in (yaml.safe_load(text) or {}).get("jobs", {}).values():
        for step in job.get("steps", []):
            run = step.get("run")
            if isinstance(run, str):
                first = run.splitlines()[0] if run else ""
                number = next((i for i, line in enumerate(lines, 1) if first in line), 0)
                steps.append((GITHUB_EXPRESSION.sub(HOLE, run), number))
    return steps


def find_uses(root: Path) -> list[Use]:
    """Every program the code, scripts, Makefile and workflows under `root` run."""
    uses: list[Use] = []
    for name in tracked_files(root):
        path = root / name
        found: list[tuple[str, int]] = []
        if name.endswith(".py"):
            found = python_programs(path.read_text(encoding="utf-8"))
        elif name.endswith(".sh") or name == ".ci/run":
            found = shell_programs(path.read_text(encoding="utf-8"))
        elif name == "Makefile":
            for text, line in makefile_shell(path.read_text(encoding="utf-8")):
                found += [(program, line) for program, _ in shell_programs(text)]
        elif name.startswith(".github/workflows/") and name.endswith((".yml", ".yaml")):
            for text, line in workflow_shell(path.read_text(encoding="utf-8")):
                found += [(program, line + offset - 1) for program, offset in shell_programs(text)]
        uses += [Use(program, f"{name}:{line}") for program, line in found]
    return uses


# ---- shared libraries ----------------------------------------------------------------------------

# A library a wheel bundles carries a hash in its name (auditwheel: libquadmath-96973f99.so.0).
BUNDLED = re.compile(r"-[0-9a-f]{8}\.so")


def linked_libraries(site_packages: Path, batch: int = 100) -> dict[str, list[str]]:
    """soname -> the compiled modules under `site_packages` that load it from the system (`ldd`;
    a library the wheel bundles, found there or not, is the wheel's own)."""
    modules = sorted(path for path in site_packages.rglob("*.so*") if path.is_file())
    linked: dict[str, list[str]] = {}
    for start in range(0, len(modules), batch):
        chunk = [str(path) for path in modules[start : start + batch]]
        listed = subprocess.run(  # noqa: S603 - fixed argv, no shell
            ["ldd", *chunk], capture_output=True, text=True, check=False  # noqa: S607
        ).stdout
        for name, module in system_libraries(listed, site_packages, chunk[0]):
            linked.setdefault(name, []).append(module)
    return linked


def system_libraries(ldd: str, site_packages: Path, first: str) -> Iterator[tuple[str, str]]:
    """(soname, module relative to site_packages) from ldd's output for several files: each
    `NAME => PATH` or `NAME => not found` that the wheel does not bundle."""
    module = first
    for line in ldd.splitlines():
        if not line.startswith(("\t", " ")):
            module = line.rstrip(":")
            continue
        name, arrow, target = line.strip().partition(" => ")
        if not arrow or BUNDLED.search(name):
            continue
        path = target.split(" (")[0]
        if path != "not found" and Path(path).resolve().is_relative_to(site_packages.resolve()):
            continue
        yield name, str(Path(module).relative_to(site_packages))


# ---- the check ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Findings:
    unlisted: dict[str, list[str]]  # program -> where the code uses it
    unused: list[Entry]

    def __bool__(self) -> bool:
        return bool(self.unlisted or self.unused)

    def lines(self, inventory: Path) -> list[str]:
        out = [
            f"{program} is run ({', '.join(sorted(where)[:3])}) but not listed in {inventory}: "
            "add it with the Debian package that provides it (`dpkg -S $(command -v "
            f"{program})`)"
            for program, where in sorted(self.unlisted.items())
        ]
        out += [
            f"{inventory}:{entry.line}: {entry.program} is listed but nothing runs it: remove it"
            for entry in self.unused
        ]
        return out


def check(entries: Mapping[str, Entry], uses: Iterable[Use]) -> Findings:
    where: dict[str, list[str]] = {}
    for use in uses:
        where.setdefault(use.program, []).append(use.where)
    unlisted = {program: sites for program, sites in where.items() if program not in entries}
    unused = [
        entry
        for entry in entries.values()
        if entry.program not in where and not entry.implicit and not entry.library
    ]
    return Findings(unlisted, sorted(unused, key=lambda entry: entry.line))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imdb_deploy.programs", description=__doc__)
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository")
    parser.add_argument("--check", action="store_true", help="fail on unlisted or unused ones")
    parser.add_argument("--packages", action="store_true", help="print the Debian packages")
    args = parser.parse_args(argv)
    inventory = args.root / INVENTORY
    entries = load_inventory(inventory)
    if args.packages:
        print("\n".join(debian_packages(entries)))
        return 0
    uses = find_uses(args.root)
    where: dict[str, list[str]] = {}
    for use in uses:
        where.setdefault(use.program, []).append(use.where)
    for program, entry in sorted(entries.items()):
        sites = sorted(where.get(program, []))
        shown = ", ".join(sites[:2]) + (f" (+{len(sites) - 2})" if len(sites) > 2 else "")
        print(f"{program:24} {entry.source:24} {shown or '-'}")
    packages = debian_packages(entries)
    print(f"\n{len(entries)} programs, {len(packages)} Debian packages")
    findings = check(entries, uses)
    if args.check and findings:
        print("\n".join(findings.lines(INVENTORY)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
