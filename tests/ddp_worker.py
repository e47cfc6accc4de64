"""A pretraining run for tests/test_distributed.py, launched by torchrun: the run's
TrainConfig as JSON in argv[1]; with argv[2] = N, each process SIGKILLs itself as its
N-th training step begins (a machine lost mid-run, after some checkpoints)."""

from __future__ import annotations

import json
import os
import signal
import sys

from lmlab.train import distributed
from lmlab.train.loop import TrainConfig, Trainer

if __name__ == "__main__":
    cfg = TrainConfig(**json.loads(sys.argv[1]))
    if len(sys.argv) > 2:
        die_at, calls = int(sys.argv[2]), [0]
        real_step = Trainer._train_step

        def dying_step(self: Trainer) -> float:
            calls[0] += 1
            if calls[0] == die_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_step(self)

        Trainer._train_step = dying_step  # type: ignore[method-assign]
    try:
        Trainer(cfg, resume=os.environ.get("RESUME") == "1", progress=False).fit()
    finally:
        distributed.leave()
