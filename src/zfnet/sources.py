"""Model sources: one string names the model a command looks inside; its preprocessing comes
with it, once for every command.

    src = load_source("torchvision:resnet18", "DEFAULT")   # from the torch hub cache
    src.model            # eval mode
    src.preprocessing    # resize 256, crop 224, ImageNet's mean and std (the weights' own)
    src.labels           # the 1000 ImageNet class names
    data = load_data(src, "images:photos")                  # their inputs for this model

Sources (`SOURCE_FORMS`):
- a zfnet model name (`zfnet`, `zfnet_small`, `alexnet_zf`, ... `zfnet models` lists them):
  random init (seed 0), or `weights` = a file: zfnet's `model.safetensors` (its run then
  gives everything else), a state dict `.pth`/`.pt` (read with `weights_only=True`) or a
  `.safetensors`;
- `torchvision:NAME`, any torchvision classification model: `weights` = an enum name of that
  model (`DEFAULT`, `IMAGENET1K_V1`, ...) loaded from the torch hub cache (downloaded when
  missing, unless `ZFNET_OFFLINE=1`; either way a missing file is an error saying which URL to
  fetch and where to put it), or a local file as above (a fine-tuned copy with another number
  of classes is rebuilt with that number);
- `timm:NAME` when timm is installed, weights from a local file only;
- `hf:ORG/NAME` or `hf:DIR`, a Hugging Face transformers image classifier (`zfnet.hf`) with its
  own weights, or `weights` = a state dict file of its architecture;
- your own code: `FILE.py:NAME` or `package.module:NAME`, a function or class that builds the
  model (or a model object built at import; `zfnet.user_code`), random init (seed 0) or
  `weights` = a state dict file; `from_module` takes a model object from Python;
- the path of a zfnet run directory, checkpoint directory or its `model.safetensors` (a
  registry name wins over a folder of that name: write `./zfnet_small` for the folder).

Preprocessing: the weights enum's transforms (torchvision), the model's `pretrained_cfg` (timm, and
your own model when it has one, in timm's form), the run's mean image (zfnet runs, paper Sec. 3);
otherwise a default that `notes` says: ImageNet's mean and std at 256/224 (torchvision, timm, your
own; one channel: their mean; a torchvision architecture whose own weights are made at another size,
Inception v3's 342/299, at theirs), 0..255 minus ImageNet's mean pixel (zfnet's registry models). A
GoogLeNet or Inception v3 weights file is built with `transform_input=True`, as torchvision builds
them for their weights. `mean`, `std` (0..1 units, as model cards give them), `resize` and `crop`
override it. A model of your own, or one given another size, is tried on one input of that size when
loaded: one that cannot take it is an error naming the size, not a traceback from the first
analysis.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import pickle
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from zfnet import user_code
from zfnet.data import DataBundle, load_dataset
from zfnet.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, PAPER_RATIO, Preprocessing
from zfnet.data.spec import nfc, parse_spec
from zfnet.memory import out_of_memory
from zfnet.models.modes import check_not_scripted

SOURCE_FORMS = ("a zfnet model name (`zfnet models`), torchvision:NAME (any torchvision "
                "classification model), timm:NAME, hf:ORG/NAME or hf:DIR (a Hugging Face "
                "image classifier), your own code as FILE.py:NAME or "
                "package.module:NAME (a function or class that builds the model), or the path "
                "of a zfnet run, checkpoint directory or model.safetensors")
WEIGHTS_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
SEED = 0  # random init without weights: the same model every time
OFFLINE_ENV = "ZFNET_OFFLINE"
_AUX = ("aux1", "aux2", "AuxLogits")  # GoogLeNet's and Inception's auxiliary classifiers


class Source:
    """A model to look inside and what comes with it.

    `model`: in eval mode, on the device asked for. `preprocessing`: how images become its
    inputs (`zfnet.data.preprocess.Preprocessing`). `labels`: class names, or None when the
    weights carry none. `name`: printable, e.g. "torchvision:resnet18 IMAGENET1K_V1". `kind`:
    "zfnet", "torchvision", "timm", "python" (your own code) or "run". `meta`: what was
    loaded (`source`, `weights`, `notes` — lines worth telling the user, such as "random
    init" —, `overrides`; for a run, its checkpoint's meta: `data`, `class_names`, `epoch`,
    ...).
    """

    def __init__(self, model: nn.Module,
                 preprocessing: Preprocessing | Callable[[], Preprocessing],
                 labels: list[str] | None, name: str, kind: str, meta: dict[str, Any]) -> None:
        self.model = model
        self._preprocessing = preprocessing  # a run's is computed from its data when first used
        self.labels = labels
        self.name = name
        self.kind = kind
        self.meta = meta

    @property
    def preprocessing(self) -> Preprocessing:
        """How images become this model's inputs (a run's is read from its dataset once)."""
        if not isinstance(self._preprocessing, Preprocessing):
            self._preprocessing = self._preprocessing()
        return self._preprocessing

    def __repr__(self) -> str:
        return f"Source({self.name!r}, kind={self.kind!r})"


def load_source(
    source: str,
    weights: str | None = None,
    *,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    resize: int | None = None,
    crop: int | None = None,
    device: str | torch.device = "cpu",
    labels: str | Path | Sequence[str] | None = None,
) -> Source:
    """Load the model `source` names (see the module docstring for the forms) with `weights`
    (an enum name or a file; None: random init), its preprocessing overridden by `mean`, `std`
    (per channel in 0..1 units, as model cards, `transforms.Normalize` and `--mean` give them;
    or one value for all), `resize`, `crop`; its class names
    `labels` (a file, see `read_labels`, or the names; one per output of the model), instead
    of the weights' own (not for a zfnet run, which holds its own).

    `device="meta"` builds the architecture only (shapes, no weights: `zfnet models`).
    Every user error is a ValueError (or FileNotFoundError) naming what is wrong and what is
    valid: an unknown source lists the forms, an unknown torchvision model the closest names.
    """
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"empty model source {source!r}; valid: {SOURCE_FORMS}")
    source = source.strip()
    meta_only = torch.device(device).type == "meta"
    if meta_only and weights is not None:
        raise ValueError("device='meta' builds the architecture only: give no weights")
    prefix, colon, rest = source.partition(":")
    if colon and prefix.lower() == "torchvision":
        src = _torchvision(rest.strip(), weights, meta_only)
    elif colon and prefix.lower() == "timm":
        src = _timm(rest.strip(), weights, meta_only)
    elif colon and prefix.lower() in ("hf", "huggingface"):
        src = _hf(rest.strip(), weights, meta_only)
    elif source in _zfnet_names():
        src = _zfnet(source, weights, meta_only)
    elif colon and (near := _misspelt_prefix(prefix)):
        raise ValueError(f"unknown model source {source!r}: did you mean "
                         f"{near}:{rest.strip()}? valid: {SOURCE_FORMS}")
    elif (form := user_code.python_form(source)) is not None:
        src = _python(*form, weights, meta_only)
    elif user_code.is_python_file(source):
        raise _name_the_builder(source)
    elif Path(source).expanduser().exists():
        if weights is not None:
            raise ValueError(f"{source} is a zfnet run: its checkpoint holds its weights; "
                             "--weights goes with a model name (zfnet_small, torchvision:NAME, "
                             "...)")
        src = _run(Path(source).expanduser())
    else:
        raise _unknown(source)
    if labels is not None:
        if src.kind == "run":  # a run, or --weights a checkpoint of one (it was found so)
            what = (f"{source} is a zfnet run" if weights is None else
                    f"--weights {weights} is a checkpoint of a zfnet run")
            names = list(src.labels or ())
            shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
            raise ValueError(f"{what}: it holds its class names{f' ({shown})' if shown else ''}"
                             "; --labels names the classes of weights without them (a "
                             "torchvision:NAME file, FILE.py:NAME's, a state dict)")
        src.labels = _checked_labels(labels, src.meta.get("num_classes"), src.name)
    src.meta["source"] = source
    overrides = _overrides(mean, std, resize, crop)
    src.meta["overrides"] = overrides
    if overrides:
        _override(src, overrides)
        if getattr(src.model, "transform_input", False) and overrides.keys() & {"mean", "std"}:
            src.meta["notes"].append(  # torchvision's GoogLeNet, Inception v3: see _torchvision
                "transform_input=True turns inputs normalised by ImageNet's mean and std into "
                "the model's own: with --mean/--std of your own it turns them as if they were "
                "ImageNet's")
    src.model = src.model.to(device).eval()
    if src.kind in ("python", "hf") or ("crop" in overrides
                                         and src.kind in ("torchvision", "timm")):
        check_input(src)
    return src


def _misspelt_prefix(prefix: str) -> str | None:
    """"torchvision" or "timm" where `prefix` is one of them misspelt (torchvison, tim) and no
    Python module of that name is there to import (your own code's `module:NAME`)."""
    near = difflib.get_close_matches(prefix.strip().lower(), ["torchvision", "timm"], n=1,
                                     cutoff=0.75)
    if not near or not prefix.strip().isidentifier():
        return near[0] if near else None
    try:
        found = importlib.util.find_spec(prefix.strip())
    except (ImportError, ValueError):
        found = None
    return None if found is not None else near[0]


def from_module(model: nn.Module, *, mean: float | Sequence[float] | None = None,
                std: float | Sequence[float] | None = None, resize: int | None = None,
                crop: int | None = None, labels: Sequence[str] | None = None,
                name: str | None = None, processor: Any = None) -> Source:
    """A `Source` of a model object you built in Python, for `load_data`, the analyses
    (`zfnet.pipeline`) and the explorer (`zfnet.explorer.serve`). The preprocessing is its
    `pretrained_cfg` (timm's form), a transformers image `processor`'s, or ImageNet's at
    256/224, as for `FILE.py:NAME`; `mean` and `std` per channel in 0..1 units, as model cards
    and `transforms.Normalize` give them (one value for all channels), `resize` and `crop`
    override it. `labels`: one class name per output (a transformers model's `id2label` by
    default). The model is put in eval mode (not copied, not moved; left as it was if refused)
    and tried on one input of its size; a transformers image classifier is seen through
    `zfnet.hf.logits_view`, which returns its logits and leaves your object as it was."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"from_module takes a torch.nn.Module, not a {type(model).__name__}")
    check_not_scripted(model)
    overrides = _overrides(mean, std, resize, crop)
    label = name or type(model).__name__
    if type(model).__module__.startswith("transformers."):
        from zfnet import hf

        if hf.is_transformers_model(model):
            model = hf.logits_view(model)
            labels = labels if labels is not None else hf.hf_labels(model.config)
    if processor is not None:
        from zfnet import hf

        prep, notes = hf.processor_preprocessing(
            processor, int(getattr(getattr(model, "config", None), "num_channels", 3) or 3),
            label)
    else:
        prep, notes = own_preprocessing(model, label)
    if labels is not None:
        labels = _checked_labels(labels, _outputs(model), label)
    modes = [(m, m.training) for m in model.modules()]
    try:
        src = Source(model.eval(), prep, labels, label, "python",
                     {"source": label, "weights": None, "num_classes": _outputs(model),
                      "notes": notes})
        src.meta["overrides"] = overrides
        try:
            if overrides:
                _override(src, overrides)
            check_input(src)
        except ValueError as e:  # its words name the command's options: here, the arguments
            words = re.sub(r"--(mean|std|resize|crop) ([\d.,]+)", r"\1=\2", str(e))
            raise ValueError(re.sub(r"--(mean|std|resize|crop)\b", r"\1=", words)) from e
    except BaseException:  # refused: your model left in the mode it was in
        for m, training in modes:
            m.training = training
        raise
    return src


def read_labels(path: str | Path) -> list[str]:
    """Class names from a file: a JSON list of names, or a JSON object of output index to name
    (`{"0": "cat", ...}`, as Hugging Face's id2label) or to a class and its words
    (`{"0": ["n01440764", "tench"], ...}`, Keras's imagenet_class_index.json: read as
    "n01440764 tench", a line of Kaggle's LOC_synset_mapping.txt), or text with one name a line
    in output order (timm's class map; blank lines are skipped)."""
    import json

    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"labels file {path} {what}; give a text file of one class "
                                f"name a line, or a JSON list (or {IMAGENET_LABELS}: "
                                "ImageNet's 1000 names)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"labels file {path} is not UTF-8 text ({e.reason})") from e
    if path.suffix.lower() != ".json":
        return [line.strip() for line in text.splitlines() if line.strip()]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"labels file {path} is not valid JSON ({e.msg}, line {e.lineno})"
                         ) from e
    if isinstance(data, dict):
        try:
            index = {int(k): v for k, v in data.items()}
        except ValueError:
            index = {}
        if not index or sorted(index) != list(range(len(index))):
            raise ValueError(f"labels file {path}: its keys must be the outputs 0..N-1, each "
                             "once")
        data = [" ".join(v) if isinstance(v, list) and len(v) == 2
                and all(isinstance(x, str) for x in v) else v
                for v in (index[i] for i in range(len(index)))]
    if not isinstance(data, list) or not all(isinstance(v, str) for v in data):
        raise ValueError(f"labels file {path} must hold a list of names, or an object of "
                         "output index to name (or to a class and its words, as "
                         "imagenet_class_index.json)")
    return data


IMAGENET_LABELS = "imagenet"  # --labels imagenet: ImageNet's 1000 classes, torchvision's names


def imagenet_labels() -> list[str]:
    """The names of ImageNet's 1000 classes in their usual output order (torchvision's, as its
    ImageNet weights give them: 'tench', 'goldfish', ... 'tabby' at 281), no download."""
    from torchvision.models import get_weight

    return list(get_weight("AlexNet_Weights.IMAGENET1K_V1").meta["categories"])


def labels_hint(outputs: int | None) -> str:
    """How to name a model's unnamed classes: a labels file, or ImageNet's names where the
    model has ImageNet's 1000 outputs."""
    return "--labels FILE names them, one a line" + (
        f"; --labels {IMAGENET_LABELS}: ImageNet's 1000" if outputs == 1000 else "")


def _checked_labels(labels: str | Path | Sequence[str], outputs: int | None, name: str
                    ) -> list[str]:
    """`labels` (a file, `IMAGENET_LABELS` where no file is named so, or names) as a list of
    names, one per output of the model."""
    where = ""
    if isinstance(labels, (str, Path)):
        where = f" in {labels}"
        if str(labels) == IMAGENET_LABELS and not Path(labels).exists():
            where = " (ImageNet's)"
            labels = imagenet_labels()
        else:
            labels = read_labels(labels)
    names = [nfc(str(v)) for v in labels]  # as class folders' names are compared
    if not names:
        raise ValueError(f"no class names{where}")
    if outputs is not None and len(names) != outputs:
        raise ValueError(f"{len(names)} class names{where} for {name}, whose last layer has "
                         f"{outputs} outputs: give one name per output, in order")
    return names


# --- architectures to train (`zfnet train --model`) ---

# The std of the paper's 0..255-minus-mean pixels (zfnet.models.convnet.NetConfig.input_std):
# an architecture from elsewhere is trained on them as if they were divided by it.
INPUT_STD = 60.0
TRAINABLE_FORMS = ("a zfnet model name (`zfnet models`), torchvision:NAME, timm:NAME, "
                   "hf:ORG/NAME or hf:DIR (the architecture its config describes), or your "
                   "own FILE.py:NAME or package.module:NAME (a function or class that builds "
                   "the model, given num_classes= when it takes it)")


def architecture_name(model: str) -> str:
    """`model` checked as an architecture `zfnet train` can build, without building it: a
    zfnet model name, `torchvision:NAME`, `timm:NAME`, `hf:ORG/NAME` or `hf:DIR` (its config
    read; a folder's path made absolute), or `FILE.py:NAME` (its path made absolute, so that a
    run finds it from anywhere) or `package.module:NAME`. A ValueError (FileNotFoundError for
    a missing file) names what is wrong."""
    from zfnet.models import list_models

    model = model.strip()
    if model in list_models():
        return model
    prefix, colon, rest = model.partition(":")
    if colon and prefix.lower() == "torchvision":
        names = torchvision_models()
        if rest.strip() not in names:
            close = difflib.get_close_matches(rest.strip(), names, n=5, cutoff=0.5)
            raise ValueError(f"unknown torchvision model {rest.strip()!r}"
                             + (f"; closest: {', '.join(close)}" if close else ""))
        return f"torchvision:{rest.strip()}"
    if colon and prefix.lower() == "timm":
        try:
            import timm
        except ImportError:
            raise ValueError(f"{model} needs timm, which is not installed: pip install timm "
                             "(or pip install 'zfnet[timm]')") from None
        if rest.strip() not in timm.list_models():
            raise ValueError(f"unknown timm model {rest.strip()!r}; valid: any of "
                             "timm.list_models()")
        return f"timm:{rest.strip()}"
    if colon and prefix.lower() in ("hf", "huggingface"):
        from zfnet import hf

        name = rest.strip()
        if not name:
            raise ValueError("hf: names a model: hf:ORG/NAME (a hub id) or hf:DIR (a folder "
                             "save_pretrained wrote)")
        hf.hf_config(name, _hub_offline(name))  # a config there, of an image classifier
        path = Path(name).expanduser()
        return f"hf:{path.resolve()}" if path.is_dir() else f"hf:{name}"
    form = user_code.python_form(model)
    if form is not None:
        target, name = form
        if user_code.is_python_file(target):
            path = Path(target).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist; --model {user_code.FORM}")
            target = str(path.resolve())
        return f"{target}:{name}"
    raise ValueError(f"unknown model {model!r}{_meant(model, list_models())}; "
                     f"valid: {TRAINABLE_FORMS}")


def build_architecture(model: str, num_classes: int, in_channels: int = 3,
                       input_size: int | None = None) -> nn.Module:
    """An untrained `model` (not one of zfnet's: `architecture_name`'s other forms) for
    `num_classes` classes and `in_channels`-channel images (`input_size` px, where the
    architecture fixes it: a Hugging Face transformer's config), initialised by its own code from
    torch's global RNG (the caller seeds it); then its first convolution's weights are
    divided by `INPUT_STD`, as zfnet's models do, for the paper's 0..255-minus-mean pixels
    (`zfnet.train.recipe.param_groups` trains that layer as if they were divided by it).
    A builder of your own is given `num_classes=` when it takes it; the model it builds must
    have that many outputs."""
    prefix, _, rest = model.partition(":")
    if prefix == "torchvision":
        import torchvision

        net = torchvision.models.get_model(rest, **_quiet_init(rest, {"num_classes":
                                                                     num_classes}))
    elif prefix == "timm":
        import timm

        net = timm.create_model(rest, pretrained=False, num_classes=num_classes,
                                in_chans=in_channels)
    elif prefix == "hf":
        from zfnet import hf

        config = hf.hf_config(rest, _hub_offline(rest))[0]
        with hf._quiet():
            net = hf.hf_builder(config, in_channels, input_size)(num_classes)
    else:
        target, name = user_code.python_form(model) or (model, "")
        with user_code.building(target, name, model) as build:
            try:
                net = build(num_classes=num_classes)
            except TypeError:  # a builder without num_classes, or a model object
                net = build()
        outputs = _outputs(net)
        if outputs != num_classes:
            raise ValueError(f"{model} builds a model with {outputs} outputs, and the data has "
                             f"{num_classes} classes: give a builder that takes num_classes= "
                             "(or builds that many)")
    first = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None:
        with torch.no_grad():
            first.weight.div_(INPUT_STD)
    return net


def check_input(src: Source) -> None:
    """Run `src.model` once on an input of its preprocessing's size (zeros, batch 1, no
    gradients; on the meta device, shapes only): a model that cannot take it is one
    ValueError naming the size and the options that change it."""
    prep = src.preprocessing
    param = next(src.model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.dtype.is_floating_point \
        else torch.float32  # a model in float16, bfloat16 or float64 takes its own
    x = torch.zeros(1, prep.in_channels, prep.crop, prep.crop, device=device, dtype=dtype)
    try:
        with torch.no_grad():
            out = src.model(x)
    except NotImplementedError:
        if device.type != "meta":  # an operation the meta device lacks: nothing to say
            raise
        return
    except Exception as e:  # whatever the forward raises means the same here
        if out_of_memory(e):  # an input too large for the machine: not one it cannot take
            raise
        if isinstance(e, TypeError) and "required" in str(e) and "argument" in str(e):
            raise ValueError(
                f"{src.name}'s forward takes more than a batch of images ({_first_line(e)}); "
                "zfnet calls model(images) alone: wrap the model in a module whose forward "
                "takes the images and returns class scores") from e
        raise ValueError(
            f"{src.name} does not take {prep.in_channels}x{prep.crop}x{prep.crop} inputs "
            f"({type(e).__name__}: {_first_line(e)}); give the size it takes with --crop "
            "(and --resize), its channels with --mean/--std (zfnet's commands feed it square "
            "crops; from Python, zfnet.deconvnet.project takes inputs of any HxW)") from e
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        what = (f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor)
                else f"a {type(out).__name__}")
        raise ValueError(
            f"{src.name} returns {what}, not class scores (N, classes): zfnet follows the "
            "class a model predicts; build a module whose forward returns them (flattened, "
            "for a map of scores; for a Hugging Face model, its outputs.logits)")


def load_data(source: Source, spec: str | None = None, *, ten_crop: bool = False,
              strict: bool = False, cache_dir: str | Path | None = None,
              read_train: bool = True) -> DataBundle:
    """The dataset `spec` (default: the one a zfnet run was trained on) as `source`'s inputs;
    `read_train` False for a command that reads its val split alone (`load_dataset`).

    A zfnet run on a named dataset keeps the paper's convention with that dataset's own mean
    image, as before sources existed; everything else (`images:DIR`, any other model) is fitted
    to the model's preprocessing (`load_dataset(..., preprocessing=)`).
    """
    given = spec
    spec = spec or source.meta.get("data")
    if not spec:
        raise ValueError(f"no dataset given for {source.name}: give one with --data, e.g. "
                         "images:DIR (a folder of images), sample-photos (6 built-in photos), "
                         "imagefolder:DIR, synthetic")
    preprocessing = data_preprocessing(source, spec)
    mean_image = None
    if preprocessing is None and source.kind == "run":  # a folder or shards: minus its own
        from zfnet.train.checkpoint import read_mean_image

        mean_image = read_mean_image(source.meta["checkpoint"])
    try:
        bundle = load_dataset(spec, ten_crop=ten_crop, strict=strict, cache_dir=cache_dir,
                              preprocessing=preprocessing, mean_image=mean_image,
                              mean_input=source.meta.get("input_size"),
                              read_train=read_train)
    except FileNotFoundError as e:
        if given:
            raise
        # a path the user did not type: the run's own dataset, moved or on another machine
        raise FileNotFoundError(f"{e} (the dataset {source.name} was trained on, {spec!r}; "
                                "give its new place with --data)") from None
    if preprocessing is None and spec == source.meta.get("data") and \
            not isinstance(source._preprocessing, Preprocessing):
        source._preprocessing = bundle.input_preprocessing  # its mean image, read once
    return bundle


def data_preprocessing(source: Source, spec: str) -> Preprocessing | None:
    """The preprocessing `load_dataset(spec, preprocessing=)` takes for `source`'s inputs: None
    for a zfnet run on a named dataset (the paper's convention with that dataset's own mean
    image), else the source's."""
    from zfnet.train.checkpoint import saved_preprocessing

    if source.kind == "run" and not source.meta["overrides"] and \
            saved_preprocessing(source.meta) is None and parse_spec(spec).name != "images":
        return None
    return source.preprocessing


# --- the forms ---

def _zfnet_names() -> list[str]:
    from zfnet.models import list_models

    return list_models()


def _zfnet(name: str, weights: str | None, meta_only: bool) -> Source:
    """A model of zfnet's registry: random init, a zfnet checkpoint's weights or a state dict."""
    from zfnet.models import create_model

    if weights is not None:
        path = _weights_file(weights, f"{name}'s")
        if (path.parent / "state.json").is_file() and path.name == "model.safetensors":
            src = _run(path)  # a zfnet checkpoint: its run knows the config and the data
            if src.meta.get("model") != name:
                raise ValueError(f"{path} holds the weights of a {src.meta.get('model')!r} run, "
                                 f"not {name!r}: give --model {path.parent}")
            return src
        model = _with_weights(lambda **kw: create_model(name, **kw), path, name)
        notes = []
    else:
        model = _random(lambda: create_model(name), meta_only)
        notes = [] if meta_only else [f"{name}: random init (seed {SEED}); no weights given"]
    cfg = model.config
    c = cfg.in_channels
    mean = tuple(255 * m for m in IMAGENET_MEAN) if c == 3 else (127.5,) * c
    prep = Preprocessing(round(cfg.input_size * PAPER_RATIO), cfg.input_size, mean, (1.0,) * c, c)
    notes.append(f"preprocessing: 0..255 minus ImageNet's mean pixel, {prep.resize}/{prep.crop} "
                 "(zfnet's convention without a run's mean image; --mean/--std/--resize/--crop "
                 "change it)")
    label = f"{name} {weights}" if weights else f"{name} (random init)"
    return Source(model, prep, None, label, "zfnet",
                  {"weights": weights, "num_classes": cfg.num_classes, "notes": notes})


def torchvision_models() -> list[str]:
    """Every torchvision classification model name (`torchvision:NAME`)."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def timm_models() -> list[str]:
    """Every timm architecture name (`timm:NAME`); ValueError saying how to install timm where
    it is not."""
    try:
        import timm
    except ImportError:
        raise ValueError("timm models need timm, which is not installed: pip install timm (or "
                         "pip install 'zfnet[timm]')") from None
    return timm.list_models()


def torchvision_preprocessing(weights: Any) -> Preprocessing:
    """The preprocessing of a torchvision weights enum, from its `transforms()`: resize, crop,
    mean and std (times 255), interpolation."""
    from torchvision.transforms._presets import ImageClassification

    t = weights.transforms()
    if not isinstance(t, ImageClassification):  # every classification weight has these
        raise ValueError(f"{weights} has no image classification transforms")
    return Preprocessing(int(t.resize_size[0]), int(t.crop_size[0]),
                         tuple(255 * m for m in t.mean), tuple(255 * s for s in t.std), 3,
                         interpolation=t.interpolation.value)


def _torchvision(name: str, weights: str | None, meta_only: bool) -> Source:
    import torchvision

    names = torchvision_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        raise ValueError(
            f"unknown torchvision model {name!r}; "
            + (f"closest: {', '.join(close)}; " if close else "")
            + f"valid: any of the {len(names)} that `zfnet models torchvision:` lists")
    build = lambda **kw: torchvision.models.get_model(name, **_quiet_init(name, kw))
    label = f"torchvision:{name}"
    enum = _torchvision_weights(name, weights) if weights is not None else None
    if enum is not None:
        model = _from_hub(name, enum)
        return Source(model, torchvision_preprocessing(enum), list(enum.meta["categories"]),
                      f"{label} {enum.name}", "torchvision",
                      {"weights": enum.name, "num_classes": len(enum.meta["categories"]),
                       "notes": []})
    if weights is not None:
        if name in TRANSFORM_INPUT:  # as torchvision builds it for its own weights
            plain = build
            build = lambda **kw: plain(**{"transform_input": True, **kw})  # noqa: E731
        model = _with_weights(build, _weights_file(weights, f"{label}'s"), label, on_meta=True)
        notes = [f"{label}: built with transform_input=True, as torchvision builds it for its "
                 "ImageNet weights, which a copy fine-tuned from them needs; one trained "
                 "without it: give your model from Python, `zfnet.sources.from_module(model)`"
                 ] if name in TRANSFORM_INPUT else []
    else:
        model = _random(build, meta_only)
        notes = [] if meta_only else [f"{label}: random init (seed {SEED}); no weights given"]
    prep, at = _architecture_preprocessing(name)
    notes.append(f"preprocessing: ImageNet's mean and std at {at} ("
                 + ("a weights file does not say how its model was trained: if yours was "
                    "trained on other inputs, give them with --mean/--std/--resize/--crop)"
                    if weights is not None else
                    "no weights given; --mean/--std/--resize/--crop change it)"))
    return Source(model, prep, None,
                  f"{label} {weights}" if weights else f"{label} (random init)", "torchvision",
                  {"weights": weights, "num_classes": _outputs(model), "notes": notes})


TRANSFORM_INPUT = ("googlenet", "inception_v3")  # torchvision sets it for its weights


def _architecture_preprocessing(name: str) -> tuple[Preprocessing, str]:
    """What a torchvision architecture without its weights (a file, random init) is fed, and
    how the note says it: ImageNet's mean and std at 256/224, torchvision's usual, or where
    torchvision's own weights for it are made at another size (Inception v3's 342/299, an
    EfficientNet-B4's 384/380), at theirs."""
    import torchvision

    try:
        own = torchvision.models.get_model_weights(name).DEFAULT
        prep = torchvision_preprocessing(own)
    except (ValueError, KeyError, AttributeError):  # an architecture without weights
        return Preprocessing.imagenet(), "256/224, torchvision's usual"
    if prep.crop == Preprocessing.imagenet().crop:
        return Preprocessing.imagenet(), "256/224, torchvision's usual"
    return prep, (f"{prep.resize}/{prep.crop} ({prep.interpolation}), the size of "
                  f"torchvision's own {type(own).__name__}.{own.name}")


def _quiet_init(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """GoogLeNet and Inception v3 warn that their slow scipy init will change; a random model
    needs none of it."""
    if name in ("googlenet", "inception_v3"):
        return {"init_weights": False, **kwargs}
    return kwargs


def _torchvision_weights(name: str, weights: str) -> Any:
    """The weights enum member `weights` names (`DEFAULT`, `IMAGENET1K_V1`, or
    `ResNet18_Weights.IMAGENET1K_V1`), or None when it names a file."""
    import torchvision

    if _looks_like_file(weights):
        return None
    enum = torchvision.models.get_model_weights(name)
    key = weights.strip()
    if key.startswith(f"{enum.__name__}."):
        key = key[len(enum.__name__) + 1:]
    if key.upper() in enum.__members__:
        return enum[key.upper()]
    if Path(weights).expanduser().is_file():  # a weights file with an unusual name
        return None
    if Path(weights).expanduser().is_dir():
        raise ValueError(f"--weights {weights} is a folder; give the weights file in it "
                         f"({', '.join(WEIGHTS_SUFFIXES)}) or a weights name: "
                         f"{', '.join(enum.__members__)}")
    raise ValueError(
        f"unknown weights {weights!r} for torchvision:{name}; valid: "
        f"{', '.join(enum.__members__)}, or a weights file ({', '.join(WEIGHTS_SUFFIXES)})")


def hub_file(weights: Any) -> Path:
    """Where torch hub keeps (or would keep) the file of a torchvision weights enum:
    torch.hub.get_dir() / "checkpoints" / basename(url)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(
        urlparse(weights.url).path)


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _hub_offline(name: str | None = None) -> str | None:
    """Why a Hugging Face model is read from the cache alone: ZFNET_OFFLINE=1, or the hub
    cannot be reached (`zfnet.hf.hub_unreachable`: a few seconds, not the client's minute of
    retries); None where the network is tried, or `name` is a folder (nothing to download)."""
    if _offline():
        return f"{OFFLINE_ENV}=1 is set"
    if name is not None and Path(name).expanduser().is_dir():
        return None
    from zfnet.hf import hub_unreachable

    return hub_unreachable()


def _from_hub(name: str, weights: Any) -> nn.Module:
    """torchvision's model `name` with `weights` from the torch hub cache, downloaded there first
    when missing and allowed; a clear error otherwise."""
    import torchvision

    path = hub_file(weights)
    where = (f"download {weights.url} and put it at {path} (torch.hub.get_dir() / "
             "checkpoints; TORCH_HOME moves it)")
    if not path.is_file():
        if _offline():
            raise FileNotFoundError(
                f"torchvision:{name} {weights.name}: {path.name} is not in the torch hub cache "
                f"and {OFFLINE_ENV}=1 forbids downloading it; {where}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            found = torch.hub.HASH_REGEX.search(path.name)
            from zfnet.progress import bars_shown

            torch.hub.download_url_to_file(weights.url, str(path),
                                           found.group(1) if found else None,
                                           progress=bars_shown())  # --quiet: none
        except Exception as e:  # no network, HTTP errors, a bad hash: all mean the same here
            raise FileNotFoundError(
                f"torchvision:{name} {weights.name}: downloading {path.name} failed "
                f"({type(e).__name__}: {e}); {where}") from e
    # torchvision's builders read the file with weights_only=False: check first that it is a
    # plain state dict (the restricted unpickler refuses anything that could run code).
    _read_torch(path)
    try:
        return torchvision.models.get_model(name, weights=weights, progress=False)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, KeyError) as e:
        raise ValueError(f"{path} does not hold torchvision:{name} {weights.name} ("
                         f"{type(e).__name__}: {_first_line(e)}); delete it and {where}") from e


def _python(target: str, name: str, weights: str | None, meta_only: bool) -> Source:
    """Your own code's model (`zfnet.user_code`): imported and built from seed `SEED` (on the
    meta device with `meta_only`), or with the state dict of `weights`."""
    label = f"{target}:{name}"
    with _initialising(meta_only and weights is None), \
            user_code.building(target, name, label) as build:
        if weights is not None:
            model = _with_weights(build, _weights_file(weights, f"{label}'s"), label)
        else:
            model = build()
    notes = [] if meta_only or weights is not None else [
        f"{label}: random init (seed {SEED}); no weights given"]
    prep, how = own_preprocessing(model, label)
    return Source(model, prep, None, f"{label} {weights}" if weights else
                  f"{label} (random init)", "python",
                  {"weights": weights, "num_classes": _outputs(model), "notes": notes + how})


def _name_the_builder(source: str) -> Exception:
    """`--model my_net.py` without `:NAME`: what could be named there."""
    path = Path(source).expanduser()
    if not path.is_file():
        return FileNotFoundError(f"{path} does not exist; --model {user_code.FORM}")
    with user_code.importable(source), _initialising(True):
        module = user_code.import_target(source)
        there = user_code.what_builds(module)
    return ValueError(f"{source}: name what builds the model, as {source}:NAME; {there}")


def own_preprocessing(model: nn.Module, label: str) -> tuple[Preprocessing, list[str]]:
    """A model of your own's preprocessing and the note that says where it came from: its
    `pretrained_cfg` (or `default_cfg`) in timm's form (mean, std, input_size, crop_pct,
    interpolation), else ImageNet's mean and std at 256/224 for its first convolution's
    channels (one channel: their mean)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, dict) and all(k in cfg for k in ("mean", "std", "input_size")):
        prep = data_config_preprocessing(cfg, label)
        return prep, [f"preprocessing: {label}'s pretrained_cfg ({prep.describe()})"]
    c = next((m.in_channels for m in model.modules()
              if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Conv3d))), 3)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if c != 3:
        mean, std = (sum(mean) / 3,) * c, (sum(std) / 3,) * c
    prep = Preprocessing.from_unit_stats(mean, std, 224)
    return prep, [f"preprocessing: ImageNet's mean and std at 256/224 for {c} channel(s) "
                  "(the model gives none; --mean/--std/--resize/--crop change it)"]


