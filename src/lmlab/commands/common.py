"""What the command modules share: printing to the user and the option types of
several commands (ranges and path kinds are declared with the type, see ``options.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from lmlab.options import Input, Range

# A corpus source: a path, or the word `default` for the built-in extract.
Source = Annotated[Path, Input("any", words=("default",))]
# Nucleus sampling threshold: 1 disables it, 0 would keep nothing.
TopP = Annotated[float, Range(0, 1, lo_open=True)]


def say(msg: str = "") -> None:
    print(msg, flush=True)

