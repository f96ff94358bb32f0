"""A model from the user's own Python code: `--model my_net.py:build` or `my_pkg.nets:Net`.

The part before the last colon is a Python file (`.py`) or an importable module (found from the
current folder, as `python -m` finds it); the part after it names what builds the model there —
a function or a class called without arguments, or a module object built at import. Importing
runs the file's code, as `python my_net.py` would (its `if __name__ == "__main__":` block
excepted). While it is imported and built, the file's folder (or, for a module, the current
folder) is first on `sys.path`, so that its own imports of files beside it work.

Every mistake is one `ValueError` (or `FileNotFoundError`) naming it: a file that does not exist,
a module that is not found, code that fails on import or when building (its exception and the
line of the user's file it came from), a name that is not there (with the names that are), a
builder that returns something other than an `nn.Module`.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
FORM = "FILE.py:NAME or package.module:NAME (a function or class that builds the model)"


def python_form(source: str) -> tuple[str, str] | None:
    """(file or module, name) when `source` is written `FILE.py:NAME` or `module.path:NAME`;
    else None. (`torchvision:NAME` and `timm:NAME` are taken before this is asked.)"""
    target, colon, name = source.rpartition(":")
    target, name = target.strip(), name.strip()
    if not colon or not target or not _NAME.fullmatch(name):
        return None
    if target.lower().endswith(".py") or _NAME.fullmatch(target):
        return target, name
    return None


def is_python_file(source: str) -> bool:
    """Whether `source` names a Python file without the `:NAME` of what builds the model."""
    return source.strip().lower().endswith(".py")


@contextmanager
def importable(target: str) -> Iterator[None]:
    """`target`'s folder (a file's) or the current folder (a module's) first on `sys.path`
    while the body runs: the user's code imports what lies beside it, as under `python`."""
    folder = str(Path(target).expanduser().resolve().parent) if is_python_file(target) \
        else str(Path.cwd())
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


@contextmanager
def building(target: str, name: str, label: str) -> Iterator[Callable[..., nn.Module]]:
    """The `builder` of `name` in the file or module `target`, imported afresh; the body calls
    it while `target`'s folder is still on `sys.path` (`importable`)."""
    with importable(target):
        module = import_target(target)
        obj = attribute(module, name, target)
        path = Path(target).expanduser() if is_python_file(target) else \
            Path(module.__file__ or target)
        yield builder(obj, label, path)


def import_target(target: str) -> ModuleType:
    """Import the file or module `target` (inside `importable(target)`); a file is imported
    afresh each time, under a name of its own that no installed package uses."""
    if is_python_file(target):
        path = Path(target).expanduser()
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "does not exist"
            raise FileNotFoundError(f"{path} {what}; --model {FORM}")
        name = "_zfnet_user_model_" + re.sub(r"\W", "_", path.stem)
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ValueError(f"{path} cannot be imported as Python code")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look their classes up there
        try:
            spec.loader.exec_module(module)
        except BaseException as e:
            sys.modules.pop(name, None)
            raise _failed(f"importing {path}", e, path) from e
        return module
    try:
        found = importlib.util.find_spec(target)
    except (ImportError, ValueError):  # a parent package that is not there
        found = None
    if found is None:
        raise ValueError(f"no module {target!r} to import: run zfnet in the folder that holds "
                         f"it, pip install its package, or give its file as FILE.py:NAME")
    try:
        return importlib.import_module(target)
    except BaseException as e:
        raise _failed(f"importing {target}", e, Path(found.origin or target)) from e


def attribute(module: ModuleType, name: str, target: str) -> Any:
    """`module.name` (dots go into it); a missing name lists what builds models there."""
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            close = difflib.get_close_matches(name, candidates(module), n=3, cutoff=0.6)
            raise ValueError(
                f"{target} has no {name!r}"
                + (f" (did you mean {' or '.join(close)}?)" if close else "")
                + f"; {what_builds(module)}")
        obj = getattr(obj, part)
    return obj


def what_builds(module: ModuleType) -> str:
    """What builds a model in `module`, for a message: the `candidates` called without
    arguments, and apart those that need some (a block's `Block(c)`) — the same words where a
    name is missing and where none is given."""
    found = candidates(module)
    parts = [n for n in found if needs_arguments(getattr(module, n))]
    ready = [n for n in found if n not in parts]
    if not found:
        return "it defines no nn.Module class, model object or function"
    return ((f"what builds a model there: {', '.join(ready)}" if ready else
             "none of its classes and functions builds one without arguments")
            + (f" ({', '.join(parts)} need{'s' * (len(parts) == 1)} arguments: parts of a "
               "model, or wrap them in a function that builds it)" if parts else ""))


def candidates(module: ModuleType) -> list[str]:
    """The names in `module` that can build a model: its own nn.Module classes and functions,
    and model objects."""
    out = []
    for key, value in vars(module).items():
        if key.startswith("_"):
            continue
        own = getattr(value, "__module__", None) == module.__name__
        if isinstance(value, nn.Module) or (own and (
                inspect.isfunction(value)
                or (inspect.isclass(value) and issubclass(value, nn.Module)))):
            out.append(key)
    return out


def needs_arguments(obj: Any) -> bool:
    """Whether calling `obj` needs arguments it has no default for (a block's `Block(c)`):
    not what builds a model alone. `num_classes` does not count: zfnet gives it."""
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):  # a builtin, a module object: nothing to tell
        return False
    return any(p.default is p.empty and p.name != "num_classes" and p.kind in (
        p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params)


def builder(obj: Any, label: str, path: Path | None) -> Callable[..., nn.Module]:
    """A `build(**options)` for `obj`: a module object is itself (it takes no options); a
    function or class is called. An option the builder does not take is a `TypeError` (the
    caller then tries without it); any other failure is a `ValueError` naming it."""
    if isinstance(obj, nn.Module):
        def given(**options: Any) -> nn.Module:
            if options:
                raise TypeError(f"{label} is a built model: it takes no options")
            return obj

        return given
    if not callable(obj):
        raise ValueError(f"{label} is of type {type(obj).__name__}, not what builds a model: "
                         "give a function or class that returns a torch.nn.Module, or a module "
                         "object")

    def build(**options: Any) -> nn.Module:
        try:
            model = obj(**options)
        except TypeError:
            if options:
                raise
            raise _failed(f"{label}()", sys.exc_info()[1], path,
                          "; it must build the model without arguments: give a function "
                          "that calls it with them") from None
        except BaseException as e:
            raise _failed(f"{label}()", e, path) from e
        if not isinstance(model, nn.Module):
            raise ValueError(f"{label}() returned a value of type {type(model).__name__}, "
                             "not a torch.nn.Module")
        if isinstance(model, torch.jit.ScriptModule):
            raise ValueError(f"{label}() returned a TorchScript module, which takes none of "
                             "the hooks zfnet runs on; build the model in Python there and "
                             "load the scripted one's weights into it: "
                             "model.load_state_dict(torch.jit.load(PATH).state_dict())")
        return model

    return build


def _failed(what: str, e: BaseException | None, path: Path | None, hint: str = ""
            ) -> ValueError:
    """One line for an exception the user's code raised: what failed, the exception's type and
    first line, and the line of the user's file it was raised from."""
    if isinstance(e, KeyboardInterrupt):
        raise e
    if isinstance(e, SystemExit):
        return ValueError(f"{what} exited (SystemExit: {e.code}): a script's command-line code "
                          "belongs under if __name__ == \"__main__\":")
    text = " ".join(str(e).split()) if e is not None else ""
    where = ""
    if isinstance(e, SyntaxError) and e.filename:
        where = f" at {Path(e.filename).name}:{e.lineno}"
        text = e.msg
    elif e is not None and path is not None:
        frames = [f for f in traceback.extract_tb(e.__traceback__)
                  if Path(f.filename).resolve().parent == path.resolve().parent]
        if frames:
            where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}"
    kind = type(e).__name__ if e is not None else "error"
    return ValueError(f"{what} failed ({kind}: {text or '-'}){where}{hint}")
