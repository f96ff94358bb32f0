"""Training and evaluation: the paper's recipe (Sec. 3), checkpoints, DDP, metrics."""

from zfnet.train.checkpoint import (
    CheckpointError,
    CheckpointModels,
    find_last,
    list_checkpoints,
    load_model,
    run_checkpoints,
    save_checkpoint,
)
from zfnet.train.config import PAPER_KEEP_EPOCHS, TrainConfig, parse_model_opt
from zfnet.train.evaluation import evaluate_checkpoint, evaluate_source
from zfnet.train.loop import EXIT_INTERRUPTED, train
from zfnet.train.metrics import confusion_matrix, per_class_accuracy, topk_error
from zfnet.train.recipe import NonFiniteLossError, evaluate, resolve_config, train_one_epoch
from zfnet.train.renorm import filter_rms, renormalize_filters

__all__ = [
    "EXIT_INTERRUPTED", "PAPER_KEEP_EPOCHS", "CheckpointError", "NonFiniteLossError",
    "TrainConfig", "confusion_matrix", "evaluate", "evaluate_checkpoint", "evaluate_source",
    "filter_rms",
    "CheckpointModels", "find_last", "list_checkpoints", "load_model", "parse_model_opt",
    "per_class_accuracy", "run_checkpoints",
    "renormalize_filters", "resolve_config", "save_checkpoint", "topk_error", "train",
    "train_one_epoch",
]
