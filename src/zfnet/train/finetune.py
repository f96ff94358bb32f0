"""Fine-tuning: a run that starts from a trained network's weights (paper Sec. 5.2).

`zfnet train --model torchvision:resnet18 --weights DEFAULT --data imagefolder:DIR` trains the
network on DIR's classes from its ImageNet weights: every layer is taken from the weights but
the classifier, which is built again for the data's classes where their number differs; the
images are the weights' own inputs (their resize, crop, mean and std, `--mean/--std/--resize/
--crop` to change them), kept with the run so that every later command feeds it the same.
`--freeze-to LAYER` keeps LAYER and every layer before it as the weights have them (their
parameters are not trained, their batch norm statistics not updated, their dropout off): the
paper's "layers 1-7 kept, a new softmax trained" is `--freeze-to relu7` on zfnet's models, a
linear probe of a ResNet `--freeze-to avgpool`.

zfnet's own models started from weights (a zfnet run's checkpoint, a state dict) keep the paper's
pixels, 0..255 minus the new data's mean image, and the recipe as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from zfnet.data.preprocess import Preprocessing
from zfnet.models import eval_mode, list_models
from zfnet.models.layers import resolve_layer


@dataclass
class Start:
    """What a fine-tuning run starts from: the trained network (on the CPU, its own classes),
    the inputs it takes (None: a zfnet model's, the paper's pixels) and how to name it."""

    model: nn.Module
    preprocessing: Preprocessing | None
    label: str
    notes: list[str]


def load_start(model: str, weights: str, *, mean: tuple[float, ...] | None = None,
               std: tuple[float, ...] | None = None, resize: int | None = None,
               crop: int | None = None) -> Start:
    """`model` with `weights` (`zfnet.sources.load_source`'s forms: a torchvision weights name,
    timm's `pretrained`, a Hugging Face model's own as `pretrained`, a weights file, or a zfnet
    run of `model`: one fine-tuned before, or one of zfnet's models), and the inputs it takes,
    overridden by `mean`, `std` (0..1 units), `resize`, `crop`. User errors are ValueError /
    FileNotFoundError."""
    from zfnet.sources import load_source

    if Path(weights).expanduser().is_dir():
        return _from_run(model, Path(weights).expanduser(), mean=mean, std=std, resize=resize,
                         crop=crop)
    if model.startswith("hf:") and weights == "pretrained":
        weights = None  # a Hugging Face model's own weights come with it
    src = load_source(model, weights, mean=mean, std=std, resize=resize, crop=crop)
    if getattr(src.model, "transform_input", False):
        raise ValueError(f"{src.name} turns ImageNet-normalised inputs into its own "
                         "(transform_input=True), which a model built again for other classes "
                         "does not: fine-tune another architecture, or build it in your own "
                         "FILE.py:NAME")
    notes = [n for n in src.meta.get("notes", []) if not n.startswith("preprocessing:")]
    return Start(src.model, None if model in list_models() else src.preprocessing, src.name, notes)


def _from_run(model: str, path: Path, **overrides: object) -> Start:
    """A zfnet run (or one of its checkpoints) as the weights of `model`: its last weights and,
    where it was fine-tuned from weights, its inputs (a second stage: a new classifier trained
    on frozen layers first, then every layer)."""
    from zfnet.sources import load_source
    from zfnet.train.checkpoint import saved_preprocessing

    src = load_source(str(path), **overrides)  # a folder that holds no run: said there
    if src.meta.get("model") != model:
        raise ValueError(f"{path} is a run of {src.meta.get('model')}, not of {model}: give "
                         f"--model {src.meta.get('model')}")
    if model in list_models():
        return Start(src.model, None, src.name, [])
    if saved_preprocessing(src.meta) is None:
        raise ValueError(f"{path} trained {model} from scratch on the paper's pixels: continue "
                         f"it with zfnet train --out {path} --resume (more epochs: under "
                         "--schedule plateau or step), or start from weights trained on the "
                         "model's own inputs")
    return Start(src.model, src.preprocessing, src.name, [])


def transplant(start: nn.Module, model: nn.Module, what: str) -> list[str]:
    """Load `start`'s weights into `model` (the same architecture built for the data's
    classes), its classifier excepted where only its number of outputs differs; returns the
    keys left as `model` initialised them (the new classifier's). Anything else that differs
    is a ValueError naming it."""
    from zfnet.sources import _mismatch

    own, sd = model.state_dict(), start.state_dict()
    missing, unexpected, shapes = _mismatch(own, sd)
    head = [k for k, f, m in shapes if len(f) == len(m) and f[1:] == m[1:] and f[0] != m[0]]
    other = [f"{k} {f} vs {m}" for k, f, m in shapes if k not in head]
    modules = {k.rpartition(".")[0] for k in head}
    if missing or unexpected or other or len(modules) > 1:
        raise ValueError(
            f"the weights of {what} do not fit the model built for the data"
            + (f"; missing: {', '.join(missing[:4])}" if missing else "")
            + (f"; unexpected: {', '.join(unexpected[:4])}" if unexpected else "")
            + (f"; shapes (weights vs model): {', '.join(other[:4])}" if other else "")
            + (f"; more than the classifier has other outputs: {', '.join(sorted(modules))}"
               if len(modules) > 1 else "")
            + ": only the classifier's number of outputs may differ (it is built again for the "
              "data's classes); give the data the weights' input channels and size")
    model.load_state_dict({k: v for k, v in sd.items() if k not in head}, strict=False)
    return head


def freeze_to(model: nn.Module, layer: str, channels: int, size: int) -> list[nn.Module]:
    """Keep `layer` and every module a forward pass runs before it (on a blank `channels` x
    `size` x `size` image) as they are: their parameters stop requiring gradients. Returns those
    modules, which training keeps in eval mode (batch norm statistics fixed, dropout off). A
    layer that does not exist, or one after which nothing is left to train, is a ValueError."""
    name, target = resolve_layer(model, layer)
    done: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, i, o: done.append(m)) for m in model.modules()]
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad(), eval_mode(model):
            model(torch.zeros(1, channels, size, size))
    finally:
        for h in hooks:
            h.remove()
    if target not in done:
        raise ValueError(f"layer {layer!r} ({name}) is not run by the model's forward pass: "
                         "give a layer it runs (`zfnet models SOURCE` lists them)")
    last = len(done) - 1 - done[::-1].index(target)  # its last call, as layers are read
    frozen = list(dict.fromkeys(done[:last + 1]))
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"--freeze-to {layer}: every parameter of the model is at or before "
                         f"{name}, so nothing is left to train; give an earlier layer")
    return frozen


def describe(start: Start, head: list[str], outputs: int, frozen: list[nn.Module],
             model: nn.Module, layer: str | None) -> str:
    """One line for the log: what the run starts from, what is new, what is kept fixed."""
    new = (f"{', '.join(head)} new for the data's {outputs} classes" if head else
           f"its classifier kept ({outputs} outputs, as many as the data's classes)")
    line = f"fine-tuning {start.label}: {new}"
    if start.preprocessing is not None:
        line += f"; inputs: {start.preprocessing.describe()}"
    if frozen:
        n = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        line += f"; up to {layer} kept as it is ({n:,} of {total:,} parameters)"
    return line
