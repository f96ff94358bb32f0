"""Whose classes? A dataset's labels index a model's outputs only when the model was trained on
that dataset's classes. A torchvision ImageNet model shown `synthetic` images has 1000 outputs
for the dataset's 10 classes: its output at the dataset's label 3 is ImageNet's class 3 ("tiger
shark"), not the dataset's "car". Analyses that follow one class (occlusion's p(class) map, the
pointing game, invariance's probability curve) then follow the model's own prediction on the
unaltered image, and name classes by the model's own names where given (else by number). So
do they where the model has as many outputs as the dataset classes, but names them otherwise
(`match_classes`). Where the model's names name every class of the dataset — a fine-tuned model
whose `id2label` or `--labels` orders them otherwise, ImageNet's names on a folder of some of
ImageNet's classes — each class is followed at the output of its name, as `zfnet eval` scores
it (`class_outputs`)."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from zfnet.activations import to_model
from zfnet.models import eval_mode, zfnet_config


def model_outputs(model: nn.Module, x: torch.Tensor) -> int:
    """The number of classes `model` scores: the last dim of its output for one input x
    (C, H, W); zfnet's models say it without running."""
    cfg = zfnet_config(model)
    if cfg is not None and hasattr(cfg, "num_classes"):
        return int(cfg.num_classes)
    with eval_mode(model), torch.inference_mode():
        return int(model(to_model(model, x[None])).shape[-1])


_MATCHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# model -> (a dataset's class names, the output of each by name, or None: other classes)


def label_index(labels: Sequence[str]) -> dict[str, int]:
    """Each class name -> its output (the first, where two share a name); also each first
    word, where every label's is its own (Kaggle's `n01440764 tench, Tinca tinca`)."""
    firsts = [name.split()[0] if name.split() else "" for name in labels]
    names = dict(zip(firsts, range(len(labels)), strict=True)) \
        if len(set(firsts)) == len(firsts) else {}
    names.update({name: k for k, name in reversed(list(enumerate(labels)))})
    return names


def match_classes(model: nn.Module, labels: Sequence[str] | None,
                  class_names: Sequence[str] | None) -> str:
    """How `model`, whose outputs `labels` names, scores a dataset of `class_names`, kept with
    the model for `labels_are_classes` and `class_outputs`: "" (nothing said: no names, or
    the same at every output), "by name" (its names name every class, at other outputs: a
    fine-tuned model's other order, ImageNet's names on some of its classes), or "other"
    (as many outputs as classes, named otherwise)."""
    _MATCHED.pop(model, None)
    if not labels or not class_names:
        return ""
    classes = tuple(class_names)
    index = label_index(labels)
    if all(c in index for c in classes):
        outputs = [index[c] for c in classes]
        if outputs == list(range(len(classes))) and len(labels) == len(classes):
            return ""
        if len(set(outputs)) == len(outputs):  # no two classes at one output
            _MATCHED[model] = (classes, outputs)
            return "by name"
    if len(labels) != len(classes):
        return ""
    _MATCHED[model] = (classes, None)
    return "other"


def _kept(model: nn.Module, bundle: Any) -> tuple[tuple[str, ...], list[int] | None] | None:
    """What `match_classes` kept of `model` for the classes of `bundle`, or None."""
    kept = _MATCHED.get(model)
    ok = kept is not None and kept[0] == tuple(getattr(bundle, "class_names", None) or ())
    return kept if ok else None


def labels_are_classes(model: nn.Module, bundle: Any) -> bool:
    """Whether `bundle`'s labels index `model`'s outputs: the model has exactly as many outputs
    as the dataset has classes (a model trained on it, the usual case for zfnet's runs), unless
    its class names say otherwise (`match_classes`). False for unlabelled data and for a model
    of other classes (see the module doc)."""
    n = int(getattr(bundle, "num_classes", 0) or 0)
    if n < 1:
        return False
    if _kept(model, bundle) is not None:  # named otherwise, or at other outputs
        return False
    val = bundle.val.with_mode("centre") if getattr(bundle.val, "mode", "centre") != "centre" \
        else bundle.val
    return model_outputs(model, val[0][0]) == n


def class_outputs(model: nn.Module, bundle: Any) -> list[int] | None:
    """For each of `bundle`'s classes, the output of `model` that scores it: the class's own
    index where `labels_are_classes`, the output of its name where `match_classes` found it
    so; None where the model's classes are others (the analyses follow its prediction)."""
    kept = _kept(model, bundle)
    if kept is not None:
        return None if kept[1] is None else list(kept[1])
    if labels_are_classes(model, bundle):
        return list(range(int(bundle.num_classes)))
    return None


