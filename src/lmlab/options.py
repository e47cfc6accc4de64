"""What each option accepts, declared once beside its type and checked before any work.

A command's signature says ``batch_size: Count = 16`` or ``out: OutDir``;
the CLI reads these ``Annotated`` markers to write the help ("at least 1")
and, through :func:`check_arguments`, refuses a bad value with one line naming
the flag before a single file is opened or folder made. Config dataclasses use
the same markers: :func:`check_fields` validates a ``config.json`` on load
(types, ``Literal`` choices and ranges), so ``"n_layer": "two"`` or
``"norm": "batchnorm"`` is an error naming the field, not a TypeError deep in
the model.
"""

from __future__ import annotations

import dataclasses
import errno
import inspect
import math
import os
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from lmlab.errors import LmlabError


@dataclass(frozen=True)
class Range:
    """Bounds of a number; ``lo_open``/``hi_open`` exclude the bound itself."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, x: float) -> bool:
        if isinstance(x, float) and not math.isfinite(x):
            return False  # nan and inf are never a sensible rate, size or share
        if self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo):
            return False
        return not (self.hi is not None and (x >= self.hi if self.hi_open else x > self.hi))

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return (f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}"
                    f"{')' if self.hi_open else ']'}")
        if self.lo is not None:
            return f"{'greater than' if self.lo_open else 'at least'} {_num(self.lo)}"
        if self.hi is not None:
            return f"{'less than' if self.hi_open else 'at most'} {_num(self.hi)}"
        return "any number"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass(frozen=True)
class Input:
    """A path that must exist: ``file``, ``dir`` or ``any``; ``words`` are accepted names
    that are not paths (e.g. ``default`` for the built-in corpus)."""

    kind: Literal["file", "dir", "any"] = "any"
    words: tuple[str, ...] = ()


@dataclass(frozen=True)
class Output:
    """A path the command writes: a ``file`` or a ``dir``.

    Unless ``managed`` (the command itself decides about an existing output,
    e.g. ``pretrain --resume``), an existing file or non-empty folder is refused
    without ``--overwrite``.
    """

    kind: Literal["file", "dir"] = "file"
    managed: bool = False


Count = Annotated[int, Range(lo=1)]
NonNegative = Annotated[int, Range(lo=0)]
PositiveFloat = Annotated[float, Range(lo=0, lo_open=True)]
NonNegativeFloat = Annotated[float, Range(lo=0)]
Probability = Annotated[float, Range(0, 1)]
Dropout = Annotated[float, Range(0, 1, hi_open=True)]
Fraction = Annotated[float, Range(0, 1, lo_open=True, hi_open=True)]
# Shares of a data set held out: 0 (none) up to, not including, all of it.
Share = Annotated[float, Range(0, 1, hi_open=True)]

InFile = Annotated[Path, Input("file")]
# The same for config dataclass fields, which keep paths as strings (JSON-saved).
InFileName = Annotated[str, Input("file")]
InDirName = Annotated[str, Input("dir")]
OutDirName = Annotated[str, Output("dir")]
InDir = Annotated[Path, Input("dir")]
InPath = Annotated[Path, Input("any")]
OutFile = Annotated[Path, Output("file")]
OutDir = Annotated[Path, Output("dir")]
RunDir = Annotated[Path, Output("dir", managed=True)]
RunDirName = Annotated[str, Output("dir", managed=True)]


def split_annotation(tp: Any) -> tuple[Any, tuple[Any, ...], bool]:
    """``(base type, markers, optional)`` of a hint such as ``Count | None``."""
    optional = False
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            tp, optional = args[0], True
    if get_origin(tp) is Annotated:
        base, *meta = get_args(tp)
        return base, tuple(meta), optional
    if get_origin(tp) is list:
        inner, meta, _ = split_annotation(get_args(tp)[0])
        return list[inner], meta, optional
    return tp, (), optional


def describe(meta: tuple[Any, ...]) -> str:
    """Help text for a parameter's markers, e.g. "at least 1" ("" when none)."""
    return "; ".join(m.describe() for m in meta if isinstance(m, Range))


def flag_name(name: str, positional: bool) -> str:
    """How a parameter is named on the command line: ``--max-steps``, or ``DATA``."""
    return name.upper() if positional else "--" + name.replace("_", "-")


def check_arguments(fn: Any, kwargs: dict[str, Any]) -> None:
    """Check every argument of a command against its markers; raise LmlabError on the first bad one.

    Ranges first, then inputs (exist, right kind, readable), then outputs (not
    occupied unless ``--overwrite``, writable location). The fields of a config
    dataclass that the command takes are checked as its options.
    """
    params = command_params(fn)
    overwrite = bool(kwargs.get("overwrite")) or bool(kwargs.get("resume"))
    resumable = any(p.name == "resume" for p in params)
    outputs: list[tuple[str, Path, Output]] = []
    for p in params:
        if kwargs.get(p.name) is None:
            continue
        _, meta, _ = split_annotation(p.hint)
        flag = flag_name(p.name, p.positional)
        values = kwargs[p.name] if isinstance(kwargs[p.name], list) else [kwargs[p.name]]
        for m in meta:
            for v in values:
                if isinstance(m, Range) and not m.contains(v):
                    raise LmlabError(f"{flag} must be {m.describe()}, got {v}")
                if isinstance(m, Input):
                    check_input(Path(v), m, flag)
                if isinstance(m, Output):
                    outputs.append((flag, Path(v), m))
    for flag, path, m in outputs:
        check_output(path, m, flag, overwrite=overwrite, resumable=resumable)


