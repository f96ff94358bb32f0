"""Hugging Face transformers image classifiers as model sources: `hf:ORG/NAME` (a hub id, read
from the Hugging Face cache and downloaded there once when missing, unless ZFNET_OFFLINE=1) or
`hf:DIR` (a folder `save_pretrained` wrote: config.json, model.safetensors and, if the model has
one, preprocessor_config.json).

What comes with the model, as `zfnet.sources.Source` needs it:
- the model, its forward made to return the logits (N, classes) that zfnet follows, its
  modules named as transformers names them (`resnet.encoder.stages.0`, `convnext.encoder...`);
- its preprocessing, from its image processor: mean, std, resize, crop and interpolation;
- its class names, from the config's `id2label` (unless they are transformers' `LABEL_k`).
"""

from __future__ import annotations

import copy
import functools
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from zfnet.data.preprocess import Preprocessing

INSTALL = "pip install transformers (or pip install 'zfnet[hf]')"
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL's filters, as processors keep them


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ValueError(f"hf: models need transformers, which is not installed: {INSTALL}"
                         ) from None
    return transformers


@contextmanager
def hub_quiet() -> Iterator[None]:
    """huggingface_hub's warnings off (its "Retrying in 8s" lines without a network: the error
    zfnet raises says what happened); its level as it was after."""
    from huggingface_hub.utils import logging as hub_logging

    level = hub_logging.get_verbosity()
    hub_logging.set_verbosity_error()
    try:
        yield
    finally:
        hub_logging.set_verbosity(level)


@contextmanager
def _quiet(bars: bool = False) -> Iterator[None]:
    """transformers' notes off while zfnet loads a model (it says what it loaded), and its bars
    unless `bars` (a hub id's: a first download takes a while); as they were after."""
    from transformers.utils import logging

    shown, level = logging.is_progress_bar_enabled(), logging.get_verbosity()
    if not bars:
        logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        with hub_quiet():
            yield
    finally:
        logging.set_verbosity(level)
        if shown:
            logging.enable_progress_bar()


PROXIES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


@functools.cache
def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached from this machine (its name not known here,
    no route to it), found in at most `timeout` s, where the hub's client retries for up to a
    minute before it gives up; None where it answers, or behind a proxy (not probed). Asked
    once a process."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(os.environ.get(v) for v in PROXIES):
        return None
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (
        443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        why = e.strerror or (f"no answer in {timeout:g} s" if isinstance(e, TimeoutError)
                             else type(e).__name__)
        return f"{host} cannot be reached ({why})"
    return None


def offline_words(offline: bool | str | None) -> str:
    """Why only the Hugging Face cache is read, from an `offline` argument: its reason where
    one is given (`hub_unreachable`'s), else that ZFNET_OFFLINE=1 is set."""
    return offline if isinstance(offline, str) else "ZFNET_OFFLINE=1 is set"


def hf_config(name: str, offline: bool | str | None) -> tuple[Any, str]:
    """The transformers config of `name` (a folder or a hub id) and where it was read.
    `offline`: read the Hugging Face cache only (why: ZFNET_OFFLINE=1, or a reason in words)."""
    tf = _transformers()
    path = Path(name).expanduser()
    where = str(path) if path.is_dir() else name
    # a path, not a hub id; or a name without ORG/ (a hub image classifier has one)
    if not path.is_dir() and (name.startswith((".", "/", "~")) or "/" not in name):
        raise FileNotFoundError(f"hf:{name}: no such folder; give a folder save_pretrained wrote "
                                "(config.json, model.safetensors) or a hub id, ORG/NAME")
    try:
        with _quiet():
            config = tf.AutoConfig.from_pretrained(where, local_files_only=bool(offline))
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = (f"; {offline_words(offline)}, so only the Hugging Face cache is read, which "
                f"`hf download {name}` fills where there is a network"
                if offline and not path.is_dir() else
                f" (no network here? `hf download {name}` where there is one fills the Hugging "
                "Face cache; ZFNET_OFFLINE=1 then reads it without trying the network)"
                if not path.is_dir() and "connect" in str(e) else "")
        raise FileNotFoundError(f"hf:{name}: cannot read its config ({first}){hint}; give a "
                                "folder save_pretrained wrote (config.json, model.safetensors) "
                                "or a hub id, ORG/NAME") from None
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES as classifiers,
    )
    if config.model_type not in classifiers:
        raise ValueError(f"hf:{name} is a {config.model_type!r} model, which transformers "
                         "has no image classifier for (AutoModelForImageClassification); "
                         "zfnet follows the class a model predicts")
    saved = list(getattr(config, "architectures", None) or [])
    if saved and not any(a.endswith("ForImageClassification") for a in saved):
        head = classifiers[config.model_type]
        raise ValueError(f"hf:{name} holds a {', '.join(saved)}, without a classification "
                         "head (its weights would meet a random one); zfnet follows the class a "
                         f"model predicts: give an image classifier ({head})")
    return config, where


def logits_model(model: nn.Module) -> nn.Module:
    """`model` (a transformers image classifier) with a forward that takes the images alone and
    returns their logits; its class keeps its name, its modules and state dict their names."""
    cls = type(model)

    def forward(self: nn.Module, x: Any) -> Any:
        out = cls.forward(self, pixel_values=x, return_dict=True)
        return getattr(out, "logits", out)  # none: the output, which the load check names

    model.__class__ = type(cls.__name__, (cls,), {"forward": forward,
                                                   "__module__": cls.__module__,
                                                   "__qualname__": cls.__qualname__})
    return model


