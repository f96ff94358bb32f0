"""zfnet: ZFNet (Zeiler & Fergus 2013), its recipe, the deconvnet and the paper's analyses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "create_model", "layer_info", "list_models", "resolve_layer"]

if TYPE_CHECKING:
    from zfnet.models import create_model, layer_info, list_models, resolve_layer


def __getattr__(name: str) -> Any:
    """The public API, imported on first use (PEP 562): `import zfnet`, and so the `zfnet`
    command's start, imports torch only where a command needs it. So `zfnet --help` answers at
    once, and Ctrl-C while torch loads is a command's "interrupted (SIGINT)", not a traceback."""
    if name in ("create_model", "layer_info", "list_models", "resolve_layer"):
        from zfnet import models

        return getattr(models, name)
    raise AttributeError(f"module 'zfnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The lazily imported names too, for tab completion and `dir(zfnet)`."""
    return sorted({*globals(), *__all__})