def check_input(path: Path, m: Input, flag: str = "") -> None:
    """An input path must exist, be of the declared kind and be readable."""
    if str(path) in m.words:
        return
    if not path.exists():
        raise LmlabError(f"{path}: no such file or directory")
    if m.kind == "file" and path.is_dir():
        raise LmlabError(f"{path}: is a folder; {flag or 'this'} needs a file")
    if m.kind == "dir" and not path.is_dir():
        raise LmlabError(f"{path}: is a file; {flag or 'this'} needs a folder")
    if not os.access(path, os.R_OK):
        raise LmlabError(f"{path}: permission denied (cannot read it)")


def check_output(path: Path, m: Output, flag: str = "", *, overwrite: bool = False,
                 resumable: bool = False) -> None:
    """An output must not be the wrong kind, occupied (without --overwrite), or unwritable."""
    if path.exists():
        if m.kind == "file" and path.is_dir():
            raise LmlabError(f"{path}: is a folder; {flag or 'this'} needs a file name")
        if m.kind == "dir" and not path.is_dir():
            raise LmlabError(f"{path}: is a file; {flag or 'this'} needs a folder")
        occupied = path.is_file() or any(path.iterdir())
        if occupied and not m.managed and not overwrite:
            what = "already exists" if path.is_file() else "already holds files"
            resume = (" (or --resume to continue the run there)"
                      if resumable and (path / "checkpoints").is_dir() else "")
            raise LmlabError(f"{path}: {what}; add --overwrite to replace "
                             f"{'it' if path.is_file() else 'them'}{resume}")
    # The nearest folder that exists is where the output (or its parents) will be made.
    base = path if path.is_dir() else path.parent
    while not base.exists():
        if base.parent == base:
            break
        base = base.parent
    if base.exists() and not base.is_dir():
        raise LmlabError(f"{path}: {base} is a file, not a folder")
    if not _writable(base):
        raise LmlabError(describe_os_error(OSError(
            errno.EROFS if _read_only(base) else errno.EACCES, "", str(base))))


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _writable(path: Path) -> bool:
    return not _read_only(path) and os.access(path, os.W_OK | os.X_OK)


_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or directory",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENOTEMPTY: "folder not empty",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "file name too long",
    errno.EMFILE: "too many open files",
    errno.EIO: "input/output error",
}


def describe_os_error(e: OSError) -> str:
    """One line for a file-system error: the path, then what went wrong in plain words.

    A hidden temporary name of :mod:`lmlab.atomic` is shown as the output it stands for.
    """
    reason = _REASONS.get(e.errno or 0) or e.strerror or str(e)
    where = e.filename if e.filename not in (None, "") else None
    if where is not None:
        where = re.sub(r"(^|/)\.([^/]+)\.(?:partial|tmp|old)-\d+-[0-9a-f]+(?=/|$)", r"\1\2",
                       str(where))
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        reason += " (free some space, or write elsewhere)"
    elif e.errno == errno.EROFS:
        reason += " (choose an output on a writable disk)"
    return f"{where}: {reason}" if where is not None else reason


# --- config dataclasses ----------------------------------------------------------------------

def check_fields(obj: Any, where: str | None = None) -> None:
    """Validate a dataclass instance's fields against their hints: type, choices, range.

    ints are accepted for float fields and made floats; bools are never numbers
    (``"n_layer": true`` is a mistake, not a 1); a path is accepted for a string.
    Errors begin with ``where`` (a file) and the field's name, or without ``where``
    name the field's flag (``--max-steps must be at least 1, got 0``).
    """
    hints = typing.get_type_hints(type(obj), include_extras=True)
    for f in dataclasses.fields(obj):
        if f.name not in hints:
            continue
        value = getattr(obj, f.name)
        base, meta, optional = split_annotation(hints[f.name])
        name = f"{where}: {f.name}" if where is not None else flag_name(f.name, False)
        if value is None:
            if optional or _allows_none(hints[f.name]):
                continue
            raise LmlabError(f"{name} must not be null")
        ok, fixed = _check_type(value, base)
        if not ok:
            raise LmlabError(f"{name} must be {_type_words(base)}, got {value!r}")
        if fixed is not value:
            object.__setattr__(obj, f.name, fixed)
        for m in meta:
            if isinstance(m, Range) and not m.contains(fixed):
                shown = repr(fixed) if where is not None else fixed
                raise LmlabError(f"{name} must be {m.describe()}, got {shown}")


