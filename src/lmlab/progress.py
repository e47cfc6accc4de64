"""One progress-bar policy for every long job (tqdm on stderr, with ETA)."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(**kwargs: Any):
    """A tqdm bar on stderr; redraws at most every 15 s when stderr is not a terminal.

    In a log file or CI output every redraw is a new line, so a terminal's 10
    redraws a second would bury everything else.
    """
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("mininterval", 0.1 if tty else 15.0)
    return tqdm(**kwargs)