def data_config_preprocessing(cfg: dict[str, Any], label: str) -> Preprocessing:
    """Preprocessing from a data config in timm's form: `input_size` (C, H, W), `mean` and
    `std` (0..1), `crop_pct` (default 0.875, timm's), `interpolation`."""
    try:
        c, h, w = (int(v) for v in cfg["input_size"])
        mean, std = tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
        crop_pct = float(cfg.get("crop_pct") or 0.875)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{label}: its data config (input_size, mean, std, crop_pct) is not "
                         f"readable ({_first_line(e)})") from e
    if h != w:
        raise ValueError(f"{label} takes {h}x{w} inputs; only square ones are supported")
    if len(mean) != c or len(std) != c:
        raise ValueError(f"{label}: its config gives {len(mean)} means and {len(std)} stds for "
                         f"{c} channels")
    return Preprocessing.from_unit_stats(mean, std, h, resize=max(h, int(h / crop_pct)),
                                         interpolation=_interpolation(cfg.get("interpolation")))


def _timm(name: str, weights: str | None, meta_only: bool) -> Source:
    try:
        import timm
        import timm.data
    except ImportError:
        raise ValueError(f"timm:{name} needs timm, which is not installed: pip install timm "
                         "(or pip install 'zfnet[timm]')") from None
    arch = name.partition(".")[0]  # "resnet50.a1_in1k": architecture.pretrained tag
    if arch not in timm.list_models():
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        raise ValueError(f"unknown timm model {name!r}; "
                         + (f"closest: {', '.join(close)}; " if close else "")
                         + "valid: any of the timm models that `zfnet models timm:` lists")
    build = lambda **kw: timm.create_model(name, pretrained=False, **kw)
    label = f"timm:{name}"
    if weights is not None and weights.strip().lower() in TIMM_PRETRAINED:
        model, hub_id = _timm_pretrained(timm, name)
        notes = [f"{label}: its pretrained weights, {hub_id} (the Hugging Face cache)"]
    elif weights is not None:
        if not (_looks_like_file(weights) or Path(weights).expanduser().is_file()):
            raise ValueError(f"timm:{name} takes its pretrained weights (--weights pretrained) "
                             f"or a local file ({', '.join(WEIGHTS_SUFFIXES)}), not {weights!r}")
        model = _with_weights(build, _weights_file(weights, f"{label}'s"), label)
        notes = []
    else:
        model = _random(build, meta_only)
        notes = [] if meta_only else [f"{label}: random init (seed {SEED}); no weights given"]
    label = f"{label} {weights}" if weights else f"{label} (random init)"
    cfg = timm.data.resolve_data_config({}, model=model)
    prep = data_config_preprocessing({**cfg, "crop_pct": cfg.get("crop_pct") or 1.0},
                                     f"timm:{name}")
    return Source(model, prep, None, label, "timm",
                  {"weights": weights, "num_classes": _outputs(model), "notes": notes,
                   "data_config": {k: v for k, v in cfg.items()}})


