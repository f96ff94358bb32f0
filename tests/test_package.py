"""The package's top level: `import zfnet` and its lazily imported names."""

from __future__ import annotations

import zfnet


def test_the_lazy_names_are_listed_for_tab_completion() -> None:
    """`dir(zfnet)` (a notebook's tab completion) did not list the names imported on first
    use."""
    assert {"create_model", "layer_info", "list_models", "resolve_layer"} <= set(dir(zfnet))
    assert all(callable(getattr(zfnet, n)) for n in zfnet.__all__ if n != "__version__")


def test_the_public_calls_say_what_they_return() -> None:
    """Each analysis' one call (`zfnet.pipeline`) and the top level's functions name their
    return type: `filters`, `evolution`, `correspondence` and the randomisation tests returned
    `Any` (a notebook's user learnt the type by printing it)."""
    import inspect
    import typing

    from zfnet import pipeline

    def hints(f: typing.Callable) -> dict:
        """Annotations resolved with the names the module imports for type checking only."""
        module = inspect.getmodule(f)
        names: dict = {}
        for line in inspect.getsource(module).splitlines():  # its TYPE_CHECKING imports
            line = line.strip()
            if line.startswith("from zfnet.") and " import " in line and "(" not in line:
                exec(line, names)
        return typing.get_type_hints(f, localns=names)

    public = [f for n, f in vars(pipeline).items() if inspect.isfunction(f)
              and not n.startswith("_") and f.__module__ == pipeline.__name__]
    public += [getattr(zfnet, n) for n in zfnet.__all__ if n != "__version__"]
    assert len(public) > 15
    for f in public:
        ret = hints(f).get("return", typing.Any)
        assert ret is not typing.Any, f"{f.__module__}.{f.__qualname__} returns Any"
