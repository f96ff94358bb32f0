"""The `zfnet` group: every command a `_Command`, and every error a user can cause one line."""

from __future__ import annotations

import errno
import shlex
import sys
from contextlib import ExitStack
from pathlib import Path

import click

from zfnet import __version__

# Errors a user can cause. The library raises ValueError (CheckpointError, UnknownLayerError,
# BadImageError are ValueErrors) with a message naming the bad value and what is valid, or an
# OSError about a path; either becomes one `Error: ...` line and exit status 1. Anything else is
# a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
               IsADirectoryError, PermissionError)


# errors of the machine a command writes on, told in one line: no space, no quota, read-only
_MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


class _OneLine(click.ClickException):
    """A usage error (a bad option value, a missing or unknown option) as one `Error: ...` line,
    without click's usage lines before it; its exit status kept (2)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


WITHIN = "zfnet.within"  # ctx.meta's key: the contexts a command's options ask it to run in


class _Command(click.Command):
    """A zfnet command: an empty value (`--out ""`, `--data "$UNSET"`) is an error naming the
    option, not a silent default, nor the current directory for a path; so is an option given
    twice where it takes one value but another command takes several (`--model`, `--weights`,
    `--layer`, `--class`: click kept the last silently, where the user meant both), and
    `--out` or `--data` twice. Other options may be repeated, the last winning, as in any
    command line (`bench/fmnist_recipe.sh SEED OUT --lr 0.07` overrides its recipe's)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        takes = {name: p for p in self.params if isinstance(p, click.Option) and not p.is_flag
                 and not p.count for name in p.opts}
        arguments = [p for p in self.params if isinstance(p, click.Argument)]
        given: dict[click.Option, list[str]] = {}
        i = 0
        while i < len(args) and args[i] != "--":
            name, eq, value = args[i].partition("=")
            if name in takes and (value == "" if eq else i + 1 < len(args)
                                  and args[i + 1] == ""):
                p = takes[name]
                raise click.BadParameter(f"the value is empty (a shell variable not set?); "
                                         f"give {p.make_metavar(ctx)}", ctx=ctx, param=p)
            if args[i] == "" and arguments:
                raise click.BadParameter("an empty argument (a shell variable not set?)",
                                         ctx=ctx, param=arguments[0])
            if name in takes and not takes[name].multiple:
                given.setdefault(takes[name], []).append(
                    value if eq else args[i + 1] if i + 1 < len(args) else "")
            i += 2 if name in takes and not eq else 1
        repeated = {p: v for p, v in given.items() if len(v) > 1}
        once = _once_only(ctx) if repeated else set()  # the commands walked only then
        for p, values in repeated.items():
            if once.intersection(p.opts):
                one = ("this command takes one model (`zfnet analyze filters` compares several)"
                       if p.name in ("model", "checkpoint", "run_dir") else "give it once")
                raise click.BadParameter(f"given {len(values)} times ({', '.join(values)}); "
                                         f"{one}", ctx=ctx, param=p)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        _out_apart_from_inputs(self, ctx)
        try:
            with ExitStack() as within:  # what its options ask it to run inside (--quiet ...)
                for context in ctx.meta.get(WITHIN, ()):
                    within.enter_context(context())
                return super().invoke(ctx)
        except ValueError as e:
            from zfnet.graph import RuleUndefinedError

            if isinstance(e, RuleUndefinedError) and not any(
                    "--rule" in p.opts for p in self.params if isinstance(p, click.Option)):
                # a command that computes every rule: --rule gradient is not its to offer
                raise RuleUndefinedError(e.rule, e.what, rule_option=False) from e
            raise


def _out_apart_from_inputs(command: click.Command, ctx: click.Context) -> None:
    """A BadParameter where a command's --out folder is inside a folder it reads every image
    of (IMAGE folders, `--data images:DIR`): its figures would be read as photos next time."""
    out = ctx.params.get("out")
    param = next((p for p in command.params if p.name == "out"), None)
    if not out or not getattr(getattr(param, "type", None), "folder", False):
        return
    given = [ctx.params.get(p.name) or () for p in command.params  # IMAGE... (not --images N)
             if isinstance(p, click.Argument) and p.name == "images"]
    read = [Path(i) for i in (given[0] if given else ()) if Path(i).is_dir()]
    name, _, folder = str(ctx.params.get("data") or "").partition("?")[0].partition(":")
    if name.strip().lower() == "images" and folder:
        read.append(Path(folder))
    target = Path(out).expanduser().resolve()
    for f in read:
        where = f.expanduser().resolve()
        if target == where or where in target.parents:
            raise click.BadParameter(
                f"{out} is {'inside ' * (target != where)}the folder {f}, whose images are "
                "read (recursively): the figures written there would be read as photos the "
                "next time; give a folder outside it", ctx=ctx, param=param)


