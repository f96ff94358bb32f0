"""Checkpoints: safetensors + JSON, written atomically, loaded without executing anything.

Layout of a run directory::

    <run>/config.json                    the resolved TrainConfig
    <run>/metrics.csv, <run>/tb/         logs
    <run>/checkpoints/epoch_0005/        after 5 complete epochs
    <run>/checkpoints/epoch_0005_step_000120/   interrupted (SIGTERM) 120 steps into epoch 6
    <run>/checkpoints/last.json          {"checkpoint": "epoch_0005"}: the newest good one

A checkpoint directory holds `model.safetensors` (the weights), `train_state.safetensors`
(optimizer buffers, RNG states), `mean_image.safetensors` (the mean image its inputs are minus,
paper Sec. 3: the model's preprocessing, whatever data it is later given) and `state.json`
(everything else: model name and NetConfig, data spec, class names, epoch and step,
TrainConfig, metrics history, and the JSON half of the optimizer, scheduler and RNG state).
Nothing is pickled, so loading never runs code from the file.

Atomicity: a checkpoint is written into a hidden temporary directory, every file fsynced, then
renamed into place; `last.json` is replaced atomically afterwards, and only then are checkpoints
that are no longer wanted deleted. A kill at any moment leaves the previous checkpoint and the
pointer to it intact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from zfnet import atomic
from zfnet.data.preprocess import Preprocessing

FORMAT = "zfnet-checkpoint/1"
WEIGHTS = "model.safetensors"
TRAIN_STATE = "train_state.safetensors"
STATE = "state.json"
POINTER = "last.json"
MEAN_IMAGE = "mean_image.safetensors"
_NAME = re.compile(r"^epoch_(\d{4,})(?:_step_(\d{6,}))?$")


class CheckpointError(ValueError):
    """A path that is not a usable checkpoint; the message names the file and what was expected."""


# --- encoding arbitrary state (optimizer, scheduler, RNG) as JSON + tensors, without pickle ---

def encode_state(obj: Any, tensors: dict[str, torch.Tensor], path: str = "s") -> Any:
    """Return a JSON-ready copy of `obj`; tensors and arrays are moved into `tensors` and
    replaced by references. Tuples and dicts with non-string keys are tagged so that
    `decode_state` restores them exactly."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().clone().contiguous()
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):
        tensors[path] = torch.from_numpy(obj.astype(np.int64) if obj.dtype.kind in "ui" else obj)
        return {"__ndarray__": path, "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: encode_state(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        return {"__dict__": [[encode_state(k, tensors, f"{path}.k{i}"),
                              encode_state(v, tensors, f"{path}.v{i}")]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_state(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode_state(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {path} in a checkpoint")


def decode_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `encode_state`."""
    if isinstance(obj, list):
        return [decode_state(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy().astype(obj["dtype"])
    if "__tuple__" in obj:
        return tuple(decode_state(v, tensors) for v in obj["__tuple__"])
    if "__dict__" in obj:
        return {decode_state(k, tensors): decode_state(v, tensors) for k, v in obj["__dict__"]}
    return {k: decode_state(v, tensors) for k, v in obj.items()}


# --- atomic writing ---

def _fsync(path: Path) -> None:
    """Flush a file or directory to disk (directories: so that a rename inside survives)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` by `text` atomically and durably: a uniquely named temp file, fsync,
    rename, fsync the directory (`zfnet.atomic`)."""
    atomic.write_text_atomic(path, text, durable=True)


def checkpoint_label(epoch: int | None, step_in_epoch: int = 0) -> str:
    """A checkpoint's weights in words: "epoch 2", or "epoch 2 + 9 steps of epoch 3" for one
    saved mid-epoch (a run stopped there); "" where the epoch is not known."""
    if epoch is None:
        return ""
    steps = f"{step_in_epoch} step{'s' if step_in_epoch != 1 else ''}"
    return f"epoch {epoch}" + (f" + {steps} of epoch {epoch + 1}" if step_in_epoch else "")


def checkpoint_name(epoch: int, step_in_epoch: int = 0) -> str:
    """`epoch_0005` after 5 complete epochs; `epoch_0005_step_000120` 120 steps into the 6th."""
    return f"epoch_{epoch:04d}" + (f"_step_{step_in_epoch:06d}" if step_in_epoch else "")


def save_checkpoint(
    root: str | Path,
    name: str,
    model: nn.Module,
    meta: dict[str, Any],
    train_state: dict[str, Any] | None = None,
    keep: set[str] | None = None,
    mean_image: torch.Tensor | None = None,
) -> Path:
    """Write checkpoint `root/name` atomically and point `root/last.json` at it.

    `meta` is JSON-ready (model, model_config, data, class_names, epoch, train_config, …);
    `train_state` may hold tensors/arrays (optimizer, scheduler, RNG) and is split into
    JSON + safetensors; `mean_image` (C, F, F), where the inputs are minus one, beside them.
    Afterwards every other checkpoint in `root` whose name is not in `keep` is
    deleted (None: delete nothing). Returns the checkpoint directory.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    weights = {k: v.detach().cpu().contiguous() for k, v in _bare(model).state_dict().items()}
    save_file(weights, tmp / WEIGHTS, metadata={"format": FORMAT, "model": str(meta["model"])})
    _fsync(tmp / WEIGHTS)
    tensors: dict[str, torch.Tensor] = {}
    encoded = encode_state(train_state or {}, tensors)
    save_file(tensors, tmp / TRAIN_STATE, metadata={"format": FORMAT})
    _fsync(tmp / TRAIN_STATE)
    if mean_image is not None:
        save_file({"mean": mean_image.detach().cpu().to(torch.float32).contiguous()},
                  tmp / MEAN_IMAGE, metadata={"format": FORMAT})
        _fsync(tmp / MEAN_IMAGE)
    # state.json last: its presence marks a complete directory even before the rename.
    with open(tmp / STATE, "w") as f:
        json.dump({"format": FORMAT, **meta, "train_state": encoded}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync(tmp)
    final = root / name
    old = root / f".{name}.old-{os.getpid()}"
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync(root)
    write_text_atomic(root / POINTER, json.dumps({"checkpoint": name}) + "\n")
    if old.exists():
        shutil.rmtree(old)
    if keep is not None:
        for other in _complete(root):
            if other.name != name and other.name not in keep:
                shutil.rmtree(other, ignore_errors=True)
    return final


def saved_preprocessing(meta: dict[str, Any] | None) -> Preprocessing | None:
    """The inputs of a run's model where they are its own (a model of another architecture
    fine-tuned from its weights: their resize, crop, mean and std), from a checkpoint's meta;
    None for the paper's pixels (minus the run's mean image) or no meta."""
    saved = (meta or {}).get("preprocessing")
    return Preprocessing.from_dict(saved) if saved else None


def read_mean_image(checkpoint: str | Path) -> torch.Tensor | None:
    """The mean image (C, F, F) the inputs of the run's model in `checkpoint` (a checkpoint
    directory) are minus, where it was saved with it (runs from before it was kept: None, and
    their dataset gives it)."""
    path = Path(checkpoint) / MEAN_IMAGE
    if not path.is_file():
        return None
    try:
        mean = load_file(path)["mean"]
    except Exception as e:  # noqa: BLE001  # truncated, not safetensors, no "mean": all one
        raise CheckpointError(f"{path} is damaged ({type(e).__name__}): copy the checkpoint "
                              "again, or remove that file to take the mean of the run's "
                              "dataset") from None
    if mean.ndim != 3 or mean.shape[1] != mean.shape[2]:
        raise CheckpointError(f"{path} holds a tensor of shape {tuple(mean.shape)}, not a "
                              "mean image (C, F, F)")
    return mean


def remove_stale_temporaries(root: str | Path) -> None:
    """Delete half-written checkpoint directories left by a killed process."""
    root = Path(root)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)


def _bare(model: nn.Module) -> nn.Module:
    """The model inside a DDP / compile wrapper."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return getattr(model, "_orig_mod", model)


# --- finding checkpoints ---

def _checkpoint_root(run_dir: Path) -> Path:
    return run_dir if (run_dir / POINTER).exists() or run_dir.name == "checkpoints" \
        else run_dir / "checkpoints"


def _complete(root: Path) -> list[Path]:
    """Complete checkpoint directories in `root`, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir() and (p / STATE).is_file() and (p / WEIGHTS).is_file():
            found.append(((int(m[1]), int(m[2] or 0)), p))
    return [p for _, p in sorted(found)]


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """End-of-epoch checkpoints of a run as (epoch, directory), by epoch (for Fig. 4).

    `run_dir` is a run directory or its `checkpoints/` folder; interrupted mid-epoch checkpoints
    are not listed. An empty list when the run has none yet.
    """
    root = _checkpoint_root(Path(run_dir))
    out = []
    for p in _complete(root):
        m = _NAME.match(p.name)
        if m and m[2] is None:
            out.append((int(m[1]), p))
    return out


def has_checkpoint(run_dir: str | Path) -> bool:
    """Does the run directory hold at least one complete checkpoint?"""
    return bool(_complete(_checkpoint_root(Path(run_dir))))


def find_last(run_dir: str | Path) -> Path:
    """The newest good checkpoint of a run: the one `last.json` names, else the newest complete."""
    run_dir = Path(run_dir)
    root = _checkpoint_root(run_dir)
    try:
        name = json.loads((root / POINTER).read_text())["checkpoint"]
        # Only a checkpoint's own name: a pointer to "../elsewhere" is damaged, not followed.
        if _NAME.match(name) and (root / name / STATE).is_file() and \
                (root / name / WEIGHTS).is_file():
            return root / name
    except (OSError, ValueError, KeyError, TypeError):
        pass  # a missing or damaged pointer: fall back to scanning
    complete = _complete(root)
    if not complete:
        raise FileNotFoundError(
            f"no checkpoint in {root}: expected directories like epoch_0001/ holding "
            f"{WEIGHTS} and {STATE} (written by `zfnet train`)"
        )
    return complete[-1]


def resolve_checkpoint(path: str | Path) -> Path:
    """A run dir, a checkpoint dir or its weights file -> the checkpoint directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"{path} does not exist; expected a run directory, a checkpoint directory or its "
            f"{WEIGHTS}"
        )
    if path.is_file():
        if path.name != WEIGHTS and path.suffix != ".safetensors":
            raise CheckpointError(
                f"{path} is not a checkpoint: expected a run directory, a checkpoint directory "
                f"or its {WEIGHTS}"
            )
        return path.parent
    if (path / STATE).exists() or (path / WEIGHTS).exists():
        return path
    try:
        return find_last(path)
    except FileNotFoundError as e:
        raise CheckpointError(
            f"{path} is neither a checkpoint directory (with {WEIGHTS} and {STATE}) nor a run "
            f"directory with checkpoints/"
        ) from e


# --- reading ---

def read_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    """The parsed `state.json` of a checkpoint directory (train_state still encoded)."""
    f = Path(ckpt_dir) / STATE
    try:
        meta = json.loads(f.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{f} is missing: not a complete zfnet checkpoint") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f} is corrupt (not valid JSON: {e}){_earlier(f.parent)}"
                              ) from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(
            f"{f} is not a zfnet checkpoint: format {found!r}, expected {FORMAT!r}"
        )
    return meta


def _earlier(ckpt_dir: Path) -> str:
    """For the message about a damaged checkpoint of a run: the newest earlier complete one, to
    use instead ("" when there is none)."""
    before = [p for p in _complete(ckpt_dir.parent)
              if p != ckpt_dir and p.name < ckpt_dir.name]
    if not before:
        return ""
    return (f"; the run's newest earlier checkpoint is {before[-1]}: give it as --checkpoint, "
            f"or move {ckpt_dir.name} out of {ckpt_dir.parent} to --resume from it")


def read_weights(ckpt_dir: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in `model.safetensors` (safetensors: no code is executed)."""
    f = Path(ckpt_dir) / WEIGHTS
    try:
        return load_file(f)
    except FileNotFoundError as e:
        raise CheckpointError(f"{f} is missing: not a complete zfnet checkpoint") from e
    except Exception as e:  # safetensors raises its own error type for damaged files
        raise CheckpointError(f"{f} is corrupt or not a safetensors file: {e}"
                              f"{_earlier(f.parent)}") from e


def read_train_state(ckpt_dir: str | Path, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Optimizer / scheduler / RNG state saved with the checkpoint, decoded."""
    ckpt_dir = Path(ckpt_dir)
    meta = meta if meta is not None else read_meta(ckpt_dir)
    f = ckpt_dir / TRAIN_STATE
    try:
        tensors = load_file(f)
    except Exception as e:
        raise CheckpointError(f"{f} is missing or corrupt: {e}{_earlier(ckpt_dir)}") from e
    return decode_state(meta.get("train_state", {}), tensors)


def build_model(meta: dict[str, Any]) -> nn.Module:
    """The (untrained) model a checkpoint's meta describes."""
    from zfnet.models import ConvNet, NetConfig, create_model, list_models

    cfg = meta.get("model_config") or {}
    if "convs" in cfg:
        return ConvNet(NetConfig.from_dict(cfg))
    if meta["model"] in list_models():
        return create_model(meta["model"], num_classes=meta.get("num_classes"),
                            **meta.get("model_opts", {}))
    from zfnet.sources import build_architecture  # torchvision's, timm's, your own

    try:
        return build_architecture(meta["model"], int(meta["num_classes"]),
                                  int(meta.get("in_channels") or 3),
                                  int(meta["input_size"]) if meta.get("input_size") else None)
    except (ValueError, FileNotFoundError) as e:
        raise CheckpointError(f"the run's model {meta['model']} cannot be built again: {e}"
                              ) from e


def load_weights(model: nn.Module, ckpt_dir: str | Path) -> None:
    """Load a checkpoint's weights into `model`; a mismatch is an error naming the file and what
    differs (missing/unexpected keys, shapes)."""
    f = Path(ckpt_dir) / WEIGHTS
    sd = read_weights(ckpt_dir)
    target = _bare(model)
    own = target.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(sd) & set(own)) if sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{f} holds weights of a different model than this {type(target).__name__}"
            + (f"; missing: {missing[:5]}" if missing else "")
            + (f"; unexpected: {unexpected[:5]}" if unexpected else "")
            + (f"; shape mismatch: {shapes[:5]}" if shapes else "")
        )
    target.load_state_dict(sd, strict=True)


def load_model(
    path: str | Path, model: str | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a trained model: `path` is a run directory (-> its last checkpoint), a checkpoint
    directory or its `model.safetensors`.

    Returns the model in eval mode on `device` and the checkpoint's meta: "model" (name),
    "model_config" (NetConfig dict), "data" (spec), "class_names", "epoch", "train_config",
    "metrics", "history", "checkpoint" (the directory). With `model` given, a checkpoint of
    another model is an error.
    """
    ckpt_dir = resolve_checkpoint(path)
    meta = read_meta(ckpt_dir)
    if model is not None and meta.get("model") != model:
        raise CheckpointError(
            f"{ckpt_dir / STATE} is a checkpoint of model {meta.get('model')!r}, expected {model!r}"
        )
    net = build_model(meta)
    load_weights(net, ckpt_dir)
    meta = {k: v for k, v in meta.items() if k != "train_state"}
    meta["checkpoint"] = str(ckpt_dir)
    return net.to(device).eval(), meta


def run_checkpoints(checkpoint: str | Path) -> list[tuple[int, Path]]:
    """The end-of-epoch checkpoints a zfnet run kept, [(epoch, directory)] by epoch, up to the
    epoch of `checkpoint` (a checkpoint directory of the run, as `Source.meta["checkpoint"]`
    names it): the epochs whose evolution leads to the model shown. Empty when it lies in no
    run's checkpoints/ folder."""
    ckpt = Path(checkpoint)
    epoch = read_meta(ckpt).get("epoch")
    kept = list_checkpoints(ckpt.parent)
    return [(e, p) for e, p in kept if epoch is None or e <= int(epoch)]


class CheckpointModels(Sequence[tuple[int, nn.Module]]):
    """[(epoch, model)] of checkpoint directories, each model loaded when indexed (on `device`),
    so that a run with many kept epochs never holds more than one or two in memory
    (`feature_evolution` reads each once)."""

    def __init__(self, checkpoints: Sequence[tuple[int, str | Path]],
                 device: str | torch.device = "cpu") -> None:
        self.checkpoints = [(int(e), Path(p)) for e, p in checkpoints]
        self.device = device

    def __len__(self) -> int:
        return len(self.checkpoints)

    def __getitem__(self, i: int) -> tuple[int, nn.Module]:  # type: ignore[override]
        epoch, path = self.checkpoints[i]
        return epoch, load_model(path, device=self.device)[0]