TIMM_PRETRAINED = ("pretrained", "default")  # --weights for timm's own, from the hub


def _timm_pretrained(timm: Any, name: str) -> tuple[nn.Module, str]:
    """timm's model `name` ("resnet50", or "resnet50.a1_in1k" for one of its tags) with its
    pretrained weights, read from the Hugging Face cache (downloaded there first where a network
    is and ZFNET_OFFLINE is not set), and the hub id they came from."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as e:  # "Invalid pretrained tag (x) for resnet18."
        raise ValueError(f"timm:{name}: {str(e).rstrip('.')}; `timm.list_pretrained("
                         f"'{name.partition('.')[0]}*')` lists its tags") from None
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        raise ValueError(f"timm:{name} has no pretrained weights on the Hugging Face hub; give "
                         "a weights file (--weights FILE)")
    from huggingface_hub import hf_hub_download

    from zfnet.hf import hub_quiet

    path, why = None, ""
    offline = _hub_offline()
    with hub_quiet():  # its retry lines: the error below says it all
        for file in ("model.safetensors", "pytorch_model.bin"):
            try:
                path = hf_hub_download(hub_id, file, local_files_only=bool(offline))
                break
            except Exception as e:  # noqa: BLE001  # no network, not cached, no such file
                why = why or _first_line(e)
    if path is None:
        from huggingface_hub import constants

        why = (f"not in the Hugging Face cache, {constants.HF_HUB_CACHE}, and {offline}"
               + (": nothing else is read" if _offline() else "") if offline else why)
        raise FileNotFoundError(
            f"timm:{name}: its pretrained weights ({hub_id}) could not be read ({why}); "
            f"`hf download {hub_id}` where there is a network fills the Hugging Face cache "
            f"(ZFNET_OFFLINE={'1 reads only it' if _offline() else '1 then reads it'}), or give "
            "a weights file (--weights FILE)")
    try:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": path})
    except Exception as e:  # noqa: BLE001  # a damaged or foreign file in the cache
        raise ValueError(f"timm:{name}: its pretrained weights in the Hugging Face cache, {path}, "
                         f"do not load ({_first_line(e)}); remove that file (`hf download "
                         f"{hub_id} --force-download` fetches it again), or give a weights file "
                         "(--weights FILE)") from None
    return model.eval(), hub_id


def _hf(name: str, weights: str | None, meta_only: bool) -> Source:
    """A Hugging Face transformers image classifier (`zfnet.hf`): its saved weights, those of
    the state dict file `weights`, or none (meta_only: the architecture)."""
    from zfnet import hf

    if not name:
        raise ValueError("hf: names a model: hf:ORG/NAME (a hub id) or hf:DIR (a folder "
                         "save_pretrained wrote)")
    label = f"hf:{name}"
    offline = _hub_offline(name)
    config, where = hf.hf_config(name, offline)
    if meta_only:
        with _initialising(True):
            model = hf.hf_builder(config)()
    elif weights is not None:
        model = _with_weights(hf.hf_builder(config), _weights_file(weights, f"{label}'s"), label)
    else:
        model = hf.hf_pretrained(where, offline)
    channels = int(getattr(config, "num_channels", 3) or 3)
    prep, how = hf.hf_preprocessing(where, offline, channels, label)
    outputs = _outputs(model)
    labels = hf.hf_labels(config) if weights is None else None
    return Source(model, prep, labels if labels and len(labels) == outputs else None,
                  f"{label} {weights}" if weights else label, "hf",
                  {"weights": weights, "num_classes": outputs, "notes": how})


def _interpolation(name: str | None) -> str:
    """timm's interpolation names ("bicubic", "bilinear", "random", ...) -> ours."""
    return name if name in ("bilinear", "bicubic", "nearest") else "bilinear"