def _named_source(message: str, argv: list[str]) -> str:
    """`message` with the library's "`zfnet models SOURCE`" naming the model the command line
    gave (--model or --checkpoint), so that the hint runs as written, and without its pointer
    for Python users."""
    from zfnet.models.layers import FROM_PYTHON

    message = message.replace(FROM_PYTHON, "")
    if "zfnet models SOURCE`" not in message:
        return message
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in ("--model", "--checkpoint") and (eq or i + 1 < len(argv)):
            given = value if eq else argv[i + 1]
            return message.replace("zfnet models SOURCE`",
                                   f"zfnet models {shlex.quote(given)}`")
    return message


def _once_only(ctx: click.Context) -> set[str]:
    """The options a repeat of is an error where they take one value: those some zfnet
    command takes several of, and --out and --data."""
    root = ctx.find_root().command
    names = {"--out", "--data"}
    stack = [root]
    while stack:
        command = stack.pop()
        if isinstance(command, click.Group):
            stack += command.commands.values()
        names |= {o for p in command.params if isinstance(p, click.Option) and p.multiple
                  for o in p.opts}
    return names


def _named_in_help(group: click.Group, ctx: click.Context, word: str) -> str | None:
    """The one command of `group` whose short help holds `word` as a word (`sanity`: the
    randomization checks' "Sanity checks: …"; `explorer`: serve's), or None."""
    word = word.lower().rstrip("s")
    found = [name for name in group.list_commands(ctx)
             if (command := group.get_command(ctx, name)) is not None and word in {
                 w.strip(".,:;()'\"").lower().rstrip("s")
                 for w in command.get_short_help_str(limit=200).split()}]
    return found[0] if len(found) == 1 else None


class _Resolving(click.Group):
    """A group whose unknown command, when it is a word of one command's help and not close to
    a name (click's own "Did you mean"), is said with that command."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as e:
            if args and not getattr(e, "possibilities", None) and len(args[0]) >= 4 \
                    and (meant := _named_in_help(self, ctx, args[0])) is not None:
                e.message += f" Did you mean '{ctx.command_path} {meant}'?"
            raise


class _Group(_Resolving):
    """A group of zfnet commands (`visualize`, `analyze`): each one a `_Command`."""

    command_class = _Command


class _Commands(_Resolving):
    """The `zfnet` group: a user error raised by any command becomes a one-line message."""

    command_class = _Command
    group_class = _Group

    def invoke(self, ctx: click.Context):
        argv = [*getattr(ctx, "_protected_args", ()), *ctx.args]  # before click consumes them
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            if _other_rank():  # the same command line: the first process says it for all
                ctx.exit(e.exit_code)
            raise _OneLine(" ".join(e.format_message().split()), e.exit_code) from e
        except USER_ERRORS as e:  # may be one process's own (its share of the data): named
            from zfnet.train.distributed import says_error

            message = _named_source(" ".join(str(e).split()), argv) or type(e).__name__
            if not says_error(message):  # under torchrun: the first process said it for all
                ctx.exit(1)
            rank = _other_rank()
            raise click.ClickException((f"rank {rank}: " if rank else "") + message) from e
        except OSError as e:  # the machine's, not the input's: a full disk, a read-only one
            if e.errno not in _MACHINE_ERRNOS:
                raise
            where = f": {e.filename}" if e.filename else ""
            raise click.ClickException(f"{e.strerror or type(e).__name__}{where} (free space "
                                       "or choose another place to write)") from e
        except (MemoryError, RuntimeError) as e:  # what was asked does not fit the machine
            from zfnet.memory import out_of_memory

            if (asked := out_of_memory(e)) is None:
                raise
            raise click.ClickException(
                f"out of memory ({asked}): ask for less, a smaller --batch-size, --crop or "
                "--resize, --k, or fewer --images") from e
        except KeyboardInterrupt:  # Ctrl-C outside a training step (which saves and exits 130
            # itself): the shell's 130, as training's, not click's "Aborted!" 1
            click.echo("interrupted (SIGINT)", err=True)
            sys.exit(130)


def _other_rank() -> int:
    """Under torchrun, this process's rank where it is not the first; else 0."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    from zfnet.train.distributed import current_rank

    return current_rank()


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zfnet")
def main() -> None:
    """ZFNet (Zeiler & Fergus 2013): train it, evaluate it, look inside it with the deconvnet."""
    from zfnet.memory import keep_freed_memory

    keep_freed_memory()  # no page faults on every step's tensors (zfnet/memory.py)
    _one_line_warnings()
    _interrupt_outside_callbacks()
    _names_printed_as_they_are()