def is_transformers_model(model: nn.Module) -> bool:
    """Whether `model` is a transformers model (without importing transformers for any other)."""
    if not type(model).__module__.startswith("transformers."):
        return False
    return isinstance(model, _transformers().PreTrainedModel)


def logits_view(model: nn.Module) -> nn.Module:
    """A transformers image classifier object of your own as `logits_model` makes it, leaving it
    as it was: a shallow copy (its modules, parameters and buffers shared, nothing copied)."""
    return logits_model(copy.copy(model))


def hf_builder(config: Any, in_channels: int | None = None,
               input_size: int | None = None) -> Callable[..., nn.Module]:
    """A builder of the architecture of `config` (random init), `num_classes=` another number
    of classes (a fine-tuned copy's weights file, or the classes of the data it is trained on),
    as `zfnet.sources` builders take it. `in_channels`, `input_size`: the images it is to be
    trained on, where the config fixes them (`num_channels`; a transformer's `image_size`)."""
    tf = _transformers()
    changed: dict[str, Any] = {}
    if in_channels is not None and getattr(config, "num_channels", in_channels) != in_channels:
        changed["num_channels"] = in_channels
    if input_size is not None and isinstance(getattr(config, "image_size", None), int) \
            and config.image_size != input_size:
        changed["image_size"] = input_size

    def build(num_classes: int | None = None) -> nn.Module:
        new = dict(changed)
        if num_classes is not None and num_classes != config.num_labels:
            new.update(num_labels=num_classes, id2label=None, label2id=None)
        cfg = type(config).from_dict({**config.to_dict(), **new}) if new else config
        return logits_model(tf.AutoModelForImageClassification.from_config(cfg))
    return build


def hf_pretrained(where: str, offline: bool | str | None) -> nn.Module:
    """The model with the weights saved beside its config."""
    tf = _transformers()
    try:
        with _quiet(bars=not Path(where).is_dir()):  # a hub id: its download's bar shown
            model = tf.AutoModelForImageClassification.from_pretrained(
                where, local_files_only=bool(offline))
    except (OSError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(f"hf:{where}: cannot load its weights ({first})") from None
    return logits_model(model)


def hf_labels(config: Any) -> list[str] | None:
    """The class names of the config's id2label, in output order; None for transformers'
    placeholders (LABEL_0, ...)."""
    names = [str((config.id2label or {}).get(k, "")) for k in range(config.num_labels)]
    if not all(names) or all(n == f"LABEL_{k}" for k, n in enumerate(names)):
        return None
    return names


def _size(size: Any, key: str) -> int | None:
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def hf_preprocessing(where: str, offline: bool | str | None, channels: int, label: str
                     ) -> tuple[Preprocessing, list[str]]:
    """The model's preprocessing from its image processor (preprocessor_config.json) and a note
    saying how; ImageNet's at 256/224 where it has none."""
    tf = _transformers()
    try:
        with _quiet():
            proc = tf.AutoImageProcessor.from_pretrained(where,
                                                         local_files_only=bool(offline))
    except (OSError, ValueError, KeyError):
        prep = Preprocessing.imagenet()
        return prep, [f"preprocessing: {label} has no image processor (preprocessor_config."
                      "json): ImageNet's mean and std at 256/224 (--mean/--std/--resize/--crop "
                      "change it)"]
    return processor_preprocessing(proc, channels, label)


def processor_preprocessing(proc: Any, channels: int, label: str
                            ) -> tuple[Preprocessing, list[str]]:
    """The preprocessing of a transformers image processor object, and the note that says how
    it was read (and where zfnet's differs: a resize that does not keep the image's shape)."""
    mean = tuple(proc.image_mean) if getattr(proc, "do_normalize", True) else (0.0,) * channels
    std = tuple(proc.image_std) if getattr(proc, "do_normalize", True) else (1.0,) * channels
    size, crop_size = getattr(proc, "size", None) or {}, getattr(proc, "crop_size", None) or {}
    short, height, width = (_size(size, k) for k in ("shortest_edge", "height", "width"))
    crop = _size(crop_size, "height") if getattr(proc, "do_center_crop", False) else None
    warped = ""
    if short is not None:
        crop_pct = getattr(proc, "crop_pct", None)
        if crop_pct and short < 384:  # ConvNeXt's: resized to short / crop_pct, then cropped
            resize, crop = int(short / crop_pct), short
        elif crop_pct:  # ConvNeXt's from 384 px: resized to short x short
            resize = crop = short
            warped = (f"; its processor resizes each image to {short}x{short}, not keeping its "
                      f"shape, here the shorter side goes to {short} and the centre is cut")
        else:
            resize, crop = short, crop or short
            if crop == short and not getattr(proc, "do_center_crop", False):
                warped = (f"; its processor keeps the whole image (the shorter side at {short}),"
                          " here the centre square is cut")
    elif height is not None and width is not None:
        if height != width:
            raise ValueError(f"{label} takes {height}x{width} inputs; only square ones are "
                             "supported")
        resize, crop = height, crop or height
        warped = (f"; its processor resizes each image to {height}x{width}, not keeping its "
                  f"shape, here the shorter side goes to {height} and the centre is cut")
    else:
        raise ValueError(f"{label}: its image processor gives no size ({size!r})")
    interpolation = _RESAMPLE.get(int(getattr(proc, "resample", 2) or 2), "bilinear")
    prep = Preprocessing.from_unit_stats(mean, std, crop, resize=max(resize, crop),
                                         interpolation=interpolation)
    return prep, [f"preprocessing: {label}'s image processor ({prep.describe()}){warped}"]
