"""Beam search, batched, for decoder-only and encoder-decoder models.

Each input keeps ``num_beams`` running hypotheses. A step scores every
continuation of every beam (log-probability summed over the hypothesis), keeps
the best ``2 x num_beams`` (more with several end tokens) so that ``num_beams`` of
them are still running after some end, and moves a candidate that ends (an end-of-sequence token, or
the length limit) among the finished ones when it is among the best
``num_beams`` of the step. A finished hypothesis is scored by its summed
log-probability divided by ``length ** length_penalty`` (Wu et al. 2016's
GNMT normalisation in the form Hugging Face uses: the length counts the
generated tokens, the end token included); above 1 favours longer outputs.

An input is done when it holds ``num_beams`` finished hypotheses and no
running one can beat the worst of them: with ``early_stopping=False`` (the
default) a running beam is judged by its score at the current length, with
``"never"`` and a positive penalty by its score at the longest length allowed
(the exact test), and ``True`` stops as soon as ``num_beams`` are finished.
These are Hugging Face ``generate``'s rules, so with the same weights the same
ids come out (``tests/test_beam.py`` checks it on GPT-2- and Marian-shaped models).

An input that is done leaves the batch: its rows are no longer decoded, so the
matrix products shrink as the short outputs of a batch end (Hugging Face keeps
decoding them, padded, until the longest is done). Likewise at step 0, where
the K beams of an input are still one, the model reads each prompt once, not
K times.

``no_repeat_ngram_size`` forbids any n-gram from appearing twice in a
hypothesis (its prompt included, as Hugging Face does); ``min_new_tokens``
forbids the end token before that many tokens.

The model is reached through a ``Stepper``: ``logits(step)`` gives the
next-token logits of every running row, reading the tokens of ``sequences``,
and ``reorder(rows)`` keeps the rows of its cache that the surviving beams
came from (fewer rows than before once an input is done). ``GPTStepper`` and
``Seq2SeqStepper`` drive lmlab's two kinds.

Shapes: B inputs, K beams, V vocabulary, P prompt tokens, N new tokens at most.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import torch
import torch.nn.functional as F

from lmlab.errors import LmlabError

if TYPE_CHECKING:
    from lmlab.tokenizer import Tokenizer

NEG = -1.0e9  # a score no real hypothesis reaches: marks what may not be chosen


@dataclass
class BeamConfig:
    num_beams: int = 4
    max_new_tokens: int = 64
    min_new_tokens: int = 0
    length_penalty: float = 1.0
    early_stopping: bool | Literal["never"] = False
    no_repeat_ngram_size: int = 0
    num_return_sequences: int = 1

    def __post_init__(self) -> None:
        if self.num_beams < 1 or self.max_new_tokens < 1:
            raise LmlabError("--num-beams and --max-new-tokens must be at least 1")
        if not 1 <= self.num_return_sequences <= self.num_beams:
            raise LmlabError(f"--num-return-sequences must be between 1 and --num-beams "
                             f"({self.num_beams}), got {self.num_return_sequences}")


@dataclass
class Hypothesis:
    tokens: list[int]  # the generated tokens, the end token included when it ended
    score: float  # summed log-probability / length ** length_penalty


class Stepper(Protocol):
    def logits(self, step: int, sequences: torch.Tensor) -> torch.Tensor:
        """Next-token logits (R, V) after ``sequences`` (R, P + step): the prompt and the
        ``step`` tokens generated so far; R = B at step 0 (the prompts), B*K after. The
        search may overwrite the tensor returned (a fresh one, or one the stepper no
        longer reads)."""
        ...

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep the cached rows ``rows`` (B'*K,), in that order: after step 0 each
        input's row K times, then the rows the surviving beams came from; B' < B when
        inputs are done and leave the batch."""
        ...


def banned_ngrams(seqs: torch.Tensor, n: int, logp: torch.Tensor) -> None:
    """Set to -inf in ``logp`` (R, V) every token that would complete, in row r of
    ``seqs`` (R, L), an n-gram already present in that row."""
    L = seqs.size(1)
    if n < 1 or n > L:  # no n-gram yet, so none repeats
        return
    prefix = seqs[:, L - n + 1:].tolist() if n > 1 else [[] for _ in range(seqs.size(0))]
    rows = seqs.tolist()
    for r, row in enumerate(rows):
        want = prefix[r]
        for i in range(L - n + 1):
            if row[i:i + n - 1] == want:
                logp[r, row[i + n - 1]] = float("-inf")


