"""Progress bars (`zfnet.progress`): redrawn on a terminal, once a minute into a log, whose last
state stays; every long command draws one into a log too."""

from __future__ import annotations

import io
import sys

import pytest
from click.testing import CliRunner

from zfnet.cli import main
from zfnet.progress import INTO_LOG_S, ON_TERMINAL_S, counted_progress, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _states(text: str) -> list[str]:
    """The bar states drawn, in order (tqdm separates them by carriage returns)."""
    return [s.strip() for s in text.replace("\n", "\r").split("\r") if s.strip()]


def test_into_a_log_a_bar_is_drawn_at_its_start_and_its_end_and_the_end_stays(
        monkeypatch) -> None:
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    with progress_bar(range(1000), desc="mining", unit="img") as bar:
        assert bar.mininterval == INTO_LOG_S
        for _ in bar:
            pass
    states = _states(log.getvalue())
    assert len(states) == 2, states  # not one per item: 1000 here, 700k steps for ImageNet
    assert states[0].startswith("mining:   0%") and "0/1000" in states[0]
    assert states[1].startswith("mining: 100%") and "1000/1000" in states[1]
    assert log.getvalue().endswith("\n")  # the last state kept, on a line of its own
    assert log.getvalue().splitlines() == states  # each a line: no carriage returns, no padding


def test_into_a_log_a_line_printed_between_two_states_stays_whole(monkeypatch) -> None:
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    with progress_bar(total=20, desc="training", unit="step") as bar:
        bar.update(15)
        bar.refresh()
        print("warning: 1 broken file skipped", file=sys.stderr)
        bar.update(1)
        bar.refresh()
    lines = log.getvalue().splitlines()
    assert lines[2] == "warning: 1 broken file skipped", lines
    # the state at 80% once: drawn by the refresh, the same again as the bar closes
    assert [x.split("|")[0] for x in lines if x.startswith("training")] == [
        "training:   0%", "training:  75%", "training:  80%"], lines
    assert all(x == x.rstrip() and "\r" not in x for x in lines), lines


def test_into_a_log_the_end_drawn_by_the_last_tick_is_not_drawn_again_at_close(
        monkeypatch) -> None:
    """The minute's tick that lands on the last step draws the 100% state; closing the bar
    then draws the same state: one line, not two."""
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    with progress_bar(total=4, desc="projecting", unit="unit") as bar:
        bar.mininterval = bar.miniters = 0  # every update a tick
        for _ in range(4):
            bar.update(1)
    lines = log.getvalue().splitlines()
    assert [x.split("|")[0] for x in lines] == [
        "projecting:   0%", "projecting:  25%", "projecting:  50%", "projecting:  75%",
        "projecting: 100%"], lines


def test_on_a_terminal_a_bar_is_redrawn_and_cleared_at_its_end(monkeypatch) -> None:
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    with progress_bar(total=3, desc="evaluating") as bar:
        assert bar.mininterval == ON_TERMINAL_S
        bar.update(3)
    assert _states(term.getvalue())[0].startswith("evaluating:   0%")
    assert not term.getvalue().endswith("\n")  # leave=False: nothing left on the terminal
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    with progress_bar(total=3, desc="writing", leave=True) as bar:
        bar.update(3)
    assert term.getvalue().endswith("\n")


def test_a_bar_not_shown_writes_nothing_and_still_iterates(monkeypatch) -> None:
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    assert list(progress_bar(range(5), desc="x", shown=False)) == [0, 1, 2, 3, 4]
    assert log.getvalue() == ""


@pytest.mark.parametrize("command, desc", [
    (["eval"], "evaluating"),
    (["visualize", "topk", "--layer", "conv1", "--maps-per-layer", "2"], "top-k mining"),
])
def test_a_command_run_into_a_log_leaves_its_bar_there(tmp_path, command, desc) -> None:
    """A command run with its stderr in a file (a cluster's job) shows how far it got: the
    bars of eval and topk were drawn on a terminal only."""
    out = ["--out", str(tmp_path / "out")] if command[0] == "visualize" else []
    res = CliRunner().invoke(main, [*command, "--model", "zfnet_small", "--data",
                                    "synthetic?n_train=16&n_val=16", "--batch-size", "8",
                                    *out])
    assert res.exit_code == 0, res.output
    states = [s for s in _states(res.stderr) if s.startswith(desc)]
    assert states and "2/2" in states[-1] and "100%" in states[-1], res.stderr
    if command[0] == "visualize":  # then the projection, minutes of a large model on a CPU
        states = [s for s in _states(res.stderr) if s.startswith("projecting")]
        assert states and states[-1].startswith("projecting: 100%"), res.stderr


def test_the_end_of_a_bar_is_flushed_before_the_next_line(monkeypatch) -> None:
    """A log holding stdout and stderr both: the line printed after a bar comes after it."""
    raw = io.BytesIO()
    log = io.TextIOWrapper(raw, encoding="utf-8")  # buffered, as a file is
    monkeypatch.setattr(sys, "stderr", log)
    with progress_bar(total=2, desc="atlas") as bar:
        bar.update(2)
    assert raw.getvalue().decode().endswith("it/s]\n"), raw.getvalue()