def _run(path: Path) -> Source:
    """A zfnet run directory, checkpoint directory or model.safetensors."""
    from zfnet.train import load_model

    if path.is_file() and not (path.parent / "state.json").is_file():
        if path.suffix.lower() not in WEIGHTS_SUFFIXES:
            raise ValueError(
                f"{path} is a file, not a model: give a zfnet run directory (`zfnet train "
                "--out`), a model name (`zfnet models` lists them), or a weights file "
                f"({', '.join(WEIGHTS_SUFFIXES)}) with --weights beside its architecture")
        raise ValueError(
            f"{path} is a weights file without a zfnet checkpoint around it; give it with "
            "--weights beside its architecture: --model torchvision:NAME (or a zfnet model "
            "name, timm:NAME) --weights FILE")
    model, meta = load_model(path)

    def preprocessing() -> Preprocessing:
        from zfnet.train.checkpoint import read_mean_image, saved_preprocessing

        own = saved_preprocessing(meta)  # a model fine-tuned from weights takes their inputs
        if own is not None:
            return own
        mean = read_mean_image(meta["checkpoint"])  # kept with it; else its dataset's
        if mean is not None:
            return Preprocessing.from_mean_image(mean, int(meta["input_size"]))
        return load_dataset(meta["data"]).input_preprocessing

    from zfnet.train.checkpoint import checkpoint_label

    label = checkpoint_label(meta.get("epoch"), meta.get("step_in_epoch", 0))
    epoch = f" ({label})" if label else ""  # "(epoch 3)", "(epoch 3 + 4 steps of epoch 4)"
    # the classes as shown (with their words where the run's data gave them: words=FILE)
    labels = list(meta.get("class_labels") or meta.get("class_names") or [])
    return Source(model, preprocessing, labels or None,
                  f"{meta.get('model')} run {meta['checkpoint']}{epoch}", "run",
                  {**meta, "notes": []})


