"""Multi-turn chat: the model's own chat template, history kept within the context.

Chat templates are the Jinja2 programs that Hugging Face tokenizers and GGUF
files carry (``tokenizer.chat_template``); they are rendered the way
``transformers`` renders them: a sandboxed environment with ``trim_blocks``
and ``lstrip_blocks``, and ``messages``, ``add_generation_prompt``,
``bos_token``, ``eos_token`` and ``raise_exception`` in scope. A model without
a template (a base model pretrained with lmlab) gets a plain
"User: ... / Assistant:" format.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from lmlab.data.chat import PLAIN_STOPS, PLAIN_TEMPLATE, chat_format, render_chat, render_prompt
from lmlab.generate import Completion, SamplingConfig, generate_text, generate_texts
from lmlab.models.gpt import GPT
from lmlab.models.registry import context_of
from lmlab.models.rnn import StatefulLM
from lmlab.tokenizer import Tokenizer

__all__ = ["PLAIN_STOPS", "PLAIN_TEMPLATE", "ChatSession", "answer_conversations", "render_chat"]


class ChatSession:
    """A conversation with one model; ``reply`` adds a user turn and answers it.

    ``compile`` decodes through torch.compile with dynamic shapes (one graph for
    the whole conversation; the first reply waits for the compile).
    """

    def __init__(self, model: GPT | StatefulLM, tokenizer: Tokenizer,
                 template: str | None = None, *,
                 system: str | None = None, cfg: SamplingConfig | None = None,
                 max_new_tokens: int = 256, seed: int | None = None,
                 warn: Callable[[str], None] | None = None, compile: bool = False) -> None:
        self.model = model
        # One compiled graph for every length: the conversation grows turn by turn.
        self.compile = compile
        self.tokenizer = tokenizer
        self.template, self.stops = chat_format(template, tokenizer)
        self.system = system
        self.cfg = cfg or SamplingConfig(temperature=0.7, top_p=0.9)
        # A Transformer's context bounds the reply and the history; a feed-forward or
        # recurrent LM carries its state over any length (its block_size is only how far
        # training back-propagated), so nothing is cut.
        self.context = context_of(model)
        self.max_new_tokens = (max_new_tokens if self.context is None
                               else min(max_new_tokens, self.context // 2))
        self.seed = seed
        self.warn = warn or (lambda msg: print(msg, file=sys.stderr))
        self.messages: list[dict[str, str]] = []
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def _encode(self, messages: list[dict[str, str]]) -> list[int]:
        return render_prompt(self.template, self.tokenizer, messages)[0]

    def prompt_ids(self) -> list[int]:
        """The rendered conversation, dropping the oldest turns until it fits the context."""
        if self.context is None:
            return self._encode(self.messages)
        budget = self.context - self.max_new_tokens
        first = 1 if self.system else 0
        dropped = 0
        ids = self._encode(self.messages)
        while len(ids) > budget and len(self.messages) - first > 1:
            del self.messages[first]  # the oldest user or assistant turn
            dropped += 1
            ids = self._encode(self.messages)
        if dropped:
            self.warn(f"(the conversation outgrew the context of {self.context} "
                      f"tokens: dropped its {dropped} oldest message(s))")
        return ids

    def reply(self, text: str, on_text: Callable[[str], None] | None = None) -> Completion:
        """Answer ``text``; ``on_text`` receives the answer as it streams."""
        self.messages.append({"role": "user", "content": text})
        ids = self.prompt_ids()
        stream = (lambda _row, piece: on_text(piece)) if on_text else None
        out = generate_text(self.model, self.tokenizer, ids, max_new_tokens=self.max_new_tokens,
                            cfg=self.cfg, stop=self.stops, seed=self.seed, on_text=stream,
                            warn=self.warn, compile=self.compile, dynamic=True)[0]
        self.messages.append({"role": "assistant", "content": out.text.strip()})
        return out


def answer_conversations(model: GPT, tokenizer: Tokenizer, template: str | None,
                         conversations: list[list[dict[str, str]]], *, max_new_tokens: int = 128,
                         batch_size: int = 16, cfg: SamplingConfig | None = None,
                         seed: int | None = None,
                         progress: Callable[[int], None] | None = None) -> list[str]:
    """The model's answer to the last user turn of each conversation (an assistant turn at
    the end, the reference, is left out of the prompt), decoded in batches."""
    prompts, stops = [], ()
    for messages in conversations:
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        ids, stops = render_prompt(template, tokenizer, messages)
        prompts.append(ids)
    # Similar lengths together: less padding per batch.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        outs = generate_texts(model, tokenizer, [prompts[i] for i in rows],
                              max_new_tokens=max_new_tokens,
                              cfg=cfg or SamplingConfig(temperature=0.0), stop=stops, seed=seed)
        for i, out in zip(rows, outs, strict=True):
            answers[i] = out.text.strip()
        if progress:
            progress(len(rows))
    return answers
