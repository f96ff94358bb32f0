"""The package's top level: `import zfnet` and its lazily imported names."""

from __future__ import annotations

import zfnet


def test_the_lazy_names_are_listed_for_tab_completion() -> None:
    """`dir(zfnet)` (a notebook's tab completion) did not list the names imported on first
    use."""
    assert {"create_model", "layer_info", "list_models", "resolve_layer"} <= set(dir(zfnet))
    assert all(callable(getattr(zfnet, n)) for n in zfnet.__all__ if n != "__version__")