# --- weights files ---

def _looks_like_file(weights: str) -> bool:
    """Whether `weights` is written as a file (a weights suffix or a folder in it), not as a
    weights enum name."""
    return Path(weights).suffix.lower() in WEIGHTS_SUFFIXES or "/" in weights \
        or os.sep in weights


def _weights_file(weights: str, what: str) -> Path:
    if "://" in weights:  # Path() would make https:// https:/
        raise FileNotFoundError(f"weights {weights} is a web address; zfnet reads a weights file "
                                "on this computer: download it, then give its path (or a "
                                "torchvision weights name: DEFAULT)")
    path = Path(weights).expanduser()
    if not path.is_file():
        what_is = "is a directory" if path.is_dir() else "does not exist"
        run = (path / "model.safetensors").is_file() and (path / "state.json").is_file()
        raise FileNotFoundError(f"weights file {path} {what_is}; give a file of {what} weights "
                                f"({', '.join(WEIGHTS_SUFFIXES)})"
                                + (f", or the checkpoint itself: --checkpoint {path}"
                                   if run else ""))
    return path


class WeightsNote(UserWarning):
    """Which of the weights a file holds were taken (a timm checkpoint's, beside its EMA's)."""

    one_line = True  # `zfnet` prints it as one line (zfnet.cli)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a file: `.safetensors`, or a torch pickle (`.pth`, `.pt`, timm's
    `.pth.tar`, ...) read with `weights_only=True` (nothing in it can run code). A dict holding
    it under "state_dict" or "model" is unwrapped (a `WeightsNote` says so where the file holds
    timm's "state_dict_ema" too), and DataParallel's "module." prefix removed."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd: Any = load_file(path)
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"{path} is not a readable .safetensors file ({_first_line(e)})"
                             ) from e
    else:
        sd = _read_torch(path)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            if isinstance(sd.get("state_dict_ema"), dict):  # timm's train.py: both kept
                import warnings

                warnings.warn(
                    f"{path.name} holds '{key}' and 'state_dict_ema' (timm's moving average of "
                    f"the weights): '{key}' is taken, as timm's own loading does; for the "
                    "average, save it alone: torch.save(torch.load(FILE, weights_only=False)"
                    "['state_dict_ema'], 'ema.pth')", WeightsNote, stacklevel=2)
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not sd or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise ValueError(f"{path} does not hold a state dict (a dict of parameter names to "
                         "tensors, or one under 'state_dict' or 'model')")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _read_torch(path: Path) -> Any:
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes); give a file of model.state_dict() (.pth, "
                         ".pt) or a .safetensors file")
    if _torchscript(path):
        raise ValueError(f"{path} is a TorchScript archive (torch.jit.save), not weights; from "
                         "a file you trust, save its weights and give that file: "
                         f"torch.save(torch.jit.load({str(path)!r}).state_dict(), "
                         "'weights.pth')")
    import argparse

    try:
        # timm's train.py checkpoints keep its arguments as an argparse.Namespace: plain data
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = _plain(e).splitlines()
        objects = [ln.strip() for ln in lines if "Unsupported global" in ln]
        if objects:  # a pickle of objects beyond tensors: not loaded, never run
            m = re.search(r"GLOBAL (\S+)", objects[0])
            what = f"a pickled {m[1]}" if m else objects[0]
            raise ValueError(f"{path} holds more than weights ({what}), which "
                             "torch.load(weights_only=True) does not run; save the weights "
                             "alone: torch.save(model.state_dict(), PATH)") from e
        why = next((ln.strip() for ln in lines if "Unsupported" in ln), _first_line(e))
        raise ValueError(f"{path} is not a readable torch file ({why}); give a file of "
                         "model.state_dict() (.pth, .pt) or a .safetensors file") from e
    except FileNotFoundError:
        raise
    except Exception as e:  # text or junk: the unpickler fails any which way
        # (KeyError for a text file's bytes as opcodes, RuntimeError, EOFError, ...)
        why = _first_line(e)
        why = why if len(why) <= 80 else why[:77].rstrip() + "..."  # torch's run to 400
        raise ValueError(f"{path} is not a readable torch file: damaged, cut short or another "
                         f"kind of file ({type(e).__name__}: {why}); give a file of "
                         "model.state_dict() (.pth, .pt) or a .safetensors file") from e