def _allows_none(tp: Any) -> bool:
    return get_origin(tp) in (typing.Union, types.UnionType) and type(None) in get_args(tp)


def _check_type(value: Any, tp: Any) -> tuple[bool, Any]:
    if tp is Any:
        return True, value
    origin = get_origin(tp)
    if origin is Literal:
        return value in get_args(tp) and type(value) in {type(a) for a in get_args(tp)}, value
    if origin in (typing.Union, types.UnionType):
        for arg in get_args(tp):
            ok, fixed = _check_type(value, split_annotation(arg)[0])
            if ok:
                return True, fixed
        return False, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False, value
        return True, float(value)
    if tp is str:
        if isinstance(value, os.PathLike):
            return True, os.fspath(value)
        return isinstance(value, str), value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            return False, value
        args = [a for a in get_args(tp) if a is not Ellipsis]
        if args and not all(_check_type(v, split_annotation(args[0])[0])[0] for v in value):
            return False, value
        return True, value
    if origin is dict:
        return isinstance(value, dict), value
    if isinstance(tp, type):
        return isinstance(value, tp), value
    return True, value


def _type_words(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_words(split_annotation(a)[0]) for a in get_args(tp))
    if get_origin(tp) in (list, tuple):
        return "a list"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def refuse_foreign(folder: Path, own: set[str], command: str) -> None:
    """A command that reruns in its own folder (``demo``, ``compare``) replaces only what it
    made; a folder holding anything else is someone's work, and is refused."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in own)
    if foreign:
        shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise LmlabError(f"{folder}: holds files `lmlab {command}` did not make ({shown}); "
                         f"choose another --out (it replaces only {', '.join(sorted(own))})")


# --- options declared once ---------------------------------------------------------------------

def option(default: Any = dataclasses.MISSING, help: str = "") -> Any:
    """A config field declared once, with its default and its help text; the type hint
    beside it gives the flag's type and range: ``batch_size: Count = option(16, "rows")``.
    A subclass that only changes an inherited setting's default omits the help.

    A command that takes the config dataclass as a parameter gets one flag per field
    (``cli.add_command``), checked like any other option (``check_arguments``).
    """
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Param:
    """One option of a command: a parameter of its function, or a field of the config
    dataclass that the function takes (``config`` is then that class)."""

    name: str
    hint: Any
    default: Any  # inspect.Parameter.empty when required
    positional: bool
    help: str
    config: type | None = None


def command_params(fn: Any, arg_help: dict[str, str] | None = None) -> list[Param]:
    """The options of command ``fn``, a config dataclass parameter expanded into its fields
    (those named in the class's ``positional`` are positional arguments)."""
    hints = typing.get_type_hints(fn, include_extras=True)
    empty = inspect.Parameter.empty
    params: list[Param] = []
    for p in inspect.signature(fn).parameters.values():
        hint = hints.get(p.name, str)
        if dataclasses.is_dataclass(hint):
            field_hints = typing.get_type_hints(hint, include_extras=True)
            positional = getattr(hint, "positional", ())
            # The class's own settings first, in its order; then those it inherits.
            own = list(vars(hint).get("__annotations__", {}))
            for f in sorted(dataclasses.fields(hint),
                            key=lambda f: own.index(f.name) if f.name in own else len(own)):
                if f.init:
                    default = f.default if f.default is not dataclasses.MISSING else empty
                    params.append(Param(f.name, field_hints[f.name], default,
                                        f.name in positional, _field_help(hint, f.name), hint))
            continue
        positional = p.kind is p.POSITIONAL_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD
                                                     and p.default is empty)
        params.append(Param(p.name, hint, p.default, positional, (arg_help or {}).get(p.name, "")))
    return params


def _field_help(cls: type, name: str) -> str:
    """A config field's help: its own, or that of the class it redeclares (a new default
    for an inherited setting keeps the setting's help)."""
    for klass in cls.__mro__:
        if dataclasses.is_dataclass(klass):
            for f in dataclasses.fields(klass):
                if f.name == name and f.metadata.get("help"):
                    return f.metadata["help"]
    return ""


def call_command(fn: Any, kwargs: dict[str, Any]) -> Any:
    """Call ``fn`` with parsed options: the fields of a config dataclass become one instance
    of it (its own checks run then), positional-only parameters go by position."""
    kwargs = dict(kwargs)
    args: list[Any] = []
    hints = typing.get_type_hints(fn, include_extras=True)
    for p in inspect.signature(fn).parameters.values():
        hint = hints.get(p.name, str)
        if dataclasses.is_dataclass(hint):
            value = hint(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(hint)
                            if f.init and f.name in kwargs})
        else:
            value = kwargs.pop(p.name)
        if p.kind is p.POSITIONAL_ONLY:
            args.append(value)
        else:
            kwargs[p.name] = value
    return fn(*args, **kwargs)
