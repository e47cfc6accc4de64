"""lmlab's models in lm-evaluation-harness: the ``lmlab`` model.

Importing this module registers ``lmlab`` with the harness. lm-eval 0.4.13
finds models only among the ones it imports itself (it has no plugin entry
point), so its own ``lm_eval`` command does not know ``lmlab``; this module's
``main`` is that command with ``lmlab`` registered::

    python -m lmlab.harness --model lmlab --model_args path=runs/mini \\
        --tasks hellaswag          # any harness task (its data comes from the hub)
    python -m lmlab.harness --model lmlab --model_args path=smollm2.gguf --batch_size 16 \\
        --include_path tasks/ --tasks lmlab_mmlu_0shot    # offline: `lmlab mcq export`

From Python, ``import lmlab.harness`` and then
``lm_eval.simple_evaluate(model="lmlab", model_args="path=...")``.

Model arguments: ``path`` (anything ``lmlab generate`` loads: a run or
checkpoint folder, a Hugging Face folder, a .gguf file), ``tokenizer``,
``dtype``, ``quantize``; the harness's own ``--batch_size`` and ``--device`` (its
default, cuda:0, falls back to the CPU when there is no GPU, as its HF model does).
The log-likelihoods are ``lmlab.multiple_choice.loglikelihoods``, the ones
``lmlab mcq eval`` uses.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from lmlab.evaluate import document_start, score_tokens
from lmlab.generate import SamplingConfig, generate_texts
from lmlab.loading import load_for_inference
from lmlab.multiple_choice import loglikelihoods


@register_model("lmlab")
class LmlabLM(LM):
    """An lmlab causal model (GPT-2 / Llama / Gemma shapes, or a classic recurrent or
    feed-forward LM) answering the harness's three kinds of request."""

    def __init__(self, path: str, tokenizer: str | None = None, batch_size: int | str = 16,
                 dtype: str = "float32", quantize: str = "none", device: str | None = "cpu",
                 **_: object) -> None:  # the harness's other arguments (max_batch_size...)
        super().__init__()
        import torch

        device = device or "auto"
        if device.startswith("cuda") and not torch.cuda.is_available():
            # The harness's --device defaults to cuda:0; like its own HF model, run where
            # the machine can rather than refuse.
            print(f"lmlab: no CUDA GPU for --device {device}; running on the CPU",
                  file=sys.stderr)
            device = "cpu"
        loaded = load_for_inference(Path(path), Path(tokenizer) if tokenizer else None, dtype,
                                    quantize, device)
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        # "auto" (the harness's batch-size search) is not supported: a fixed size.
        self.batch = 16 if str(batch_size).startswith("auto") else int(batch_size)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log P(continuation | context), whether it is the greedy continuation)."""
        return loglikelihoods(self.model, self.tokenizer, [r.args for r in requests],
                              batch_size=self.batch)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each whole text (after the start / end-of-text token), scored
        in windows of the model's context as `lmlab eval` scores a file."""
        out = []
        for r in requests:
            (text,) = r.args
            ids = document_start(self.tokenizer) + self.tokenizer.encode(text)
            nll, _ = score_tokens(self.model, np.array(ids), batch_size=self.batch)
            out.append(-nll)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, if asked) continuations, cut at the first stop string."""
        out = []
        for r in requests:
            context, kwargs = r.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(kwargs.get("temperature", 0.0))
            if not kwargs.get("do_sample", False):
                temperature = 0.0
            done = generate_texts(self.model, self.tokenizer, [context],
                                  max_new_tokens=int(kwargs.get("max_gen_toks", 256)),
                                  cfg=SamplingConfig(temperature=temperature),
                                  stop=until, seed=0, warn=lambda _: None)
            out.append(done[0].text)
        return out


def main() -> None:
    """``lm_eval``'s command line with the ``lmlab`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