def test_the_atlas_into_a_log_draws_its_bar_at_its_start_and_end(tmp_path) -> None:
    """Its progress comes at every image mined and every unit drawn: into a log, not a line
    each (a refresh at each call wrote them all)."""
    res = CliRunner().invoke(main, ["atlas", "--model", "zfnet_small", "--data",
                                    "synthetic?n_train=16&n_val=16", "--out",
                                    str(tmp_path / "atlas"), "--layer", "conv1",
                                    "--maps-per-layer", "2", "--images", "8", "--batch-size", "2"])
    assert res.exit_code == 0, res.output
    states = [s for s in _states(res.stderr) if s.startswith("atlas:")]
    assert len(states) == 2 and states[-1].startswith("atlas: 100%"), res.stderr
    assert states[0].startswith("atlas:   0%") and " 0/" in states[0], res.stderr  # its total
    assert res.output.endswith(f"\natlas: {(tmp_path / 'atlas' / 'index.html').resolve()}\n")


def test_occlusion_into_a_log_draws_its_bar_with_its_total_from_the_first_line(tmp_path) -> None:
    """The bar is drawn at the first report, when the number of occluded images is known: into
    a log its first line said "0img [00:00, ?img/s]", with no total."""
    res = CliRunner().invoke(main, ["analyze", "occlusion", "--model", "zfnet_small", "--data",
                                    "synthetic?n_train=16&n_val=16", "--out",
                                    str(tmp_path / "out"), "--images", "1", "--pointing", "0"])
    assert res.exit_code == 0, res.output
    states = [s for s in _states(res.stderr) if s.startswith("occluded images:")]
    assert len(states) == 2, res.stderr
    assert states[0].startswith("occluded images:   0%"), res.stderr
    assert states[1].startswith("occluded images: 100%"), res.stderr


def test_a_counted_bar_is_closed_after_an_error(monkeypatch) -> None:
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    with pytest.raises(KeyError), counted_progress(desc="atlas") as report:
        report(1, 4)
        raise KeyError("x")
    assert _states(log.getvalue())[-1].startswith("atlas:  25%"), log.getvalue()
    with counted_progress(desc="nothing") as report:
        pass
    assert "nothing" not in log.getvalue()  # no report: no bar


@pytest.mark.parametrize("command", [
    ["visualize", "topk", "--layer", "conv1", "--maps-per-layer", "2"],
    ["analyze", "occlusion", "--images", "1", "--pointing", "0"],
    ["eval"],
    ["analyze", "transfer", "--shots", "1", "--scratch-steps", "2", "--test", "8"],
])
def test_quiet_silences_every_bar_of_a_command_down_to_its_stages(tmp_path, command) -> None:
    """--quiet existed on train, eval and shards only: an analysis in a cluster's log wrote its
    bars. Now every command that draws bars takes it, and it reaches the bars of the stages
    deep inside (the mining, the dataset's mean image), which are not told; the results
    still print, and the next command draws its bars again."""
    out = ["--out", str(tmp_path / "out")] if command[0] != "eval" else []
    args = [*command, "--model", "zfnet_small", "--data", "synthetic?n_train=16&n_val=16",
            "--batch-size", "8", *out]
    quiet = CliRunner().invoke(main, [*args, "--quiet"])
    assert quiet.exit_code == 0, quiet.output
    assert "%|" not in quiet.stderr and quiet.stdout.strip(), quiet.stderr
    assert "epoch 1/" not in quiet.output, quiet.output  # transfer's runs from scratch: silent
    loud = CliRunner().invoke(main, args)
    assert loud.exit_code == 0 and "%|" in loud.stderr, loud.stderr


def test_every_command_that_draws_bars_takes_quiet() -> None:
    import click

    def leaves(group: click.Group, prefix: str = ""):
        for name, c in group.commands.items():
            yield from (leaves(c, f"{prefix}{name} ") if isinstance(c, click.Group)
                        else [(f"{prefix}{name}", c)])

    without = sorted(name for name, c in leaves(main)
                     if not any("--quiet" in p.secondary_opts for p in c.params))
    assert without == ["models", "report", "serve"]  # no bar of their own


def test_project_draws_a_bar_over_the_images_and_quiet_silences_it(tmp_path) -> None:
    """README: --quiet is taken by every command that draws bars; `zfnet project --quiet` was
    "No such option" (it drew none: now a bar over the images read, a folder's taking a
    while)."""
    args = ["project", "synthetic?n_val=4", "--model", "zfnet_small", "--layer", "conv1",
            "--out", str(tmp_path / "out")]
    quiet = CliRunner().invoke(main, [*args, "--quiet"])
    assert quiet.exit_code == 0, quiet.output
    assert "%|" not in quiet.stderr and "wrote 16 projections" in quiet.stdout, quiet.stderr
    loud = CliRunner().invoke(main, args)
    assert loud.exit_code == 0 and "images: 100%|" in loud.stderr, loud.stderr


def test_a_command_refused_after_quiet_leaves_no_bar_off_behind() -> None:
    """--quiet (and --nonlinear) entered their context as their option was read; a later bad
    option stops click before the command, which then closed nothing: every bar of the
    process after it was off (the next tests' bars, in one test process)."""
    from zfnet.graph import current_nonlinear
    from zfnet.progress import _SHOWN

    res = CliRunner().invoke(main, ["visualize", "topk", "--model", "zfnet_small", "--quiet",
                                    "--nonlinear", "gradient", "--k", "0", "--out", "x"])
    assert res.exit_code == 2 and "--k" in res.output
    assert _SHOWN.get() is True and current_nonlinear() == "error"


def test_tally_adds_each_count_and_reports_the_sum_of_the_total() -> None:
    from zfnet.progress import tally

    seen: list[tuple[int, int]] = []
    add = tally(lambda done, total: seen.append((done, total)), 7)
    add(3)
    add(4)
    assert seen == [(3, 7), (7, 7)]
    tally(None, 5)(2)  # no report: counts for nothing, raises nothing
