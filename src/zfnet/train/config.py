"""`TrainConfig`: every knob of a training run, defaults = the paper's recipe (Sec. 3).

The resolved configuration is written to `<out>/config.json` and into every checkpoint, so that
a run can be reproduced, resumed and loaded without the command line that started it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from zfnet.models.options import check_model_options, parse_model_option

SCHEDULES = ("plateau", "step", "cosine", "linear", "onecycle", "constant")
AMP_MODES = ("auto", "off", "bf16", "fp16")
# The epochs of the paper's Fig. 4 (feature evolution); checkpoints at these epochs are kept.
PAPER_KEEP_EPOCHS = (1, 2, 5, 10, 20, 30, 40, 64)
# Fields that define what a run computes: `--resume` refuses to continue with other values.
IDENTITY_FIELDS = (
    "data", "model", "model_opts", "batch_size", "seed", "lr", "momentum", "weight_decay",
    "norm_weight_decay", "bias_weight_decay", "nesterov", "schedule", "renorm", "renorm_radius",
    "precondition", "label_smoothing", "random_erasing", "ema", "weights", "mean", "std",
    "resize", "crop", "freeze_to",
)


@dataclass
class TrainConfig:
    """One training run. Defaults: the paper's recipe (Sec. 3) unless a comment says otherwise."""

    data: str  # dataset spec, e.g. "synthetic", "fashion-mnist", "imagefolder:/data/imagenet"
    # a zfnet model name ("zfnet", "zfnet_small"), "torchvision:NAME", "timm:NAME", or your
    # own "/abs/path/my_net.py:NAME" / "package.module:NAME" (zfnet.sources.architecture_name)
    model: str
    out: str  # run directory: config.json, metrics.csv, tb/, checkpoints/
    model_opts: dict[str, Any] = field(default_factory=dict)  # create_model overrides
    # the weights training starts from (fine-tuning, zfnet.train.finetune): a torchvision
    # weights name (DEFAULT), timm's or a Hugging Face model's own ("pretrained"), a weights
    # file or a run fine-tuned before (absolute paths), for zfnet's models any run; None: the
    # model's own init
    weights: str | None = None
    # with weights, on an architecture not zfnet's: its inputs' mean and std per channel (0..1
    # units), resize and crop, where they differ from the weights' own (None: theirs)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: int | None = None
    crop: int | None = None
    # keep this layer and every one before it as the weights have them (not trained, in eval
    # mode); None: every layer trains
    freeze_to: str | None = None
    epochs: int = 70  # the paper trained for 70 epochs
    batch_size: int = 128  # global batch: split evenly over DDP processes
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 0.0  # the paper states none; AlexNet used 5e-4
    # decay of normalisation layers' parameters / of the other biases; None: weight_decay
    norm_weight_decay: float | None = None
    bias_weight_decay: float | None = None
    nesterov: bool = False
    # cross-entropy against (1 - e) one-hot + e uniform (Szegedy et al. 2016); 0 = the paper's
    label_smoothing: float = 0.0
    # probability of blanking a random rectangle of each training crop (Zhong et al. 2017)
    random_erasing: float = 0.0
    # decay of a moving average of the weights updated after every step (zfnet.train.ema); with
    # it on, validation and the checkpoints' weights are the average's. 0 = off (the paper's)
    ema: float = 0.0
    # "plateau": lr x lr_factor when val top-1 error stops improving for `patience` epochs (the
    # paper's hand annealing); "step": x lr_factor every `step_epochs`; "cosine" / "linear": to 0
    # over the run (half a cosine / a straight line) after `warmup_epochs` of linear warm-up;
    # "onecycle": torch's OneCycleLR; "constant".
    schedule: str = "plateau"
    lr_factor: float = 0.1
    patience: int = 3
    step_epochs: int = 30
    warmup_epochs: float = 0.0
    # rescale every conv filter with RMS > renorm_radius after each step; None: on, but off for
    # weights of an architecture not zfnet's (its trained filters are not kept under a radius)
    renorm: bool | None = None
    renorm_radius: float = 0.1
    # layer-1 preconditioning: train conv1 as if the 0..255 inputs were divided by the model's
    # input_std (lr / std^2, radius / std); see zfnet.train.recipe.param_groups. Off = literal.
    # None: on, but off for weights of an architecture not zfnet's (it takes its own inputs)
    precondition: bool | None = None
    seed: int = 0
    device: str = "auto"  # "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1"
    # "auto": bf16 on CUDA (fp16 without bf16) and on CPUs with native bf16, else off;
    # "off", "bf16", "fp16" (CUDA only) force it.
    amp: str = "auto"
    channels_last: bool = True
    # torch.compile the training step (zfnet.train.compiled); checkpoints are the same either
    # way, so it may change on --resume
    compile: bool = False
    # DataLoader worker processes per training process: "auto" = on CUDA the cores of this
    # process's share less one, on a CPU 0 (zfnet.data.loaders)
    workers: int | str = "auto"
    # the input pipeline: "cpu" (workers decode, the device subtracts the mean), "gpu" (the
    # device decodes), "mixed" (a measured share each), "auto" (gpu on CUDA for image files)
    # (zfnet.data.loaders)
    loader: str = "auto"
    keep_epochs: tuple[int, ...] = PAPER_KEEP_EPOCHS
    # validate after every `val_every`-th epoch and after the last; the epochs between get empty
    # val cells. With the plateau schedule, `patience` then counts validations, not epochs.
    val_every: int = 1
    # seconds of wall time the run may take (None: no limit): after every whole epoch, the steps
    # that fit at the speed so far (at most `epochs` worth) are planned and a cosine / linear
    # schedule ends there; see zfnet.train.budget
    time_budget: float | None = None
    data_cache: str | None = None  # where the data layer may cache the mean image (None: its own)
    # a broken image file stops the run with an error naming it, instead of being skipped with
    # a warning and counted per epoch (metrics.csv's `skipped`)
    strict: bool = False
    progress: bool = True  # tqdm bar (rank 0 only)
    tensorboard: bool = True
    resume: bool = False

    def __post_init__(self) -> None:
        self.keep_epochs = tuple(int(e) for e in self.keep_epochs)
        # Checked here, before a run directory is touched; the input size the options need is
        # the dataset's, checked when the model is built for it.
        from zfnet.sources import architecture_name

        self.model = architecture_name(self.model)  # FILE.py:NAME with its absolute path
        self.model_opts = check_train_model(self.model, dict(self.model_opts))
        self._check_start()
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"schedule={self.schedule!r} is not known; valid: {', '.join(SCHEDULES)}"
            )
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp={self.amp!r} is not known; valid: {', '.join(AMP_MODES)}")
        for name in ("epochs", "batch_size", "val_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.random_erasing <= 1.0:
            raise ValueError(f"random_erasing must be in [0, 1], got {self.random_erasing}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1) (0 = off, e.g. 0.999), got {self.ema}")
        for name in ("weight_decay", "norm_weight_decay", "bias_weight_decay"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.patience < 0 or self.step_epochs < 1 or self.warmup_epochs < 0:
            raise ValueError(f"patience must be >= 0, step_epochs >= 1, warmup_epochs >= 0; got "
                             f"{self.patience}, {self.step_epochs}, {self.warmup_epochs}")
        if not 0.0 < self.lr_factor <= 1.0:
            raise ValueError(f"lr_factor must be in (0, 1], got {self.lr_factor}")
        if not 0.0 <= self.momentum < 1.0 or (self.nesterov and self.momentum == 0):
            raise ValueError(f"momentum must be in [0, 1) (> 0 with nesterov), got "
                             f"{self.momentum}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in 0..2**32-1, got {self.seed}")
        if any(e < 1 for e in self.keep_epochs):
            raise ValueError(f"keep_epochs must be epochs >= 1, got {list(self.keep_epochs)}")
        if self.renorm_radius <= 0:
            raise ValueError(f"renorm_radius must be > 0, got {self.renorm_radius}")
        if self.time_budget is not None:
            self.time_budget = float(self.time_budget)  # 60 and 60.0 are one budget on resume
            if self.time_budget <= 0:
                raise ValueError(f"time_budget must be > 0 seconds, got {self.time_budget}")
            if self.schedule == "onecycle":
                raise ValueError("time_budget cannot re-plan the onecycle schedule; use "
                                 "cosine, linear, plateau, step or constant")
        from zfnet.train.distributed import parse_device

        parse_device(self.device)  # the name only: a resumed run may move to another machine
        from zfnet.data.loaders import LOADERS, parse_workers

        self.workers = parse_workers(self.workers)
        if self.loader not in LOADERS:
            raise ValueError(f"loader={self.loader!r} is not known; valid: {', '.join(LOADERS)}")

    def _check_start(self) -> None:
        """The fine-tuning fields: checked, weights files absolute, renorm and precondition's
        defaults resolved (zfnet.train.finetune)."""
        from zfnet.models import list_models

        own = self.model in list_models()
        inputs = [k for k in ("mean", "std", "resize", "crop") if getattr(self, k) is not None]
        if inputs and (self.weights is None or own):
            why = ("zfnet's models take the paper's pixels, 0..255 minus the data's mean image"
                   if own else "a model trained from scratch takes the paper's pixels")
            verb = "sets" if len(inputs) == 1 else "set"
            raise ValueError(f"{', '.join(inputs)} {verb} the inputs of pretrained weights: give "
                             f"weights with them ({why})")
        if self.weights is not None:
            if not str(self.weights).strip():
                raise ValueError("weights is empty: give a weights name (DEFAULT) or a file")
            from zfnet.sources import _looks_like_file, unit_stats

            path = Path(self.weights).expanduser()
            if _looks_like_file(self.weights) or path.exists():
                self.weights = str(path.resolve())  # the run is read from anywhere later
            for name in ("mean", "std"):
                if getattr(self, name) is not None:
                    setattr(self, name, unit_stats(name, getattr(self, name)))
            for name in ("resize", "crop"):
                value = getattr(self, name)
                if value is not None and int(value) < 1:
                    raise ValueError(f"{name} must be >= 1, got {value}")
            if self.precondition and not own:
                raise ValueError("precondition trains the first convolution for the paper's "
                                 "0..255 pixels; pretrained weights of another architecture "
                                 "take their own inputs: leave precondition off")
        if self.freeze_to is not None and not str(self.freeze_to).strip():
            raise ValueError("freeze_to is empty: give a layer name (`zfnet models SOURCE`)")
        mine = self.weights is not None and not own  # another architecture's weights
        if self.renorm is None:
            self.renorm = not mine
        if self.precondition is None:
            self.precondition = not mine

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (config.json, checkpoints)."""
        d = asdict(self)
        for name in ("mean", "std"):
            d[name] = None if d[name] is None else list(d[name])
        d["keep_epochs"] = list(self.keep_epochs)
        d["model_opts"] = {k: list(v) if isinstance(v, tuple) else v
                           for k, v in self.model_opts.items()}
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> TrainConfig:
        """Inverse of `to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in fields(TrainConfig)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(
                f"unknown TrainConfig field(s) {sorted(unknown)}; valid: {sorted(known)}"
            )
        return TrainConfig(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def parse_model_opt(text: str) -> tuple[str, Any]:
    """Parse one `--model-opt KEY=VALUE` into the key and its value, typed and range-checked
    by `zfnet.models.options` (ValueError naming the option and what is valid).

    `fc_width=2048` -> ("fc_width", 2048); `remove=conv3,conv4` -> ("remove", ["conv3", "conv4"]);
    `conv_widths=512,1024,512` -> ("conv_widths", [512, 1024, 512]); `init=paper` -> ("init",
    "paper"); `batchnorm=true` -> ("batchnorm", True).
    """
    return parse_model_option(text)


def check_train_model(model: str, model_opts: dict[str, Any]) -> dict[str, Any]:
    """`model_opts` for `model` (an architecture `zfnet.sources.architecture_name` gave):
    typed and in range (`zfnet.models.options`) for zfnet's models, none for the others;
    sequences as lists, as config.json stores them. Options the data fixes (input_size, ...)
    and the combination with the data's image size are checked when the model is built for
    the data (`zfnet.train.run.build_model`), still before a run writes anything."""
    from zfnet.models import list_models

    if model not in list_models():
        if model_opts:
            raise ValueError(f"model_opts ({', '.join(model_opts)}) set zfnet's model options; "
                             f"{model} takes none: write a function in a FILE.py that builds it "
                             "as you want it, and give --model FILE.py:NAME")
        return {}
    try:
        checked = check_model_options(model_opts)
    except ValueError as e:
        raise ValueError(f"model_opts: {e}") from None
    return {k: list(v) if isinstance(v, tuple) else v for k, v in checked.items()}
