"""Model options: every key `create_model(name, **options)` and `--model-opt KEY=VALUE` accept,
with its type and range, checked in this one place.

Values may be Python values (`fc_width=2048`, `remove=("conv3",)`), JSON values (a saved
`config.json`) or the text of a command line (`"2048"`, `"conv3,conv4"`, `"true"`). Booleans are
`true`/`false` only (any case): `1`, `0`, `yes` are refused, so that a typo never silently turns a
layer on. A bad value raises ValueError naming the option and what is valid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

INITS = ("kaiming", "paper")
REMOVABLE = ("conv3", "conv4", "fc6", "fc7")


class _Precise(ValueError):
    """A parser's own message (more precise than "KEY must be ...")."""


@dataclass(frozen=True)
class Option:
    """One model option: what it accepts (for messages and help) and its parser."""

    accepts: str  # e.g. "a positive integer"
    parse: Callable[[Any], Any]  # raw value -> typed value; ValueError when invalid
    help: str


def _integer(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError
    if isinstance(v, str):
        return int(v.strip())
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError
        return int(v)
    if isinstance(v, int):
        return v
    raise ValueError


def _number(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError
    x = float(v.strip()) if isinstance(v, str) else float(v)  # TypeError for other types
    if not math.isfinite(x):
        raise ValueError
    return x


def _int_at_least(low: int) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        n = _integer(v)
        if n < low:
            raise ValueError
        return n
    return parse


def _float_in(low: float, high: float = math.inf, *, low_open: bool = False,
              high_open: bool = False) -> Callable[[Any], float]:
    def parse(v: Any) -> float:
        x = _number(v)
        if x < low or (low_open and x == low) or x > high or (high_open and x == high):
            raise ValueError
        return x
    return parse


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    raise ValueError


def _choice(names: Sequence[str]) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if not isinstance(v, str) or v.strip() not in names:
            raise ValueError
        return v.strip()
    return parse


def _items(v: Any) -> list[Any]:
    """A comma list, one scalar or a sequence -> its items (spaces around commas ignored)."""
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    if isinstance(v, int | float):
        return [v]
    if isinstance(v, Sequence):
        return list(v)
    raise ValueError


def _positive_ints(v: Any) -> tuple[int, ...]:
    out = tuple(_int_at_least(1)(x) for x in _items(v))
    if not out:
        raise ValueError
    return out


def _layer_names(v: Any) -> tuple[str, ...]:
    names = _items(v)
    for name in names:
        if not isinstance(name, str):
            raise ValueError
        if name not in REMOVABLE:  # its own message: which layers can go
            raise _Precise(f"cannot remove layer {name!r}; removable: {', '.join(REMOVABLE)}")
    return tuple(names)


MODEL_OPTIONS: dict[str, Option] = {
    "num_classes": Option("a positive integer", _int_at_least(1), "outputs of fc8"),
    "in_channels": Option("a positive integer", _int_at_least(1), "input channels (3: RGB)"),
    "input_size": Option("a positive integer", _int_at_least(1),
                         "input side in px (large enough for every layer)"),
    "dropout": Option("a number in [0, 1)", _float_in(0, 1, high_open=True),
                      "dropout on fc6/fc7 (0.5)"),
    "pool_kernel": Option("a positive integer", _int_at_least(1), "max-pool window (3)"),
    "pool_stride": Option("a positive integer", _int_at_least(1), "max-pool stride (2)"),
    "pool_ceil_mode": Option("true or false", _bool, "pools round their size up"),
    "lrn_size": Option("a positive integer", _int_at_least(1), "maps in each LRN window (5)"),
    "lrn_alpha": Option("a number >= 0", _float_in(0), "LRN alpha"),
    "lrn_beta": Option("a number >= 0", _float_in(0), "LRN beta"),
    "lrn_k": Option("a number > 0", _float_in(0, low_open=True), "LRN k"),
    "batchnorm": Option("true or false", _bool, "BatchNorm after every conv, no LRN"),
    "init": Option(f"one of {', '.join(INITS)}", _choice(INITS), "weight initialisation"),
    "input_std": Option("a number > 0", _float_in(0, low_open=True),
                        "pixel std conv1's kaiming init divides by (60)"),
    "conv_widths": Option("comma-separated integers >= 1", _positive_ints,
                          "maps of conv3-5 (3 values) or conv1-5 (5 values)"),
    "fc_width": Option("a positive integer", _int_at_least(1), "width of fc6 and fc7"),
    "remove": Option(f"comma-separated layers among {', '.join(REMOVABLE)}", _layer_names,
                     "layers to drop (Table 3)"),
    "strides": Option("comma-separated integers >= 1", _positive_ints,
                      "stride of each conv layer, in order"),
}
# Sequences are phrased "KEY needs ..." (what the model's number of layers asks for follows).
_NEEDS = ("conv_widths", "strides")


def check_model_option(key: str, value: Any) -> Any:
    """The typed value of option `key`; ValueError naming the option and what is valid."""
    if key not in MODEL_OPTIONS:
        raise ValueError(f"unknown model option {key!r}; valid: {', '.join(sorted(MODEL_OPTIONS))}")
    option = MODEL_OPTIONS[key]
    try:
        return option.parse(value)
    except _Precise as e:  # a plain ValueError for the caller: the class is this module's own
        raise ValueError(str(e)) from None
    except (TypeError, ValueError):
        verb = "needs" if key in _NEEDS else "must be"
        raise ValueError(f"{key} {verb} {option.accepts}, got {value!r}") from None


def check_model_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Every option checked and typed (sequences as tuples); unknown keys list the valid ones."""
    unknown = sorted(set(options) - set(MODEL_OPTIONS))
    if unknown:
        raise ValueError(f"unknown model option(s) {unknown}; valid: "
                         f"{', '.join(sorted(MODEL_OPTIONS))}")
    return {k: check_model_option(k, v) for k, v in options.items()}


def parse_model_option(text: str) -> tuple[str, Any]:
    """Parse one `KEY=VALUE` (a `--model-opt`) into the key and its typed value.

    `fc_width=2048` -> ("fc_width", 2048); `remove=conv3,conv4` -> ("remove", ["conv3",
    "conv4"]); `batchnorm=true` -> ("batchnorm", True). Sequences come back as lists (as JSON
    stores them).
    """
    if "=" not in text:
        raise ValueError(f"model option {text!r} is not KEY=VALUE (e.g. fc_width=2048)")
    key, value = (s.strip() for s in text.split("=", 1))
    if not key:
        raise ValueError(f"model option {text!r} has an empty key (e.g. fc_width=2048)")
    typed = check_model_option(key, value)
    return key, list(typed) if isinstance(typed, tuple) else typed
