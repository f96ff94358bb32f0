"""Running a Markdown guide's code blocks as written, for the tests of README.md and the docs.

Conventions (the guides'; tests/test_readme.py states them for README.md):
- ```python, ```sh and ```bash blocks are run, in order, as a user following the guide would: a
  later block may use what an earlier one made. ```console and ```text blocks are output
  samples and listings, never run.
- A block right after a line `<!-- not run: REASON -->` is not run.
- A test's `replace` dict is every change made to a block before it runs; each must occur.
- `zfnet ARGS` commands with nothing else of the shell in them run in the test's process through
  click's test runner (one interpreter start-up instead of one per command); `torchrun ... -m
  zfnet.cli ...` runs under torchrun, as tests/processes.py starts it (standalone, with a free
  port); a line `cd DIR` moves the directory the next lines run in, as it moves the user's
  shell; any other line runs in bash.
A failing command fails the test with its file and line number.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.processes import ROOT, torchrun
from zfnet.cli import main as zfnet_cli

RUN = ("python", "sh", "bash")
SHOWN = ("console", "text")
NOT_RUN = re.compile(r"<!--\s*not run:\s*(\S.*?)\s*-->")


@dataclass
class Block:
    lang: str
    line: int  # the file's line of the block's first line of code (1-based)
    text: str
    not_run: str | None  # the reason, when the block is marked not run


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with their first code line."""
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start = i
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            i += 1
        assert i < len(lines), f"{path.name}:{start + 1}: the code block is never closed"
        before = lines[start - 1] if start else ""
        note = NOT_RUN.search(before)
        out.append(Block(m.group(1), start + 2, "\n".join(lines[start + 1:i]) + "\n",
                         note.group(1) if note else None))
        i += 1
    return out


def commands(block: Block) -> list[tuple[int, str]]:
    """(file line, command) for each shell command of a block, continuation lines joined."""
    out, current, first = [], "", 0
    for n, line in enumerate(block.text.splitlines(), start=block.line):
        if not current:
            first = n
        stripped = line.rstrip()
        current += stripped[:-1] + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            if current.strip() and not current.strip().startswith("#"):
                out.append((first, current.strip()))
            current = ""
    return out


def replaced(text: str, replace: dict[str, str]) -> str:
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


def check_replacements(path: Path, replace: dict[str, str]) -> None:
    """Every entry of `replace` occurs in the file, and keeps its line numbers."""
    text = path.read_text()
    for old, new in replace.items():
        assert old in text, f"REPLACE entry {old!r} no longer occurs in {path.name}: delete it"
        assert "\n" not in old + new  # line numbers must stay the file's


def _in_process(args: list[str]) -> bool:
    return args[:1] == ["zfnet"] and not any(
        a in ("&&", "||", "|", ";", "&") or a[:1] in "<>$" for a in args)


@dataclass
class Session:
    """A user's shell following the guide `doc`: its directory (`cd` lines move it) and the
    folder put first on its PATH (`bin`)."""

    doc: Path
    cwd: Path
    bin: Path | None = None
    outputs: list[tuple[str, str]] = field(default_factory=list)  # (command, its output)

    def run_blocks(self, replace: dict[str, str]) -> int:
        """Every block of the guide that is run, in order, `replace`d; how many ran."""
        ran = 0
        for block in blocks(self.doc):
            if block.lang not in RUN or block.not_run:
                continue
            text = replaced(block.text, replace)
            if block.lang == "python":
                self.run_python(block, text)
            else:
                for line, command in commands(Block(block.lang, block.line, text, None)):
                    self.run_shell(line, command)
            ran += 1
        return ran

    def output(self, start: str) -> str:
        """The output of the command that begins with `start` (the last one, if several)."""
        found = [out for command, out in self.outputs if command.startswith(start)]
        assert found, f"no command run begins with {start!r}"
        return found[-1]

    def run_python(self, block: Block, text: str) -> None:
        # Blank lines in front make tracebacks show the file's own line numbers.
        code = compile("\n" * (block.line - 1) + text, str(self.doc), "exec")
        try:
            with contextlib.chdir(self.cwd):
                exec(code, {"__name__": "__readme__"})
        except Exception:
            pytest.fail(f"{self.doc.name}:{block.line}: the Python block fails:\n"
                        f"{traceback.format_exc()}")

    def run_shell(self, line: int, command: str) -> None:
        where = f"{self.doc.name}:{line}: `{command}`"
        args = shlex.split(command, comments=True)
        if args[:1] == ["cd"]:
            assert len(args) == 2, f"{where}: a `cd` with more on its line moves the user's " \
                                   "shell unseen (put it on a line of its own, or in ( ))"
            self.cwd = self.cwd / args[1]
            assert self.cwd.is_dir(), f"{where}: no such folder"
            out = ""
        elif _in_process(args):
            with contextlib.chdir(self.cwd):
                r = CliRunner().invoke(zfnet_cli, args[1:], prog_name="zfnet")
            if r.exit_code != 0:
                tb = "".join(traceback.format_exception(*r.exc_info)) if r.exc_info else ""
                pytest.fail(f"{where} exited {r.exit_code}:\n{r.output}\n{tb}")
            out = r.output
        elif args[:1] == ["torchrun"]:
            k = args.index("--nproc-per-node")
            r = torchrun(*args[1:k], *args[k + 2:], nproc=int(args[k + 1]), cwd=self.cwd,
                         timeout=300)
            if r.returncode != 0:
                pytest.fail(f"{where} exited {r.returncode}:\n{r.stdout}{r.stderr[-3000:]}")
            out = r.stdout + r.stderr
        else:
            path = f"{self.bin}{os.pathsep}" if self.bin else ""
            env = dict(os.environ, PATH=f"{path}{os.environ['PATH']}",
                       PYTHONPATH=os.pathsep.join([str(ROOT / "src"),
                                                   os.environ.get("PYTHONPATH", "")]))
            r = subprocess.run(["bash", "-ec", command], cwd=self.cwd, env=env,
                               capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                pytest.fail(f"{where} exited {r.returncode}:\n{r.stdout}{r.stderr}")
            out = r.stdout + r.stderr
        self.outputs.append((command, out))
