"""The `lmlab` command line: each subcommand is a plain typed function.

The parser is derived from the function's signature and docstring (summary,
an ``Args:`` section for per-option help, an ``Examples:`` section shown in
``--help``). Command functions live in :mod:`lmlab.commands`, which imports
nothing heavy at module level, so ``lmlab --help`` stays fast.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, get_args, get_origin

from lmlab.errors import LmlabError


def _parse_docstring(fn: Callable[..., Any]) -> tuple[str, str, dict[str, str], str]:
    """Split a Google-style docstring into (summary, body, per-arg help, examples)."""
    doc = inspect.getdoc(fn) or ""
    lines = doc.splitlines()
    summary = lines[0] if lines else ""
    body: list[str] = []
    args: dict[str, str] = {}
    examples: list[str] = []
    section = "body"
    current: str | None = None
    for line in lines[1:]:
        stripped = line.strip()
        if stripped in ("Args:", "Arguments:"):
            section = "args"
            continue
        if stripped == "Examples:":
            section = "examples"
            continue
        if section == "body":
            body.append(line)
        elif section == "args":
            if line.startswith("    ") and not line.startswith("        ") and ":" in stripped:
                current, _, text = stripped.partition(":")
                current = current.split(" ")[0]
                args[current] = text.strip()
            elif current and stripped:
                args[current] += " " + stripped
        else:
            examples.append(line)
    return summary, "\n".join(body).strip(), args, "\n".join(examples).strip("\n")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _add_param(parser: argparse.ArgumentParser, p: inspect.Parameter, tp: Any, help_: str) -> None:
    tp, _ = _unwrap_optional(tp)
    has_default = p.default is not inspect.Parameter.empty
    flag = "--" + p.name.replace("_", "-")
    kwargs: dict[str, Any] = {"help": help_}
    if has_default and p.default is not None and tp is not bool:
        kwargs["help"] = f"{help_} (default: {p.default})"
    if p.kind is inspect.Parameter.POSITIONAL_ONLY or (
        p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and not has_default
    ):
        names = [p.name]
        if get_origin(tp) is list:
            kwargs["nargs"] = "+"
            tp = get_args(tp)[0]
        elif has_default:  # a positional-only parameter with a default: may be left out
            kwargs["nargs"] = "?"
            kwargs["default"] = p.default
    else:
        names = [flag]
        kwargs["dest"] = p.name
        kwargs["default"] = p.default
        if not has_default:
            kwargs["required"] = True
    if tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif get_origin(tp) is Literal:
        kwargs["choices"] = list(get_args(tp))
        kwargs["type"] = type(get_args(tp)[0])
    elif get_origin(tp) is list:
        kwargs["nargs"] = "*"
        kwargs["type"] = get_args(tp)[0]
    else:
        kwargs["type"] = tp
    parser.add_argument(*names, **kwargs)


def add_command(sub: Any, name: str, fn: Callable[..., Any]) -> argparse.ArgumentParser:
    """Add ``fn`` as subcommand ``name``, with options from its signature."""
    summary, body, arg_help, examples = _parse_docstring(fn)
    epilog = f"examples:\n{examples}" if examples else None
    parser = sub.add_parser(
        name,
        help=summary,
        description=(summary + ("\n\n" + body if body else "")),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    hints = typing.get_type_hints(fn)
    for p in inspect.signature(fn).parameters.values():
        _add_param(parser, p, hints.get(p.name, str), arg_help.get(p.name, ""))
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.set_defaults(_fn=fn)
    return parser


def build_parser() -> argparse.ArgumentParser:
    from lmlab import __version__, commands

    parser = argparse.ArgumentParser(
        prog="lmlab",
        description="lmlab: corpus -> tokenizer -> n-gram / word vectors / RNN / GPT / BERT -> "
                    "training -> fine-tuning -> evaluation -> generation.",
        epilog=(
            "examples:\n"
            "  lmlab demo                      # the whole pipeline on the built-in corpus\n"
            "  lmlab corpus wiki.xml.bz2 --out data/corpus\n"
            "  lmlab tokenizer train data/corpus --kind bpe --vocab-size 4096 --out tok.json\n"
            "  lmlab prepare data/corpus --tokenizer tok.json --out data/shards\n"
            "  lmlab pretrain data/shards --preset gpt-mini --max-steps 500 --out runs/mini\n"
            "  lmlab generate runs/mini --prompt 'The history of' --top-p 0.9\n"
            "  lmlab pretrain data/wp-shards --objective mlm --nsp --out runs/bert\n"
            "  lmlab finetune --task classify --train spam.jsonl --model runs/bert "
            "--out runs/spam\n"
            "  lmlab predict runs/spam --texts 'WIN A FREE CRUISE' 'lunch at noon?'\n"
            "  lmlab ngram train data/corpus --order 3 --out wiki3.arpa\n"
            "  lmlab embed train default --method skipgram --out vectors.txt\n"
            "  lmlab pretrain data/shards --preset lstm-small --max-steps 600 --out runs/lstm\n"
            "  lmlab compare                   # n-grams, FFNN, LSTM, GRU, GPT: one table\n"
            "\nRun `lmlab COMMAND --help` for each command's options."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lmlab {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name, fn in commands.COMMANDS.items():
        if isinstance(fn, dict):
            group = sub.add_parser(name, help=fn["__doc__"], description=fn["__doc__"])
            group_sub = group.add_subparsers(title="commands", metavar="COMMAND")
            group.set_defaults(_group=group)
            for sub_name, sub_fn in fn.items():
                if sub_name != "__doc__":
                    add_command(group_sub, sub_name, sub_fn)
        else:
            add_command(sub, name, fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lmlab`` script."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    if not hasattr(ns, "_fn"):
        (getattr(ns, "_group", None) or parser).print_help()
        return 0 if argv is not None or len(sys.argv) > 1 else 1
    kwargs = {k: v for k, v in vars(ns).items() if not k.startswith("_") and k != "debug"}
    debug = ns.debug or os.environ.get("LMLAB_DEBUG") == "1"
    try:
        positional = [kwargs.pop(p.name) for p in inspect.signature(ns._fn).parameters.values()
                      if p.kind is inspect.Parameter.POSITIONAL_ONLY]
        result = ns._fn(*positional, **kwargs)
    except LmlabError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        if debug:
            raise
        print(f"error: {e.filename or e}: no such file or directory", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result) if isinstance(result, int) else 0