def _torchscript(path: Path) -> bool:
    """Whether `path` is a TorchScript archive: a zip whose record holds `code/` (the model's
    TorchScript) beside its `data.pkl`, which torch.load(weights_only=True) refuses."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(n.split("/")[1:2] == ["code"] for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _mismatch(own: dict[str, torch.Tensor], sd: dict[str, torch.Tensor]
              ) -> tuple[list[str], list[str], list[tuple[str, tuple, tuple]]]:
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in own.items()
              if k in sd and sd[k].shape != v.shape]
    return missing, unexpected, shapes


def _unwrapped(sd: dict[str, torch.Tensor], own: Iterable[str]) -> dict[str, torch.Tensor]:
    """`sd` without the prefix of a module that wrapped the model when it was saved (PyTorch
    Lightning's `model.`, a training script's `net.`): where every key starts with the same
    `X.`, none is a key of the model (`own`) and some are without it; else `sd` as it is."""
    own = set(own)
    heads = {k.partition(".")[0] for k in sd}
    if len(heads) != 1 or not all("." in k for k in sd) or any(k in own for k in sd):
        return sd
    n = len(heads.pop()) + 1
    inner = {k[n:]: v for k, v in sd.items()}
    return inner if any(k in own for k in inner) else sd


def _with_weights(build: Callable[..., nn.Module], path: Path, what: str,
                  on_meta: bool = False) -> nn.Module:
    """`build()` with the state dict in `path` loaded (less a wrapper's prefix: `_unwrapped`);
    rebuilt with the file's number of classes
    (a fine-tuned copy) or without auxiliary classifiers when that is all that differs. Another
    architecture's file is one ValueError naming the first keys and shapes that differ.

    `on_meta` (torchvision's builders): built on the meta device and the file's tensors put in
    place (`_assigned`), not initialised at random first: a VGG-16's 138M random numbers took
    longer than reading its file. Built for real where the builder or the model needs it."""
    sd = read_state_dict(path)
    kwargs: dict[str, Any] = {}
    if on_meta:
        plain = build
        build = lambda **kw: _random(lambda: plain(**kw), meta_only=True)  # noqa: E731
    model = build()
    sd = _unwrapped(sd, model.state_dict().keys())
    first = _mismatch(model.state_dict(), sd)
    refused = ""  # the fix the builder did not take
    for _ in range(3):  # at most: drop the aux classifiers, then take the file's classes
        missing, unexpected, shapes = _mismatch(model.state_dict(), sd)
        fix: dict[str, Any] = {}
        if missing and not unexpected and all(k.split(".")[0] in _AUX for k in missing):
            fix["aux_logits"] = False
        elif shapes and not missing and not unexpected:
            outputs = {f[0] for _, f, m in shapes if len(f) == len(m) and f[1:] == m[1:]}
            if len(outputs) == 1 and all(len(f) == len(m) and f[1:] == m[1:]
                                         for _, f, m in shapes):
                fix["num_classes"] = outputs.pop()
        if not fix or all(kwargs.get(k) == v for k, v in fix.items()):
            break
        kwargs.update(fix)
        try:
            model = build(**kwargs)
        except (TypeError, ValueError):  # the builder takes no such option
            refused = ", ".join(f"{k}={v}" for k, v in fix.items())
            break
    if any(_mismatch(model.state_dict(), sd)):
        missing, unexpected, shapes = first  # what differs from the architecture asked for
        raise ValueError(
            f"{path} holds weights of another architecture than {what}"
            + (f"; missing: {', '.join(missing[:4])}" if missing else "")
            + (f"; unexpected: {', '.join(unexpected[:4])}" if unexpected else "")
            + ("; shape mismatch: " + ", ".join(f"{k} file {f} vs model {m}"
                                                for k, f, m in shapes[:4]) if shapes else "")
            + (f" (the file fits {what}({refused}), which it does not take)" if refused
               else _channels_hint(shapes, missing, unexpected, what)))
    if on_meta and all(t.is_meta for t in model.state_dict().values()):
        assigned = _assigned(model, sd)
        if assigned is not None:
            return assigned
        model = plain(**kwargs)  # a tensor left on the meta device: built for real
    model.load_state_dict(sd)
    return model


def _assigned(model: nn.Module, sd: dict[str, torch.Tensor]) -> nn.Module | None:
    """`model`, built on the meta device, holding `sd`'s tensors (each in its parameter's dtype,
    contiguous); None where a tensor of it is left on the meta device: one the state dict does
    not hold (a non-persistent buffer), or a plain attribute."""
    own = model.state_dict()
    model.load_state_dict({k: v.to(dtype=own[k].dtype).contiguous() for k, v in sd.items()},
                          assign=True)
    for m in model.modules():
        held = [*m._parameters.values(), *m._buffers.values(), *vars(m).values()]
        if any(isinstance(t, torch.Tensor) and t.is_meta for t in held):
            return None
    return model


def _channels_hint(shapes: list, missing: list, unexpected: list, what: str) -> str:
    """Where all that differs is the first convolution's input channels (a model trained on
    grey images, say): how to build it so."""
    if missing or unexpected or len(shapes) != 1:
        return ""
    _, f, m = shapes[0]
    if len(f) != 4 or len(m) != 4 or f[0] != m[0] or f[2:] != m[2:] or f[1] == m[1]:
        return ""
    return (f" (the file's model takes {f[1]}-channel images, {what} {m[1]}-channel ones: "
            f"build it with {f[1]} input channels in your own FILE.py:NAME — timm: "
            f"timm.create_model(NAME, in_chans={f[1]}) — and give --mean/--std for them)")


def _random(build: Callable[[], nn.Module], meta_only: bool) -> nn.Module:
    """`build()` initialised from seed `SEED`, leaving the global RNG as it was; on the meta
    device (no memory, no init) with `meta_only`, where the builder allows it (RegNet's reads
    tensor values while it builds: built for real instead)."""
    if meta_only:
        try:
            with _initialising(True):
                return build()
        except (NotImplementedError, RuntimeError) as e:
            if "meta" not in str(e):
                raise
    with _initialising(False):
        return build()


@contextmanager
def _initialising(meta_only: bool) -> Iterator[None]:
    """Models built in the body: on the meta device with `meta_only`, else from seed `SEED`
    with the global RNG left as it was."""
    if meta_only:
        with torch.device("meta"):
            yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        yield


def _outputs(model: nn.Module) -> int | None:
    """The number of outputs of a model's last Linear (or 1x1 conv classifier) layer."""
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m.out_features
        elif isinstance(m, nn.Conv2d):
            last = m.out_channels
    return last