def class_indices(wanted: Sequence[str], labels: Sequence[str] | None,
                  model_name: str = "the model", outputs: int | None = None) -> list[int]:
    """The outputs of the classes `wanted` names: each a class's index, its name as `labels`
    gives it (case aside), or one of the comma-separated synonyms of a name ("tabby" in
    "tabby, tabby cat"); a value that names none but holds commas, a list of them. A name
    that is no class, or more than one, raises a ValueError saying which are close (for a
    model whose classes have no names, how to name its `outputs`); so does a number past the
    last class (of `labels`, else of `outputs` where given)."""
    lowered = [str(n).strip().lower() for n in labels or ()]
    synonyms: dict[str, list[int]] = {}
    for k, n in enumerate(lowered):
        for word in {n, *(w.strip() for w in n.split(","))}:
            synonyms.setdefault(word, []).append(k)

    def one(value: str) -> list[int] | None:
        v = value.strip()
        if v.isdigit() or v[:1] == "-" and v[1:].isdigit():
            k = int(v)
            count = len(labels) if labels else outputs
            if k < 0 or count and k >= count:
                raise ValueError(f"class {k} is outside {model_name}'s {count} classes "
                                 f"(0 to {count - 1})" if count else
                                 f"class {k}: classes are numbered from 0")
            return [k]
        hits = [k for k, n in enumerate(lowered) if n == v.lower()] or \
            synonyms.get(v.lower(), [])
        if len(hits) > 1:
            raise ValueError(f"class {v!r} names {len(hits)} of {model_name}'s classes: "
                             + ", ".join(f"{labels[k]!r} ({k})" for k in hits)
                             + "; give one by its whole name or its number")
        return hits or None

    out: list[int] = []
    for value in wanted:
        found = one(value)
        if found is None and "," in value:
            parts = [p for p in value.split(",") if p.strip()]
            found = [k for p in parts
                     for k in (one(p) or _unknown(p, labels, model_name, outputs))]
        out += found if found is not None else _unknown(value, labels, model_name, outputs)
    return list(dict.fromkeys(out))


def close_classes(value: str, labels: Sequence[str], n: int = 5) -> list[str]:
    """The class names `value` may have meant, at most `n`: first those (or a synonym of
    which) it is all the words of, or some of the words of ("tabby" for "tabby cat"; "tiger
    cat", "Persian cat" … for "cat"), else whose words it starts ("flower" for "fl"); then
    those spelled like it (difflib)."""
    import re
    from difflib import get_close_matches

    def words(text: str) -> set[str]:
        return set(re.findall(r"\w+", text.lower()))

    typed = words(value)

    def holds(name: str) -> bool:  # the name, or one of its comma-separated synonyms
        return any(typed <= w or w <= typed for w in map(words, [name, *name.split(",")])
                   if w)

    held = [str(c) for c in labels if typed and holds(str(c))]
    if len(typed) == 1 and not held:  # the start of a word: "fl" for "flower"
        (start,) = typed
        held = [str(c) for c in labels if any(w.startswith(start) for w in words(str(c)))]
    lowered = {str(c).lower(): str(c) for c in reversed(labels)}
    spelled = [lowered[c] for c in get_close_matches(value.lower(), list(lowered), n=n,
                                                     cutoff=0.8 if held else 0.6)]
    return list(dict.fromkeys([*held, *spelled]))[:n]


def _unknown(value: str, labels: Sequence[str] | None, model_name: str,
             outputs: int | None) -> list[int]:
    """Raise the ValueError for a class name that names no class of `labels`."""
    from zfnet.sources import labels_hint

    v = value.strip()
    if not labels:
        raise ValueError(f"{model_name}'s classes have no names ({labels_hint(outputs)}); "
                         f"give class {v!r} by its number")
    named = close_classes(v, labels)
    raise ValueError(f"class {v!r} is not one of {model_name}'s {len(labels)} classes"
                     + (f"; did you mean {' or '.join(map(repr, named))}?" if named else
                        f" ({', '.join(map(str, labels[:3]))}{', ...' if len(labels) > 3 else ''}"
                        f"); give a name or a number 0 to {len(labels) - 1}"))
