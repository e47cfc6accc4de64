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
import typing
from collections.abc import Callable
from typing import Any, Literal, get_args, get_origin

from lmlab.errors import LmlabError
from lmlab.options import (
    Param,
    call_command,
    check_arguments,
    command_params,
    describe,
    describe_os_error,
    flag_name,
    split_annotation,
)


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


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one ``error:`` line like lmlab's own."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _add_param(parser: argparse.ArgumentParser, p: Param) -> None:
    tp, meta, _ = split_annotation(p.hint)
    has_default = p.default is not inspect.Parameter.empty
    notes = [describe(meta)] if describe(meta) else []
    if has_default and p.default is not None and tp is not bool:
        notes.append(f"default: {p.default}")
    kwargs: dict[str, Any] = {"help": f"{p.help} ({'; '.join(notes)})" if notes else p.help}
    if p.positional:
        names = [p.name]
        if get_origin(tp) is list:
            kwargs["nargs"] = "+"
            tp = get_args(tp)[0]
        elif has_default:  # a positional parameter with a default: may be left out
            kwargs["nargs"] = "?"
            kwargs["default"] = p.default
    else:
        names = [flag_name(p.name, False)]
        kwargs["dest"] = p.name
        kwargs["default"] = None if not has_default else p.default
        if not has_default:
            kwargs["required"] = True
    if tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif get_origin(tp) is Literal:
        kwargs["choices"] = list(get_args(tp))
        kwargs["type"] = type(get_args(tp)[0])
    elif get_origin(tp) is list:
        kwargs["nargs"] = "*"
        inner = get_args(tp)[0]
        if get_origin(inner) is Literal:  # e.g. --metric bleu chrf
            kwargs["choices"] = list(get_args(inner))
            inner = type(get_args(inner)[0])
        kwargs["type"] = inner
    else:
        kwargs["type"] = tp
    parser.add_argument(*names, **kwargs)


def add_command(sub: Any, name: str, fn: Callable[..., Any]) -> argparse.ArgumentParser:
    """Add ``fn`` as subcommand ``name``, with options from its signature (and from the
    fields of a config dataclass it takes, each declared once with its help)."""
    summary, body, arg_help, examples = _parse_docstring(fn)
    epilog = f"examples:\n{examples}" if examples else None
    parser = sub.add_parser(
        name,
        help=summary,
        description=(summary + ("\n\n" + body if body else "")),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for p in command_params(fn, arg_help):
        _add_param(parser, p)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.set_defaults(_fn=fn)
    return parser


def build_parser() -> argparse.ArgumentParser:
    from lmlab import __version__, commands

    parser = _Parser(
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
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    for name, fn in commands.COMMANDS.items():
        if isinstance(fn, dict):
            group = sub.add_parser(name, help=fn["__doc__"], description=fn["__doc__"])
            group_sub = group.add_subparsers(title="commands", metavar="COMMAND",
                                             parser_class=_Parser)
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
        # Every value is checked against its declared range, input and output before any work.
        check_arguments(ns._fn, kwargs)
        result = call_command(ns._fn, kwargs)
    except LmlabError as e:
        if debug:
            raise
        return _fail(str(e))
    except OSError as e:  # read-only, disk full, permission: the path and the reason
        if debug:
            raise
        return _fail(describe_os_error(e))
    except UnicodeDecodeError as e:
        if debug:
            raise
        return _fail(f"input is not UTF-8 text ({e.reason} at byte {e.start}); convert it "
                     "to UTF-8 (e.g. iconv -f latin1 -t utf-8)")
    except MemoryError:
        if debug:
            raise
        return _fail("out of memory; try a smaller --batch-size or a smaller model")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: say so in one line, the traceback is one flag away
        if debug:
            raise
        if type(e).__name__ == "OutOfMemoryError":  # torch's, for a GPU (torch not imported)
            return _fail("out of GPU memory; try a smaller --batch-size or --max-length, "
                         "--dtype bfloat16, or a smaller model")
        print(f"internal error: {type(e).__name__}: {e}", file=sys.stderr)
        print("this is a bug in lmlab; rerun with --debug for the traceback and report it",
              file=sys.stderr)
        return 1
    return int(result) if isinstance(result, int) else 0


def _fail(message: str) -> int:
    """Print one ``error:`` line (after whatever a progress bar left on the line); exit 2."""
    sys.stderr.write("\n" if getattr(sys.stderr, "isatty", lambda: False)() else "")
    print(f"error: {message}", file=sys.stderr)
    return 2

