"""README.md runs as written: its Python and shell snippets, top to bottom, in one directory.

Conventions (they are README.md's, stated here once):
- ```python, ```sh and ```bash blocks are run, in order, in one temporary working directory, as a
  user following the README would: a later block may use what an earlier one made.
- A block right after a line `<!-- not run: REASON -->` is not run (e.g. it needs ImageNet);
  ```console and ```text blocks are output samples and listings, never run. Every block names
  its language, so none is skipped by accident.
- The working directory holds what the README assumes the user has: `my_photos/` (an
  ImageNet-layout folder of photos that ship with scikit-image), `my_photo.jpg`, `runs/demo`
  (what `make demo` leaves: a trained run and its report; here `zfnet demo` for one epoch on 64
  images, without the analyses), and torchvision's ResNet-18 weights in the torch hub cache
  (`TORCH_HOME`, as a first `--weights DEFAULT` leaves it; here saved from a randomly
  initialised copy, and `ZFNET_OFFLINE=1`: no download).
- `REPLACE` below is every change made to a snippet before it runs: placeholders that need a
  download, and lengths that would take minutes. Each must occur in the README.
- `zfnet ARGS` commands with nothing else of the shell in them run in this process through
  click's test runner (one interpreter start-up instead of one per command keeps this test
  well under a minute); any other shell line runs in bash with `zfnet` on PATH.
A failing snippet fails the test with its README line number. tests/doc_blocks.py runs the
blocks (tests/test_imagenet_doc.py runs docs/imagenet.md's with it).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tests.doc_blocks import RUN, SHOWN, Session, blocks, check_replacements, commands
from zfnet.cli import main as zfnet_cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]

# Every change made to a README snippet before it runs (snippet text -> what runs instead).
REPLACE = {
    # the analyses over a folder, cut to a few maps, images and occluder positions
    "visualize topk --model": "visualize topk --maps-per-layer 2 --k 3 --model",
    "analyze occlusion --model": "analyze occlusion --images 1 --size 64 --stride 32 --model",
    "--maps-per-layer 16": "--maps-per-layer 2 --k 3 --images 16 --layer conv1,conv5",
    # minutes of training cut to one epoch; the data of the training example cut to 64 images
    "--epochs 30": "--epochs 1",
    "--epochs 8": "--epochs 1",
    "--epochs 5 --batch-size 16": "--epochs 1 --batch-size 16",
    "--data synthetic ": '--data "synthetic?n_train=64&n_val=32" ',
}
# Options the README documents that other branches of issue 24 are adding; they may be absent
# from the CLI until those are merged (delete an entry once it is).
PENDING_OPTIONS: set[tuple[str, str]] = set()  # documented before merged
SMALL_DEMO = "synthetic?n_train=64&n_val=32"


# --- the user's files -----------------------------------------------------------------------

def _photo(name: str) -> np.ndarray:
    import skimage.data

    return getattr(skimage.data, name)()  # (H, W, 3) uint8


def _make_photos(root: Path) -> None:
    """An ImageNet-layout folder: 3 classes, 4 training and 2 val crops of one photo each."""
    for cls, name in (("astronaut", "astronaut"), ("cat", "chelsea"), ("coffee", "coffee")):
        a = _photo(name)
        h, w = a.shape[:2]
        s = min(h, w) * 3 // 4
        for split, n in (("train", 4), ("val", 2)):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                y = (h - s) * i // 5
                x = (w - s) * (i + (split == "val")) // 6
                Image.fromarray(a[y:y + s, x:x + s]).resize((96, 96)).save(folder / f"{i}.jpg")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("readme")
    _make_photos(d / "my_photos")
    Image.fromarray(_photo("chelsea")).save(d / "my_photo.jpg")
    # What `make demo` leaves (a trained run, its report), minus the minutes: one epoch on
    # 64 images, no analyses.
    r = CliRunner().invoke(zfnet_cli, ["demo", "--out", str(d / "runs" / "demo"), "--epochs", "1",
                                       "--batch-size", "32", "--data", SMALL_DEMO, "--no-analyses"])
    assert r.exit_code == 0, r.output
    assert r.output.strip().splitlines()[-1].endswith(f"zfnet serve --checkpoint {d}/runs/demo")
    # the torch hub cache after a first `--weights DEFAULT` (random weights: no download)
    import torchvision

    from zfnet.sources import hub_file

    with pytest.MonkeyPatch.context() as mp:  # the test sets TORCH_HOME again
        mp.setenv("TORCH_HOME", str(d / "torch"))
        path = hub_file(torchvision.models.ResNet18_Weights.DEFAULT)
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    shim = d / "bin" / "zfnet"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m zfnet.cli "$@"\n')
    shim.chmod(0o755)
    return d


# --- running ---------------------------------------------------------------------------------

def test_snippets_run(workdir: Path, monkeypatch: pytest.MonkeyPatch, one_thread) -> None:
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("TORCH_HOME", str(workdir / "torch"))
    monkeypatch.setenv("ZFNET_OFFLINE", "1")
    ran = Session(README, workdir, workdir / "bin").run_blocks(REPLACE)
    assert ran >= 5, f"only {ran} README blocks ran"


# --- the README's shape, links and options ---------------------------------------------------

def test_blocks_are_labelled_and_replacements_used() -> None:
    text = README.read_text()
    for b in blocks(README):
        assert b.lang in RUN + SHOWN, (
            f"README.md:{b.line - 1}: a code block must say its language, one of "
            f"{', '.join(RUN + SHOWN)} (console/text are never run)")
        if b.not_run is not None:
            assert b.lang in RUN, f"README.md:{b.line - 2}: 'not run' before a block never run"
    check_replacements(README, REPLACE)
    # the first lines a reader sees: what to type
    head = text.splitlines()[:8]
    assert any(ln.startswith("make demo") for ln in head), head
    assert any(ln.startswith("make test") for ln in head), head
    assert len(text.splitlines()) <= 250


def _links(path: Path) -> list[tuple[int, str]]:
    out = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        out += [(n, m) for m in re.findall(r"\]\(([^)\s]+)\)", line)]
    return out


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_resolve(doc: Path) -> None:
    for n, target in _links(doc):
        if re.match(r"[a-z]+:", target):
            continue  # web links are not checked offline
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        assert dest.exists(), f"{doc.name}:{n}: link to {target} points nowhere"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{doc.name}:{n}: no heading #{anchor} in {file}"


def _cli_commands() -> dict[str, click.Command]:
    """'train', 'analyze occlusion', ... -> the click command."""
    out = {}

    def walk(group: click.Group, prefix: str) -> None:
        for name, cmd in group.commands.items():
            if isinstance(cmd, click.Group):
                walk(cmd, f"{prefix}{name} ")
            else:
                out[prefix + name] = cmd

    walk(zfnet_cli, "")
    return out


def _options(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}


def _code_spans(path: Path) -> list[tuple[int, str]]:
    """Every inline code span and every shell command of a Markdown file, with its line."""
    out = []
    code_lines = set()
    for b in blocks(path):
        code_lines.update(range(b.line - 1, b.line + b.text.count("\n") + 1))
        if b.lang in ("sh", "bash"):
            out += commands(b)
        elif b.lang == "console":
            out += [(b.line + i, ln[2:]) for i, ln in enumerate(b.text.splitlines())
                    if ln.startswith("$ ")]
        elif b.lang == "text":  # listings, e.g. commands quoted in docs/results.md
            out += list(enumerate(b.text.splitlines(), start=b.line))
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if n not in code_lines:
            assert line.count("`") % 2 == 0, f"{path.name}:{n}: a code span breaks across lines"
            out += [(n, s) for s in re.findall(r"`([^`]+)`", line)]
    return out


def _bench_options() -> set[str]:
    """Options of the benchmark scripts, which the results quote beside zfnet's."""
    text = "".join(p.read_text() for p in sorted((ROOT / "bench").glob("*.*"))
                   if p.suffix in (".py", ".sh"))
    return set(re.findall(r"[\"'](--[a-z][a-z0-9-]*)[\"'=]", text))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_documented_options_exist(doc: Path) -> None:
    """Every `zfnet COMMAND --option` written in the docs is an option of that command, and
    every lone `--option` one of zfnet's or of a benchmark's: the docs cannot drift from the code
    unseen."""
    cmds = _cli_commands()
    every = set().union(*(_options(c) for c in cmds.values())) | _bench_options()
    every |= {opt for _, opt in PENDING_OPTIONS}
    start = re.compile(r"(?<![\w./-])zfnet(?:\.cli)? ((?:[a-z]+ ?){1,2})")
    for n, span in _code_spans(doc):
        found = list(start.finditer(span))
        for m, nxt in zip(found, [*found[1:], None][:len(found)], strict=True):
            words = m.group(1).split()
            name = " ".join(words[:2]) if " ".join(words[:2]) in cmds else words[0]
            assert name in cmds, f"{doc.name}:{n}: `{span}`: no command `zfnet {name}`"
            tail = span[m.end(): nxt.start() if nxt else None]
            for opt in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", tail):
                assert opt in _options(cmds[name]) or (name, opt) in PENDING_OPTIONS, (
                    f"{doc.name}:{n}: `{span}`: `zfnet {name}` has no option {opt}")
        if not found and re.fullmatch(r"--[a-z][a-z0-9-]*(?:[ =].*)?", span):
            opt = re.match(r"--[a-z][a-z0-9-]*", span).group(0)
            assert opt in every, f"{doc.name}:{n}: `{span}`: no command has {opt}"