TOPK_BLOCK = 128  # the block that ``wide_topk`` takes the maxima of


def wide_topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x.topk(k, dim=1)`` (values and indices, best first) for rows much wider than k:
    the scores of every continuation of every beam (B, K*V).

    torch's CPU top-k sorts a copy of each row's (value, index) pairs, about 30 us per
    32,000 elements (AMD EPYC): at 4 beams over 8,000 tokens, a quarter of a beam step's
    bookkeeping. Here: the maxima of blocks of ``TOPK_BLOCK`` (a vectorized pass), the k
    blocks with the largest maxima, and the top k of those blocks' elements. The best k
    lie in those blocks: an element of another block has k block maxima at least as
    large in other blocks, so k elements of the row at least as large. Equal values
    (bf16 or quantized logits have them) are where the two could pick or order
    differently, so the best k + 1 are found, and where two of them are equal
    ``topk`` itself answers."""
    R, N = x.shape
    n_blk = N // TOPK_BLOCK
    if n_blk < 4 * k:  # too narrow to gain
        return x.topk(k, dim=1)
    k1 = k + 1  # one more, to see a tie at the cut
    body = x[:, :n_blk * TOPK_BLOCK].view(R, n_blk, TOPK_BLOCK)
    # (Any order of the blocks: equal values, where order would matter, go to topk.)
    blocks = body.amax(dim=2).topk(k1, dim=1).indices  # (R, k1)
    picked = body.gather(1, blocks[:, :, None].expand(-1, -1, TOPK_BLOCK))  # (R, k, blk)
    first = blocks[:, :, None] * TOPK_BLOCK + torch.arange(TOPK_BLOCK, device=x.device)
    where = first.view(R, -1)  # (R, k*blk) each picked element's column
    values = picked.view(R, -1)
    if n_blk * TOPK_BLOCK < N:  # the tail past the last whole block is always looked at
        tail = torch.arange(n_blk * TOPK_BLOCK, N, device=x.device)
        values = torch.cat([values, x[:, n_blk * TOPK_BLOCK:]], dim=1)
        where = torch.cat([where, tail.expand(R, -1)], dim=1)
    best, at = values.topk(k1, dim=1)
    if bool((best[:, 1:] == best[:, :-1]).any()):
        return x.topk(k, dim=1)
    return best[:, :k], where.gather(1, at[:, :k])


def beam_search(stepper: Stepper, prompt: torch.Tensor, cfg: BeamConfig,
                eos_token_id: int | Sequence[int] | None, pad_token_id: int,
                vocab_size: int) -> list[list[Hypothesis]]:
    """The ``num_return_sequences`` best hypotheses of each input, best first.

    ``prompt`` (B, P) holds what each row starts from (a decoder-only model's
    prompt, or an encoder-decoder's start token). The stepper's first call sees it
    as it is, (B, P), and a ``reorder`` then repeats each row for the K beams; its
    later calls see (B*K, P + step).
    """
    K, N, V = cfg.num_beams, cfg.max_new_tokens, vocab_size
    B, P = prompt.shape
    device = prompt.device
    eos = torch.tensor([] if eos_token_id is None else
                       [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id),
                       dtype=torch.long, device=device)
    eos_id = int(eos[0]) if eos.numel() == 1 else None
    lp, early = cfg.length_penalty, cfg.early_stopping
    # Running and finished hypotheses: tokens, score, and (finished) whether it is real.
    running = torch.full((B, K, P + N), pad_token_id, dtype=torch.long, device=device)
    running[:, :, :P] = prompt[:, None, :]
    running_score = torch.zeros(B, K, device=device)
    running_score[:, 1:] = NEG  # all beams start equal: only the first one may go on
    done_tokens = running.clone()
    done_score = torch.full((B, K), NEG, device=device)
    done_len = torch.zeros(B, K, dtype=torch.long, device=device)
    done = torch.zeros(B, K, dtype=torch.bool, device=device)
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
    # Enough candidates that K run on even if all the end tokens are among them.
    C = max(2, 1 + eos.numel()) * K
    first_k = torch.arange(C, device=device) < K  # (C,) the best K of the C kept
    batch_offset = torch.arange(B, device=device)[:, None] * K  # (B, 1)
    # The finished hypotheses of every input, written when it leaves the batch.
    final_tokens, final_score = done_tokens.clone(), done_score.clone()
    final_len = done_len.clone()
    active = torch.arange(B, device=device)  # the inputs still in the batch

    neg = torch.tensor(NEG, device=device)
    some_done = False  # whether any input holds a finished hypothesis yet

    for t in range(N):
        B = running.size(0)  # the inputs still in the batch
        # At step 0 the K beams of an input are one: a row each (the prompt read once),
        # and then the stepper's rows are copied for the beams.
        seqs = running[:, 0, :P] if t == 0 else running.view(B * K, P + N)[:, :P + t]
        logits = stepper.logits(t, seqs)  # (B*K, V), (B, V) at step 0
        if t == 0:
            stepper.reorder(torch.arange(B, device=device).repeat_interleave(K))
        logits = logits.float()
        # In place where it can be (the stepper's logits are the search's to overwrite):
        # a step's (B*K, V) tensor less to allocate and write, and the same values.
        logp = (torch.log_softmax(logits, dim=-1, out=logits) if logits.is_contiguous()
                else F.log_softmax(logits, dim=-1))
        if cfg.no_repeat_ngram_size:
            banned_ngrams(seqs, cfg.no_repeat_ngram_size, logp)
        if t < cfg.min_new_tokens and eos.numel():
            logp[:, eos] = float("-inf")
        if t == 0:
            total = (logp[:, None, :] + running_score[:, :, None]).view(B, K * V)
        else:  # in place: a (B*K, V) tensor less to allocate at every step
            total = logp.view(B, K, V).add_(running_score[:, :, None]).view(B, K * V)
        # C candidates, best first: some may end here and K still go on.
        cand_score, cand = wide_topk(total, C)  # (B, C)
        cand_beam, cand_token = cand.div(V, rounding_mode="floor"), cand.remainder(V)
        if t + 1 == N:
            ends = torch.ones_like(cand_token, dtype=torch.bool)
        elif eos.numel() == 1:
            ends = cand_token == eos_id
        else:
            ends = torch.isin(cand_token, eos)
        any_end = t + 1 == N or bool(ends.any())

        # Candidates that end among the best K of the step join the finished ones.
        ended = ends & first_k if any_end else None  # (B, C)
        if any_end and bool(ended.any()):
            some_done = True
            cand_tokens = running.gather(1, cand_beam[:, :, None].expand(-1, -1, P + N))
            cand_tokens[:, :, P + t] = cand_token
            norm = cand_score / ((t + 1) ** lp)
            shut = ~ended | ~improvable  # (B, C) what may not join
            if early is True:
                shut |= done.all(dim=1, keepdim=True)
            # Below an empty slot's NEG, so that a shut candidate never takes its place.
            merged_score = torch.cat([done_score, norm.masked_fill(shut, 2 * NEG)], dim=1)
            best = merged_score.topk(K, dim=1).indices  # (B, K) of the K + C
            done_tokens = torch.cat([done_tokens, cand_tokens], dim=1).gather(
                1, best[:, :, None].expand(-1, -1, P + N))
            done_score = merged_score.gather(1, best)
            done_len = torch.cat([done_len, torch.full_like(cand_token, t + 1)],
                                 dim=1).gather(1, best)
            done = torch.cat([done, ended], dim=1).gather(1, best)

        # The best K candidates that do not end run on: the first K when none ends (and
        # none of them ties with the next: topk orders equal values its own way).
        if any_end or bool((cand_score[:, 1:K + 1] == cand_score[:, :K]).any()):
            run_score = cand_score.masked_fill(ends, NEG)
            keep = run_score.topk(K, dim=1).indices  # (B, K)
            running_score = run_score.gather(1, keep)
            source_beam, new_token = cand_beam.gather(1, keep), cand_token.gather(1, keep)
        else:
            running_score = cand_score[:, :K]
            source_beam, new_token = cand_beam[:, :K], cand_token[:, :K]
        running = running.gather(1, source_beam[:, :, None].expand(-1, -1, P + N))
        running[:, :, P + t] = new_token
        rows = source_beam + batch_offset  # (B, K) the cache rows the beams came from
        if t + 1 == N:
            stepper.reorder(rows.reshape(-1))
            break
        if not some_done:  # nothing to compare with: every input goes on
            stepper.reorder(rows.reshape(-1))
            continue

        # Can a running beam still beat the worst finished one?
        longest = N if early == "never" and lp > 0 else t + 1
        best_running = running_score[:, :1] / (longest ** lp)
        worst_done = torch.where(done, done_score.min(dim=1, keepdim=True).values, neg)
        improvable = improvable & (best_running > worst_done).any(dim=1, keepdim=True)
        finished = ~improvable[:, 0]  # (B,)
        if early is True:
            finished |= done.all(dim=1)
        if bool(finished.all()):
            stepper.reorder(rows.reshape(-1))
            break
        if bool(finished.any()):  # done inputs leave the batch, their hypotheses kept
            gone, keep = finished.nonzero()[:, 0], (~finished).nonzero()[:, 0]
            final_tokens[active[gone]] = done_tokens[gone]
            final_score[active[gone]] = done_score[gone]
            final_len[active[gone]] = done_len[gone]
            active, rows = active[keep], rows[keep]
            running, running_score = running[keep], running_score[keep]
            done_tokens, done_score = done_tokens[keep], done_score[keep]
            done_len, done, improvable = done_len[keep], done[keep], improvable[keep]
            batch_offset = batch_offset[:keep.numel()]
        stepper.reorder(rows.reshape(-1))

    final_tokens[active], final_score[active] = done_tokens, done_score
    final_len[active] = done_len
    out: list[list[Hypothesis]] = []
    for b in range(final_len.size(0)):
        hyps = []
        for k in range(cfg.num_return_sequences):
            n = int(final_len[b, k])
            hyps.append(Hypothesis(final_tokens[b, k, P:P + n].tolist(),
                                   float(final_score[b, k])))
        out.append(hyps)
    return out


# ---------------------------------------------------------------- lmlab's models
class GPTStepper:
    """Beam steps of a decoder-only model: the prompt through the KV cache once (left-padded
    rows of a batch), then one token a step."""

    def __init__(self, model: torch.nn.Module, pad: torch.Tensor | None, max_len: int) -> None:
        self.model = model
        self.pad = pad  # (B,), repeated for the beams by the first reorder
        self.max_len = max_len

    def logits(self, step: int, sequences: torch.Tensor) -> torch.Tensor:
        model = self.model
        if step == 0:
            model.setup_cache(sequences.size(0), self.max_len)
            return model(sequences, start_pos=0, last_only=True, pad=self.pad)[:, -1]
        pos = sequences.size(1) - 1
        return model(sequences[:, -1:], start_pos=pos, last_only=True, pad=self.pad)[:, -1]

    def reorder(self, rows: torch.Tensor) -> None:
        self.model.reorder_cache(rows)
        if self.pad is not None and rows.numel() != self.pad.numel():
            self.pad = self.pad.index_select(0, rows)


class Seq2SeqStepper:
    """Beam steps of an encoder-decoder: the source encoded once, its keys and values
    shared by its beams, then the decoder one token a step."""

    def __init__(self, model: torch.nn.Module, src: torch.Tensor, src_mask: torch.Tensor,
                 num_beams: int, max_new_tokens: int) -> None:
        self.model = model
        self.memory = model.encode(src, src_mask)  # (B, S, C)
        self.src_mask = src_mask
        self.num_beams = num_beams
        self.cache = model.new_cache(capacity=max_new_tokens, beams=num_beams)

    def logits(self, step: int, sequences: torch.Tensor) -> torch.Tensor:
        tokens = sequences if step == 0 else sequences[:, -1:]
        return self.model.decode(tokens, self.memory, self.src_mask, self.cache)[:, -1]

    def reorder(self, rows: torch.Tensor) -> None:
        K = self.num_beams
        if rows.numel() == self.src_mask.size(0) * K:
            # Beams move among the rows of their own source: only the decoder's own
            # cache moves.
            self.cache.reorder(rows)
            return
        # Inputs left the batch: the K rows of an input that stays came from its old rows.
        sources = rows[::K] // K  # (B',)
        self.cache.reorder(rows, sources)
        self.src_mask = self.src_mask.index_select(0, sources)
        # Not read after step 0 (the cross-attention keys and values are cached): a view
        # with the right number of rows, not a copy.
        self.memory = self.memory[:sources.numel()]


@torch.inference_mode()
def beam_search_gpt(model: torch.nn.Module, prompts: Sequence[Sequence[int]], cfg: BeamConfig,
                    eos_token_id: int | Sequence[int] | None,
                    pad_token_id: int = 0) -> list[list[Hypothesis]]:
    """Beam search continuations of token-id prompts with a decoder-only model (prompts of
    different lengths are left-padded, each row positioned from its first real token)."""
    from lmlab.generate import left_pad

    context = model.config.block_size
    longest = max(len(p) for p in prompts)
    if longest + cfg.max_new_tokens > context:
        raise LmlabError(f"prompt ({longest} tokens) + --max-new-tokens "
                         f"{cfg.max_new_tokens} exceed the context of {context} tokens")
    device = model.transformer.wte.weight.device
    idx, pad = left_pad(prompts, pad_id=pad_token_id)
    idx = idx.to(device)
    pad = pad.to(device) if pad is not None else None
    stepper = GPTStepper(model, pad, longest + cfg.max_new_tokens)
    try:
        return beam_search(stepper, idx, cfg, eos_token_id, pad_token_id,
                           model.config.vocab_size)
    finally:
        model.clear_cache()


@torch.inference_mode()
def beam_search_seq2seq(model: torch.nn.Module, sources: Sequence[Sequence[int]],
                        cfg: BeamConfig) -> list[list[Hypothesis]]:
    """Beam search outputs of an encoder-decoder for token-id sources (right-padded)."""
    from lmlab.generate import right_pad

    c = model.config
    device = model.shared.weight.device
    longest = max(len(s) for s in sources)
    if longest > c.block_size:
        raise LmlabError(f"a source of {longest} tokens exceeds the model's {c.block_size} "
                         "positions")
    if cfg.max_new_tokens > c.block_size:  # the last token is never read back
        raise LmlabError(f"--max-new-tokens {cfg.max_new_tokens} exceeds the model's "
                         f"{c.block_size} positions")
    src, mask = right_pad(sources, c.pad_token_id, device)
    stepper = Seq2SeqStepper(model, src, mask, cfg.num_beams, cfg.max_new_tokens)
    start = torch.full((len(sources), 1), c.decoder_start_token_id, dtype=torch.long,
                       device=device)
    return beam_search(stepper, start, cfg, c.eos_token_id, c.pad_token_id, c.vocab_size)


def search_texts(model: torch.nn.Module, tok, sources: Sequence[Sequence[int]],
                 cfg: BeamConfig, batch_size: int = 32,
                 on_batch: Callable[[int], None] | None = None) -> list[list[tuple[str, float]]]:
    """The ``cfg.num_return_sequences`` best (text, score) of each token-id source (ending
    with the end token), best first, by beam search over batches of ``batch_size``;
    ``on_batch(n)`` after each (a progress bar). An encoder-decoder reads the source; a
    decoder-only model trained on pairs (``lmlab seq2seq --preset gpt-...``) continues
    it, its end token the separator.

    Batches are made of sources of similar lengths (sorted, as fairseq and Marian's
    decoders do; the outputs come back in the input's order): less padding, and
    outputs that tend to end together."""
    from lmlab.models.registry import kind_of

    decoder_only = kind_of(model) == "causal"
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    out: list[list[tuple[str, float]]] = [[] for _ in sources]
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        chunk = [sources[i] for i in rows]
        if decoder_only:
            found = beam_search_gpt(model, chunk, cfg, tok.eos_id, tok.pad_id or 0)
        else:
            found = beam_search_seq2seq(model, chunk, cfg)
        for i, hyps in zip(rows, found, strict=True):
            out[i] = [(tok.decode(h.tokens, skip_special_tokens=True).strip(), h.score)
                      for h in hyps]
        if on_batch is not None:
            on_batch(len(found))
    return out


def translate_ids(model: torch.nn.Module, tok, sources: Sequence[Sequence[int]],
                  cfg: BeamConfig, batch_size: int = 32,
                  on_batch: Callable[[int], None] | None = None) -> list[str]:
    """The best output text for each token-id source (``search_texts``)."""
    return [hyps[0][0] for hyps in search_texts(model, tok, sources, cfg, batch_size, on_batch)]


# ---------------------------------------------------------------- a model trained on pairs
@dataclass
class PairModel:
    """A model that writes an output for a source (`lmlab translate`, `lmlab summarize`,
    back-translation in `lmlab finetune --augment`): the network, its tokenizer, the
    tokens a source and an output may each hold, and the end token closing a source."""

    net: torch.nn.Module
    tok: Tokenizer
    room: int
    eos: int

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each source, cut to fit, closed by the end token."""
        return [[*self.tok.encode(s)[:self.room - 1], self.eos] for s in texts]

    def search(self, texts: Sequence[str], cfg: BeamConfig, batch_size: int = 32,
               on_batch: Callable[[int], None] | None = None) -> list[list[tuple[str, float]]]:
        """``search_texts`` over the sources, as (text, score) hypotheses, best first."""
        return search_texts(self.net, self.tok, self.encode(texts), cfg, batch_size, on_batch)

    def translate(self, texts: Sequence[str], n: int = 1, num_beams: int = 4,
                  batch_size: int = 32) -> list[list[str]]:
        """The ``n`` best outputs of each source (beam search with at least ``n`` beams)."""
        cfg = BeamConfig(num_beams=max(n, num_beams), max_new_tokens=self.room,
                         num_return_sequences=n)
        return [[t for t, _ in hyps] for hyps in self.search(texts, cfg, batch_size)]


def _trained_on_pairs(net: torch.nn.Module, folder: Path) -> bool:
    """A decoder-only checkpoint of `lmlab seq2seq` (its trainer state names that run's
    config): it reads a source and its end token, then writes the output."""
    import json

    from lmlab.models.registry import kind_of
    from lmlab.train.checkpoint import STATE_FILE

    state = folder / STATE_FILE
    if kind_of(net) != "causal" or not state.is_file():
        return False
    try:
        return "seq2seq_config" in json.loads(state.read_text())
    except ValueError:
        return False


def load_pair_model(source: str | Path, device: str = "cpu") -> PairModel:
    """An `lmlab seq2seq` run or checkpoint (an encoder-decoder, or a decoder-only model
    trained on pairs), or a Marian / BART folder, with the tokenizer.json beside it.

    Raises:
        LmlabError: the model was not trained on pairs, or has no tokenizer.json.
    """
    from lmlab.loading import load_model, model_folder
    from lmlab.models.registry import kind_of
    from lmlab.tokenizer import Tokenizer

    net = load_model(source, device=device).eval()
    folder = model_folder(source)
    kind = kind_of(net)
    if kind != "seq2seq" and not _trained_on_pairs(net, folder):
        use = ("`lmlab neighbors` or `lmlab finetune`" if kind == "encoder"
               else "`lmlab generate` to continue text")
        raise LmlabError(f"{source}: is a {kind} model, neither an encoder-decoder nor "
                         f"a decoder trained on pairs by `lmlab seq2seq`; use {use}")
    if not (folder / "tokenizer.json").is_file():
        raise LmlabError(f"{folder}: no tokenizer.json beside the model")
    tok = Tokenizer.from_file(folder / "tokenizer.json")
    c = net.config
    # A decoder-only model holds source and output in one context: half each.
    room = c.block_size if kind == "seq2seq" else c.block_size // 2
    eos = c.eos_token_id if kind == "seq2seq" else tok.eos_id
    return PairModel(net, tok, room, eos)