def _names_printed_as_they_are() -> None:
    """A file name that is no UTF-8 (an old archive's; Python holds its odd bytes as surrogate
    escapes) printed on stdout as its own bytes, as ls and find print it: a UTF-8 stdout refused
    it with a UnicodeEncodeError, after the work (`zfnet predict`'s line for it). stderr
    escapes it already (Python's backslashreplace); the files zfnet writes escape it too
    (`zfnet.atomic.printable`)."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="surrogateescape")


def _interrupt_outside_callbacks() -> None:
    """A Ctrl-C that lands in a callback Python calls on its own (a finalizer, a weakref's:
    matplotlib's, while a figure is drawn) cannot end the command there: Python printed
    "Exception ignored in: <function ...>" and its traceback, and went on as if no Ctrl-C had
    come. It is raised again in the command's own code instead (the next line it runs), which
    ends as any interrupted command does; sent as a signal to the main thread, it also ends a
    wait (a sleep, a join) the command is in, as the Ctrl-C would have."""
    import _thread
    import signal
    import threading

    default = sys.unraisablehook
    if getattr(default, "zfnet", False):  # installed by an earlier command in this process
        return

    def interrupt() -> None:
        if callable(signal.getsignal(signal.SIGINT)):  # Python's handler (or zfnet's holder)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        else:  # the default action or ignored: as Python's simulated signal does (nothing)
            _thread.interrupt_main()

    def hook(unraisable) -> None:  # noqa: ANN001
        if isinstance(unraisable.exc_value, KeyboardInterrupt):  # a moment later, from
            # another thread: raised at once, it would land in this hook, ignored again
            later = threading.Timer(0.05, interrupt)
            later.daemon = True  # not waited for where the command ends before
            later.start()
        else:
            default(unraisable)

    hook.zfnet = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _many_workers(message: str) -> str | None:
    """torch's DataLoader warning that it starts more workers than the machine's cores (its
    file and source line, once for each loader), as zfnet's one line; None for another."""
    import re

    m = re.search(r"will create (\d+) worker processes in total\. Our suggested max number "
                  r"of worker in current system is (\d+)", message)
    if m is None:
        return None
    return (f"warning: {m[1]} loader worker processes, more than the {m[2]} this machine "
            "runs well: they may run slowly or stall; give fewer --workers")


def _missing_glyph(message: str) -> str | None:
    """matplotlib's warning that a figure's font has no glyph for a character of its text (a
    class named `café_日本`: a block with its source line for each character, at each draw),
    as one note; None for another warning."""
    import re

    m = re.fullmatch(r"Glyph (\d+) .*missing from font\(s\) (.+?)\.?", message.strip())
    if m is None:
        return None
    return (f"note: the figures' font ({m[2]}) has no glyph for {chr(int(m[1]))!r} (and maybe "
            "other characters of their names): those characters are drawn as boxes")


def _one_line_warnings() -> None:
    """zfnet's own warnings (a skipped broken image, a projection that is the plain gradient, a
    resume that is not exact: each class with `one_line = True`) as one line each, without the
    source line Python's default format adds, and each only once per command (a broken file
    read again for each layer, or for the mean image and then in training, is named once), on a
    line of its own under a progress bar."""
    import warnings

    default = warnings.showwarning
    if getattr(default, "zfnet", False):
        default.shown.clear()  # installed by an earlier command in this process: a new one
        return
    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        many = _many_workers(str(message))  # torch's, about --workers: in zfnet's words
        glyph = _missing_glyph(str(message))  # matplotlib's: once a command, not once a glyph
        if getattr(category, "one_line", False) or many or glyph:
            text = many or glyph or f"{getattr(category, 'prefix', 'warning')}: {message}"
            # a warning about a file (a broken image) once per file, else once per text
            key = "glyph" if glyph else \
                f"file\0{message.file}" if getattr(message, "file", None) else text
            if key not in shown:
                from tqdm import tqdm

                shown.add(key)
                tqdm.write(text, file=sys.stderr)  # a progress bar drawn: cleared first
                sys.stderr.flush()  # in order with what is echoed (click flushes)
        else:
            default(message, category, filename, lineno, file, line)

    show.zfnet = True  # type: ignore[attr-defined]
    show.shown = shown  # type: ignore[attr-defined]
    warnings.showwarning = show