def unit_stats(what: str, values: float | str | Sequence[float]) -> tuple[float, ...]:
    """A preprocessing `mean` or `std` as numbers in 0..1 units, one per channel or one for all
    (as model cards and `transforms.Normalize` give them; a string: a comma list): a mean in
    [0, 1], a std in (0, 1]. ValueError naming the valid range otherwise (0..255 units too)."""
    try:
        one = (float(values),) if isinstance(values, (int, float)) else \
            tuple(float(v) for v in (values.split(",") if isinstance(values, str) else values))
    except (TypeError, ValueError):
        one = ()
    low_ok = (lambda v: v >= 0) if what == "mean" else (lambda v: v > 0)
    if not one or not all(low_ok(v) and v <= 1 for v in one):  # NaN fails both
        valid = "[0, 1]" if what == "mean" else "(0, 1]"
        scaled = ",".join(f"{v / 255:.4g}" for v in one)
        pixels = (f"; these look like 0..255 units: divided by 255, {scaled}"
                  if one and all(low_ok(v) and v <= 255 for v in one) else "")
        raise ValueError(f"{what} {values!r} must be numbers in {valid}, in 0..1 units as model "
                         "cards give them, one per channel or one for all (e.g. "
                         + ("0.485, 0.456, 0.406)" if what == "mean" else "0.229, 0.224, 0.225)")
                         + pixels)
    return one


