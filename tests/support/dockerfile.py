"""Just enough of a Dockerfile reader for tests/acceptance/test_deploy.py: stages, ARGs, COPY, apt-get.

It reads what Docker reads (continuation lines, comment lines inside them, ARG defaults scoped to
their stage, `$NAME`/`${NAME}` expansion, build arguments overriding defaults) and builds a
context the way `docker build` sends one (`.dockerignore`), so the tests can check the image
without a Docker engine.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
# Shell words that end an `apt-get install` command's package list.
SHELL_BREAKS = frozenset({"&&", "||", ";", "|", "&", ";;", "(", ")", "fi", "done", "then", "else"})


@dataclass(frozen=True, slots=True)
class Instruction:
    """One instruction: its keyword in upper case and the rest of its (joined) line."""

    keyword: str
    args: str


@dataclass(slots=True)
class Stage:
    """A `FROM` and the instructions up to the next one."""

    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def args(self, global_defaults: dict[str, str], build_args: dict[str, str]) -> dict[str, str]:
        """The values of the ARGs this stage declares: a build argument, else the default."""
        values: dict[str, str] = {}
        for instruction in self.of("ARG"):
            for word in shlex.split(instruction.args):
                name, has_default, default = word.partition("=")
                if name in build_args:
                    values[name] = build_args[name]
                elif has_default:
                    values[name] = expand(default, values)
                elif name in global_defaults:
                    values[name] = global_defaults[name]
        return values

    def of(self, keyword: str) -> list[Instruction]:
        """This stage's instructions with that keyword, in order."""
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass(frozen=True, slots=True)
class Dockerfile:
    """The global ARGs (before the first FROM) and the stages."""

    global_args: list[Instruction]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        """The stage named `name` (`FROM ... AS name`)."""
        [stage] = [s for s in self.stages if s.name == name]
        return stage

    @property
    def runtime(self) -> Stage:
        """The last stage: the image `docker build` produces."""
        return self.stages[-1]

    def global_defaults(self, build_args: dict[str, str]) -> dict[str, str]:
        """The global ARG values (a stage sees them only when it declares the ARG again)."""
        return Stage("", None, self.global_args).args({}, build_args)


def parse(text: str) -> Dockerfile:
    """The Dockerfile's instructions, grouped into stages."""
    global_args: list[Instruction] = []
    stages: list[Stage] = []
    for instruction in instructions(text):
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append(instruction)
        else:
            assert instruction.keyword == "ARG", f"{instruction.keyword} before the first FROM"
            global_args.append(instruction)
    return Dockerfile(global_args, stages)


def instructions(text: str) -> list[Instruction]:
    """Logical instructions: continuation lines joined; comment and blank lines dropped, also inside them."""
    result: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        result.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    assert not pending, f"the Dockerfile ends inside a continued line: {pending!r}"
    return result


def expand(text: str, values: dict[str, str]) -> str:
    """`$NAME` and `${NAME}` replaced by their values (unknown names by nothing, as the shell does)."""
    return VARIABLE.sub(lambda m: values.get(m.group(1) or m.group(2), ""), text)


def apt_installs(command: str) -> list[list[str]]:
    """The package lists of each `apt-get install` in a shell command (its options left out)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = list(lexer)
    found: list[list[str]] = []
    for i, word in enumerate(words[:-1]):
        if word.rsplit("/", 1)[-1] == "apt-get" and "install" in words[i + 1 : i + 2]:
            packages: list[str] = []
            for arg in words[i + 2 :]:
                if arg in SHELL_BREAKS:
                    break
                if not arg.startswith("-"):
                    packages.append(arg)
            found.append(packages)
    return found


# -- the build context ---------------------------------------------------------------------------------


def ignore_patterns(context: Path) -> list[str]:
    """The `.dockerignore` patterns of a context, in order (`!` marks an exception)."""
    path = context / ".dockerignore"
    if not path.exists():
        return []
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _pattern(pattern: str) -> re.Pattern[str]:
    """Docker's match: rooted at the context, `*` within one path part, `**` across any number."""
    parts = pattern.strip("/").split("/")
    regex = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            regex += ".*" if last else "(?:[^/]+/)*"
        else:
            regex += "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in part)
            regex += "" if last else "/"
    return re.compile(regex)


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether `docker build` leaves a context path out (the last pattern matching it or a parent decides)."""
    parents = relative.split("/")
    candidates = ["/".join(parents[: i + 1]) for i in range(len(parents))]
    verdict = False
    for pattern in patterns:
        exception = pattern.startswith("!")
        regex = _pattern(pattern.removeprefix("!"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            verdict = not exception
    return verdict


def replay_copies(stage: Stage, context: Path, workdir: Path) -> list[str]:
    """Copy into `workdir` what the stage's `COPY` lines (from the context) copy; the paths copied."""
    patterns = ignore_patterns(context)
    copied: list[str] = []
    for instruction in stage.of("COPY"):
        if instruction.args.startswith("--from"):
            continue
        words = json.loads(instruction.args) if instruction.args.startswith("[") else instruction.args.split()
        assert not any(w.startswith("--") for w in words), f"COPY option not replayed: {instruction.args}"
        *sources, dest = words
        target = workdir / dest
        for source in sources:
            path = context / source
            assert path.exists(), f"COPY {source}: not in the build context"
            if path.is_dir():  # its contents go into the destination
                files = {f: target / f.relative_to(path) for f in sorted(path.rglob("*")) if f.is_file()}
            elif dest.endswith("/") or len(sources) > 1:
                files = {path: target / path.name}
            else:
                files = {path: target}
            for file, out in files.items():
                relative = file.relative_to(context).as_posix()
                if ignored(relative, patterns):
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, out)
                copied.append(relative)
    return copied
