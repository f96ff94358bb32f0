"""`zfnet study` (paper Table 3): train a list of model variants on one dataset with one budget
and report train / val top-1 (and top-5) error side by side.

The variants are Table 3's, expressed relative to the base model so that they apply to the
small models too: fc6/fc7 at half and double width (the paper's 2048 and 8192 vs 4096), conv3–5
widened by the paper's factors (384/384/256 -> 512/1024/512, i.e. ×4/3, ×8/3, ×2), and the
removals (conv3+conv4, fc7, fc6+fc7, all four).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from zfnet.atomic import write_text_atomic
from zfnet.data import collate, load_dataset
from zfnet.data.bundle import require_labels
from zfnet.models import create_model
from zfnet.train import NonFiniteLossError, TrainConfig, evaluate, load_model, train

# Paper Table 3 (train top-1 / val top-1 / val top-5 error, %), for the side-by-side table.
PAPER_TABLE3 = {
    "alexnet_zf": {
        "baseline": (35.1, 40.5, 18.1), "no_conv34": (41.8, 45.4, 22.1),
        "no_fc7": (27.4, 40.0, 18.4), "no_fc67": (27.4, 44.8, 22.4),
        "no_conv34_fc67": (71.1, 71.3, 50.1), "fc_half": (40.3, 41.7, 18.8),
        "fc_double": (26.8, 40.0, 18.1),
    },
    "zfnet": {
        "baseline": (33.1, 38.4, 16.5), "fc_half": (38.2, 40.2, 17.6),
        "fc_double": (22.0, 38.8, 17.0), "wide345": (18.8, 37.5, 16.0),
        "wide345_fc_double": (10.0, 38.3, 16.9),
    },
}

_PAPER_MODEL = {"zfnet": "zfnet", "zfnet_small": "zfnet", "zfnet_seedtable": "zfnet",
                "alexnet_zf": "alexnet_zf", "alexnet_small": "alexnet_zf"}

VARIANTS = ("baseline", "fc_half", "fc_double", "wide345", "wide345_fc_double", "no_conv34",
            "no_fc7", "no_fc67", "no_conv34_fc67")
# what a study trains of each of zfnet's models when no variants are named
DEFAULT_VARIANTS = ("baseline", "fc_half", "fc_double", "wide345", "no_conv34", "no_fc7",
                    "no_fc67")


def default_variants(model: str) -> tuple[str, ...]:
    """The variants a study trains of `model` when none are named: `DEFAULT_VARIANTS` of zfnet's
    models, the baseline of any other architecture (it has no others)."""
    from zfnet.models import list_models

    return DEFAULT_VARIANTS if model in list_models() else ("baseline",)


def variant_overrides(model: str, variant: str) -> dict[str, Any]:
    """The `create_model` overrides that make Table 3's `variant` of base `model` (of zfnet's
    models; another architecture has its baseline only)."""
    from zfnet.models import list_models

    if variant == "baseline" and model not in list_models():
        return {}
    if model not in list_models():
        from zfnet.sources import architecture_name

        raise ValueError(f"variant {variant!r} is one of zfnet's model options; "
                         f"{architecture_name(model)} takes none: study its baseline "
                         "(without --variants, each model gets the variants it has)")
    cfg = create_model(model).config
    convs = {c.name: c.channels for c in cfg.convs}
    fc = cfg.fc[0] if cfg.fc else 0
    wide = (round(convs["conv3"] * 4 / 3), round(convs["conv4"] * 8 / 3), convs["conv5"] * 2)
    table: dict[str, dict[str, Any]] = {
        "baseline": {},
        "fc_half": {"fc_width": fc // 2},
        "fc_double": {"fc_width": fc * 2},
        "wide345": {"conv_widths": wide},
        "wide345_fc_double": {"conv_widths": wide, "fc_width": fc * 2},
        "no_conv34": {"remove": ("conv3", "conv4")},
        "no_fc7": {"remove": ("fc7",)},
        "no_fc67": {"remove": ("fc6", "fc7")},
        "no_conv34_fc67": {"remove": ("conv3", "conv4", "fc6", "fc7")},
    }
    if variant not in table:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    return table[variant]


def run_name(model: str, variant: str) -> str:
    """The folder of (model, variant) under the study's `out`: `zfnet_small-baseline`,
    `torchvision_resnet18-baseline`, `my_net.py_Net-baseline` (a file's name, not its path)."""
    target, colon, name = model.rpartition(":")
    short = f"{Path(target).name}:{name}" if colon and "/" in target else model
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', short)}-{variant}"


class StudyInterrupted(Exception):
    """A signal stopped one of the study's runs (saved where it stopped): `signal` names it
    (None: another process's), `run` is the run's directory. The same study continues it."""

    def __init__(self, signal: str | None, run: Path) -> None:
        super().__init__(f"interrupted by {signal or 'a signal'} while training {run}")
        self.signal, self.run = signal, run


def study(
    data: str,
    models: Sequence[str],
    variants: Sequence[str] | None,
    out: str | Path,
    epochs: int,
    train_eval_images: int = 2000,
    say: Callable[[str], None] | None = None,
    **train_options: Any,
) -> list[dict[str, Any]]:
    """Train every (model, variant) pair on `data` for `epochs` into `out/<model>-<variant>` and
    return one row each (`variants` None: each model's `default_variants`): model, variant,
    parameters, train/val top-1 error, val top-5 error (None with 5 classes or fewer: every
    class is among the top 5), wall time. Train error is measured in eval mode on centre crops
    of the first `train_eval_images` training images (as the paper's train error: without
    dropout).
    `train_options` go to `TrainConfig` (batch_size, lr, schedule, progress, …); `say(line)`
    is told which run starts and how it ended.

    A run that exists already is continued (finished: kept as it is), so the same call goes on
    where an interrupted one stopped. Each run gets its own page (`run/index.html`, its training
    curves), as `zfnet train` writes. The rows are also written to `out/study.json`, with those
    of an earlier call's runs this call did not name (finished, of the same data, epochs and
    options), so that a variant added later joins the table. A signal stops the study, its run
    saved where it was, with `StudyInterrupted`; a NaN/inf loss stops it with
    `NonFiniteLossError` naming the run."""
    from zfnet.data.bundle import require_labelled_spec
    from zfnet.data.spec import absolute_spec
    from zfnet.train.run import find_resume

    if not models or variants is not None and not variants:
        raise ValueError("study needs at least one model and one variant")
    data = absolute_spec(data)  # what its runs save: read from anywhere later
    require_labelled_spec(data, "train on")  # images:DIR: before its mean image is made
    for what, names in (("model", models), ("variant", variants or ())):
        twice = sorted({n for n in names if list(names).count(n) > 1})
        if twice:
            raise ValueError(f"{what} {', '.join(map(repr, twice))} is given twice; give each "
                             "once")
    pairs = [(m, v) for m in models for v in (default_variants(m) if variants is None
                                               else variants)]

    def config(model: str, v: str) -> TrainConfig:
        return TrainConfig(data=data, model=model, out=str(Path(out) / run_name(model, v)),
                           epochs=epochs, model_opts=variant_overrides(model, v), resume=True,
                           **train_options)

    for model, v in pairs:  # fail before training anything: unknown models, variants, options,
        # runs of another configuration where the study's would go (its user gave no --resume)
        find_resume(config(model, v), action="continue")
    earlier, left = _earlier_rows(Path(out), set(pairs), config, epochs)
    bundle = load_dataset(data)
    require_labels(bundle, "train on")
    train_eval = bundle.train.with_mode("centre")
    if train_eval_images and len(train_eval) > train_eval_images:
        from torch.utils.data import Subset

        train_eval = Subset(train_eval, range(train_eval_images))
    rows = []
    say = say or (lambda _: None)
    if left:  # an earlier call's rows that this table cannot share (their runs are kept)
        say(f"left out of the table: {', '.join(left)}, trained in {out} with another budget "
            "or options, or removed since (their folders are kept)")
    for i, (model, v) in enumerate(pairs, 1):
        run = Path(out) / run_name(model, v)
        cfg = config(model, v)
        say(f"[{i}/{len(pairs)}] {model}, variant {v}: {epochs} epoch{'s' * (epochs != 1)} "
            f"in {run}")
        t0 = time.perf_counter()
        try:
            summary = train(replace(cfg), bundle=bundle)
        except NonFiniteLossError as e:  # the recipe's lr is too high for this variant
            raise NonFiniteLossError(
                f"{run.name} diverged: {e}; the study stops (its finished runs are kept)"
            ) from None
        _run_page(run)
        if summary["status"] != "completed":
            raise StudyInterrupted(summary.get("signal"), run)
        net, _ = load_model(run)
        tr = evaluate(net, DataLoader(train_eval, batch_size=256, collate_fn=collate),
                      bundle.num_classes)
        final = summary["final"]
        rows.append({
            "model": model, "variant": v,
            "parameters": sum(p.numel() for p in net.parameters()),
            "train_top1_error": tr["top1_error"],
            "val_top1_error": final["val_top1_error"],
            "val_top5_error": (final.get("val_top5_error") if bundle.num_classes > 5
                               else None),  # every class in the top 5: no error to show
            "wall_time_s": time.perf_counter() - t0, "classes": bundle.num_classes,
            "paper": PAPER_TABLE3.get(_PAPER_MODEL.get(model, ""), {}).get(v),
        })
        say(f"[{i}/{len(pairs)}] {model}, variant {v}: val top-1 error "
            f"{final['val_top1_error']:.1%}, train {tr['top1_error']:.1%} "
            f"({rows[-1]['wall_time_s']:.0f} s)")
    rows = earlier + rows
    order = list(dict.fromkeys(r["model"] for r in rows))
    rows.sort(key=lambda r: (order.index(r["model"]), VARIANTS.index(r["variant"])))
    write_text_atomic(Path(out) / "study.json", json.dumps(rows, indent=1))
    return rows


def _run_page(run: Path) -> None:
    """`run`'s own page with its training curves, as `zfnet train` leaves one (none before its
    first epoch ends); a failure is a warning: the run itself is saved."""
    import warnings

    from zfnet.report.training import run_page

    try:
        run_page(run)
    except Exception as e:  # the page only: the run and the study go on
        warnings.warn(f"the page of {run} was not written ({type(e).__name__}: {e}); `zfnet "
                      f"report {run}` rebuilds it", stacklevel=2)


def _earlier_rows(out: Path, named: set[tuple[str, str]], config: Any,
                  epochs: int) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of `out/study.json` (an earlier call's) whose (model, variant) is not in
    `named` and whose run is still there, finished, of the configuration `config(model,
    variant)` makes now; and "model variant" of the earlier rows left out for that."""
    from zfnet.train.run import find_resume

    try:
        saved = json.loads((out / "study.json").read_text())
    except (OSError, ValueError):
        return [], []
    kept, left = [], []
    for row in saved if isinstance(saved, list) else []:
        try:
            if (row["model"], row["variant"]) in named or row["variant"] not in VARIANTS:
                continue
            _, meta = find_resume(config(row["model"], row["variant"]))
        except (KeyError, TypeError, ValueError, OSError):
            meta = None  # another configuration's, or a run since removed
        if meta is not None and meta.get("epoch") == epochs:
            kept.append(row)
        elif isinstance(row, dict) and {"model", "variant"} <= row.keys():
            left.append(f"{row['model']} {row['variant']}")
    return kept, left


def _recipe_words(out: Path, rows: list[dict[str, Any]]) -> str:
    """" (batch 32, lr 0.01, cosine schedule)" from the first row's run's config.json ("" where
    it cannot be read): the options every variant shares."""
    try:
        c = json.loads((out / run_name(rows[0]["model"], rows[0]["variant"]) / "config.json")
                       .read_text())
        return f" (batch {c['batch_size']}, lr {c['lr']:g}, {c['schedule']} schedule)"
    except (IndexError, KeyError, TypeError, OSError, ValueError):
        return ""


def _missing_words(rows: list[dict[str, Any]]) -> str:
    """Where the caption's two combined variants were not trained (they are not among the
    defaults, to keep a study short): which `--variants` add their rows."""
    ran = {r["variant"] for r in rows}
    left = [v for v in ("no_conv34_fc67", "wide345_fc_double") if v not in ran]
    if not left:
        return ""
    return (f" ({', '.join(left)}, the combinations these findings compare with, "
            f"{'were' if len(left) > 1 else 'was'} not trained here: --variants "
            f"{','.join(dict.fromkeys([*(r['variant'] for r in rows), *left]))} adds "
            f"{'them' if len(left) > 1 else 'it'}.)")


def chance_words(rows: list[dict[str, Any]]) -> str:
    """"; chance: 90.0% top-1 error (10 classes)" where the rows know their classes (a
    guess among N classes errs (N - 1) / N of the time), else ""."""
    n = next((r["classes"] for r in rows if r.get("classes")), None)
    return f"; chance: {100 * (1 - 1 / n):.1f}% top-1 error ({n} classes)" if n else ""


def study_section(run_dir: str | Path, rows: list[dict[str, Any]], data: str, epochs: int,
                  order: int = 78):
    """Write the Table 3 section: this run's errors beside the paper's."""
    from zfnet.report import Section, Table, write_section

    def pct(v: float | None) -> str:
        return "—" if v is None else f"{100 * v:.1f}"

    names = [run_name(r["model"], r["variant"]) for r in rows]  # each run's own page
    table = [[r["model"], r["variant"], f"{r['parameters']:,}", pct(r["train_top1_error"]),
              pct(r["val_top1_error"]), pct(r["val_top5_error"]),
              " / ".join(f"{v:.1f}" for v in r["paper"]) if r["paper"] else ""] for r in rows]
    section = Section(
        key="study", title="Architecture variants (Table 3)", order=order,
        caption=(
            f"Each variant trained on {data} for {epochs} epoch{'s' * (epochs != 1)} with the same "
            f"recipe{_recipe_words(Path(run_dir), rows)} (its model's name links to its run's "
            "page, training curves and all). Errors in %, train error measured "
            "without dropout on centre crops"
            + ("; no val top-5 (—) with 5 classes or fewer, all of them in the top 5"
               if any(r["val_top5_error"] is None for r in rows) else "")
            + chance_words(rows) + ". The paper (ImageNet, 70 epochs): removing conv3-4 or "
            "fc6-7 of AlexNet costs little alone, both together a lot (its removals are of "
            "AlexNet only: beside alexnet_small's rows); the width of fc6-7 makes little "
            "difference; wider middle conv layers help, and widening them and fc6-7 together "
            "overfits."
            + _missing_words(rows)
        ),
        tables=[Table(["model", "variant", "parameters", "train top-1", "val top-1",
                       "val top-5", "paper train/val top-1/val top-5"], table,
                      links=[f"{name}/index.html" if (Path(run_dir) / name / "index.html")
                             .is_file() else "" for name in names])],
    )
    write_section(run_dir, section)
    return section