def _overrides(mean: float | Sequence[float] | None, std: float | Sequence[float] | None,
               resize: int | None, crop: int | None) -> dict[str, Any]:
    """The preprocessing a caller overrides, `mean` and `std` checked in 0..1 units (one
    number: every channel) and turned into the pixels' 0..255 units."""
    out: dict[str, Any] = {what: tuple(255 * v for v in unit_stats(what, values))
                           for what, values in (("mean", mean), ("std", std))
                           if values is not None}
    out.update({k: v for k, v in (("resize", resize), ("crop", crop)) if v is not None})
    return out


def _override(src: Source, overrides: dict[str, Any]) -> None:
    """Apply --mean/--std/--resize/--crop, checked against what the model takes; the note on
    the preprocessing says what it is now."""
    from zfnet.models import zfnet_config

    crop = overrides.get("crop")
    fixed = getattr(zfnet_config(src.model), "input_size", None)
    if crop is not None and fixed is not None and crop != fixed:
        raise ValueError(f"--crop {crop}: {src.name} takes {fixed} px inputs (its fc layers "
                         "are sized for them)")
    if isinstance(src._preprocessing, Preprocessing):
        src._preprocessing = src._preprocessing.with_overrides(**overrides)
        notes = src.meta.get("notes")
        if notes is not None:
            given = ", ".join(f"--{k}" for k in overrides)
            default = any("ImageNet's mean and std" in n for n in notes) and \
                "mean" not in overrides and "std" not in overrides
            src.meta["notes"] = [n for n in notes if not n.startswith("preprocessing:")] + [
                f"preprocessing: {src._preprocessing.describe()} ({given} given"
                + ("; the mean and std: ImageNet's, a default" if default else "") + ")"]
        return
    # A run's preprocessing is read later; check the values now on a stand-in of its shape
    # (a run of another architecture than zfnet's: the size and channels it was trained on).
    size = fixed or int(src.meta["input_size"])
    c = int(src.meta.get("in_channels") or src.model.config.in_channels)
    Preprocessing(round(size * PAPER_RATIO), size, (0.0,) * c, (1.0,) * c, c) \
        .with_overrides(**overrides)
    lazy = src._preprocessing
    src._preprocessing = lambda: lazy().with_overrides(**overrides)


def _unknown(source: str) -> Exception:
    path = Path(source).expanduser()
    if "/" in source or os.sep in source or path.suffix.lower() in WEIGHTS_SUFFIXES:
        return FileNotFoundError(f"{source} does not exist; a path names a zfnet run "
                                 "directory, checkpoint directory or model.safetensors")
    return ValueError(f"unknown model source {source!r}{_meant(source, _zfnet_names())}; "
                      f"valid: {SOURCE_FORMS}")


def _meant(name: str, zfnet_names: Sequence[str]) -> str:
    """What a bare model name that zfnet does not know may have meant: torchvision's model of
    that name (`resnet18`: torchvision:resnet18), else the closest of `zfnet_names`; "" if
    nothing is close."""
    try:
        if name in torchvision_models():
            return f" (did you mean torchvision:{name}?)"
    except ImportError:
        pass
    close = difflib.get_close_matches(name, list(zfnet_names), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def _plain(e: BaseException) -> str:
    """An exception's message without terminal colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", str(e))


def _first_line(e: BaseException) -> str:
    text = _plain(e).strip().splitlines()
    return text[0] if text else type(e).__name__
