"""Masked-LM pretraining data and metrics for the BERT encoder (``models/bert.py``).

The data path, top-down:

* ``MLMVocab``: the tokenizer's special ids and per-token tables (special,
  maskable, word start, sentence end), computed once over the vocabulary.
* ``mask_tokens``: BERT's masking (Devlin et al. 2019, section 3.1): 15 % of
  the maskable tokens are selected; of those 80 % become [MASK], 10 % a random
  token and 10 % stay unchanged, and the model must predict the original of
  every selected token. Masking is dynamic, as in RoBERTa (Liu et al. 2019): a
  fresh mask each time a batch is drawn, where BERT masked its data once offline.
* ``MLMData``: batches from one split of token shards. Without next-sentence
  prediction, random windows of the stream as ``[CLS] window [SEP]`` (RoBERTa's
  FULL-SENTENCES: windows cross document boundaries, which the stream marks
  with the separator). With NSP, BERT's sentence pairs ``[CLS] A [SEP] B [SEP]``.
* ``fixed_batches`` and ``evaluate_mlm``: validation on a fixed set of masked
  batches, so numbers are comparable across steps, reported against the
  most-frequent-token rate (the accuracy of the trivial predictor).

All randomness comes from the ``torch.Generator`` passed in, so a run resumed
with the generator's saved state draws exactly the batches it would have drawn.

Shapes: B batch, T tokens, V vocabulary, N masked positions in a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.errors import LmlabError

if TYPE_CHECKING:
    from lmlab.data.shards import TokenShards
    from lmlab.models.bert import BertForPreTraining
    from lmlab.tokenizer import Tokenizer

IGNORE_INDEX = -100  # label of unselected positions (F.cross_entropy's default ignore_index)
MLM_SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]")
SENTENCE_FINAL = frozenset(".!?。！？")
MASK_FRACTION, RANDOM_FRACTION = 0.8, 0.1  # of the selected tokens; the rest stay unchanged
NOT_NEXT_PROB = 0.5
# BERT's short_seq_prob: a tenth of the pairs get a random shorter length, so
# pretraining also sees the short inputs that fine-tuning brings.
SHORT_PAIR_PROB = 0.1


# ------------------------------------------------------------------------ vocabulary
@dataclass
class MLMVocab:
    """Special ids and per-token tables of a tokenizer, for masking and NSP pairs."""

    vocab_size: int
    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    eos_id: int  # the document separator in token shards ([SEP] for WordPiece)
    special: torch.Tensor  # (V,) bool: every special token, [UNK] included
    unmaskable: torch.Tensor  # (V,) bool: special tokens except [UNK], which stands for a word
    random_ids: torch.Tensor  # (R,) long: the non-special ids, for the 10 % random replacements
    word_start: torch.Tensor | None  # (V,) bool, for whole-word masking
    sentence_end: np.ndarray | None  # (V,) bool, for NSP sentence boundaries

    @classmethod
    def from_tokenizer(cls, tok: Tokenizer, *, whole_word: bool = False,
                       nsp: bool = False) -> MLMVocab:
        """Read the tables from ``tok``; LmlabError if it lacks BERT's special tokens."""
        ids = {t: tok.token_to_id(t) for t in MLM_SPECIALS}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise LmlabError(
                f"{tok.path or 'the tokenizer'}: masked-LM pretraining needs the special tokens "
                f"{' '.join(MLM_SPECIALS)}, and this {tok.kind} tokenizer lacks "
                f"{' '.join(missing)}; train a tokenizer with --kind wordpiece (then run "
                "`lmlab prepare` with it)")
        V = tok.vocab_size
        special = torch.zeros(V, dtype=torch.bool)
        for t in tok.special_tokens:
            special[tok.token_to_id(t)] = True
        for i in ids.values():
            special[i] = True
        unmaskable = special.clone()
        if tok.unk_id is not None:
            unmaskable[tok.unk_id] = False
        word_start = None
        if whole_word:
            word_start = torch.from_numpy(np.asarray(tok.word_start_mask(), dtype=bool))
        eos = tok.eos_id
        assert eos is not None  # [SEP] exists, and eos_id falls back to it
        return cls(
            vocab_size=V, pad_id=ids["[PAD]"], cls_id=ids["[CLS]"], sep_id=ids["[SEP]"],
            mask_id=ids["[MASK]"], eos_id=eos, special=special, unmaskable=unmaskable,
            random_ids=torch.nonzero(~special).flatten(), word_start=word_start,
            sentence_end=sentence_end_table(tok) if nsp else None)


def sentence_end_table(tok: Tokenizer) -> np.ndarray:
    """(V,) bool: True for tokens that decode to sentence-final punctuation only.

    ". ! ? 。 ！ ？" and runs of them ("?!", "..."). A heuristic: "Dr." and
    "U.S." end sentences too, which only makes some sentences shorter.
    """
    table = np.zeros(tok.vocab_size, dtype=bool)
    specials = set(tok.special_tokens)
    for i in range(tok.vocab_size):
        if tok.id_to_token(i) in specials:
            continue
        text = tok.decode([i]).strip()
        table[i] = bool(text) and all(c in SENTENCE_FINAL for c in text)
    return table


# ------------------------------------------------------------------------ masking
def mask_tokens(ids: torch.Tensor, maskable: torch.Tensor, word_start: torch.Tensor | None,
                mask_id: int, vocab_size: int, generator: torch.Generator,
                prob: float = 0.15,
                random_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of a batch: (inputs, labels), both (B, T) long.

    Each row gets ``round(prob * maskable tokens)`` selected tokens (at least
    one), as BERT's data script (a per-token coin would leave some short rows
    with nothing to predict). Given ``word_start`` (B, T), whole words are selected
    instead, in random order until the count is reached (the word that crosses
    it is kept if that lands nearer), all tokens of a word together (Google's
    whole-word-masking BERT); a word is a ``word_start`` token and the
    continuation tokens after it. Each selected token then becomes [MASK]
    (80 %), a random id from ``random_ids`` (10 %; default all of
    0..vocab_size-1) or stays as it is (10 %), decided per token as in BERT.
    ``labels`` holds the original id at selected positions and -100 elsewhere.

    The three draws from ``generator`` have fixed shapes, so the generator
    advances by the same amount whatever the data.
    """
    B, T = ids.shape
    scores = torch.rand((B, T), generator=generator)  # priority of each token (or word)
    action = torch.rand((B, T), generator=generator)  # [MASK] / random / unchanged
    pool = random_ids if random_ids is not None else torch.arange(vocab_size)
    pick = torch.randint(len(pool), (B, T), generator=generator)

    n_maskable = maskable.sum(1)  # (B,)
    target = torch.minimum((n_maskable * prob).round().long().clamp(min=1), n_maskable)
    if word_start is None:
        # Rank the maskable tokens by their random score (others sort last), keep the first k.
        order = scores.masked_fill(~maskable, 2.0).argsort(1)  # (B, T)
        # The inverse permutation of the sort (a scatter, cheaper than a second argsort).
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(T).expand(B, T))
        selected = (rank < target[:, None]) & maskable
    else:
        # A word starts at a word-start token, and at any token next to an
        # unmaskable one, so a word never spans [CLS], [SEP] or padding.
        edge = ~maskable
        starts = word_start | edge | F.pad(edge[:, :-1], (1, 0), value=True)
        word = starts.long().cumsum(1) - 1  # (B, T) index of each token's word
        length = torch.zeros(B, T, dtype=torch.long).scatter_add_(1, word, maskable.long())
        # Words in random order (the score at a word's index serves as its own);
        # unmaskable words and unused word slots (length 0) go last.
        order = scores.masked_fill(length == 0, 2.0).argsort(1)  # (B, W=T)
        lengths = length.gather(1, order)
        after = lengths.cumsum(1)
        before = after - lengths
        t = target[:, None]
        take = (lengths > 0) & (before < t) & (after - t <= t - before)
        take[:, 0] |= lengths[:, 0] > 0  # at least one word, however long
        chosen = torch.zeros_like(take).scatter_(1, order, take)  # (B, W) by word index
        selected = chosen.gather(1, word) & maskable
    labels = torch.where(selected, ids, IGNORE_INDEX)
    inputs = ids.clone()
    inputs[selected & (action < MASK_FRACTION)] = mask_id
    to_random = selected & (action >= MASK_FRACTION) & (action < MASK_FRACTION + RANDOM_FRACTION)
    inputs[to_random] = pool[pick[to_random]]
    return inputs, labels


# ------------------------------------------------------------------------ batches
@dataclass
class MLMBatch:
    """One masked batch; ``attention_mask``/``token_type_ids``/``nsp_labels`` only with NSP."""

    input_ids: torch.Tensor  # (B, T) long
    labels: torch.Tensor  # (B, T) long, -100 where nothing is predicted
    attention_mask: torch.Tensor | None = None  # (B, T) long, 1 on real tokens, 0 on padding
    token_type_ids: torch.Tensor | None = None  # (B, T) long, 0 for [CLS] A [SEP], 1 for B [SEP]
    nsp_labels: torch.Tensor | None = None  # (B,) long, 0 = IsNext, 1 = NotNext

    def map(self, fn) -> MLMBatch:
        """The batch with ``fn`` applied to each of its tensors (e.g. a device move, or a
        slice of rows for one process of a distributed run)."""
        return MLMBatch(*(None if t is None else fn(t) for t in
                          (self.input_ids, self.labels, self.attention_mask,
                           self.token_type_ids, self.nsp_labels)))

    @property
    def masked_positions(self) -> torch.Tensor:
        """(B, T) bool: the positions whose original token is predicted."""
        return self.labels != IGNORE_INDEX


@dataclass
class Pair:
    """One NSP example as spans of the split's token stream: A = [a0, a1), B = [b0, b1)."""

    a0: int
    a1: int
    b0: int
    b1: int
    not_next: bool  # label 1 (HF's convention): B comes from another document


class Sentences:
    """Documents and sentences of a split's stream, as arrays of span boundaries.

    Documents are the runs between separators (empty ones dropped); a sentence
    starts at each document start and after each sentence-final token.
    Sentence i is ``[start[i], end[i])``; document d holds sentences
    ``first[d] .. first[d] + count[d] - 1``.
    """

    def __init__(self, tokens: np.ndarray, eos_id: int, sentence_end: np.ndarray) -> None:
        N = len(tokens)
        is_eos = tokens == eos_id  # (N,)
        seps = np.flatnonzero(is_eos)
        doc_end = seps if N and is_eos[-1] else np.append(seps, N)
        doc_start = np.concatenate([[0], seps + 1])[: len(doc_end)]
        keep = doc_end > doc_start
        self.doc_start, self.doc_end = doc_start[keep], doc_end[keep]
        flag = np.zeros(N + 1, dtype=bool)
        flag[self.doc_start] = True
        flag[np.flatnonzero(sentence_end[tokens]) + 1] = True
        flag = flag[:N] & ~is_eos
        self.start = np.flatnonzero(flag)
        self.doc = np.searchsorted(self.doc_start, self.start, side="right") - 1
        # A sentence ends where the next begins, or at its document's end.
        self.end = np.minimum(np.append(self.start[1:], N), self.doc_end[self.doc])
        self.first = np.searchsorted(self.start, self.doc_start)
        self.count = np.diff(np.append(self.first, len(self.start)))
        self.multi = np.flatnonzero(self.count >= 2)  # documents that can give an IsNext pair

    @property
    def num_docs(self) -> int:
        return len(self.doc_start)


def _index(u: float, n: int) -> int:
    """A uniform integer in [0, n) from a uniform float in [0, 1)."""
    return min(int(u * n), n - 1)


class MLMData:
    """Masked batches (with NSP pairs when ``nsp``) drawn from one split of token shards."""

    def __init__(self, shards: TokenShards, vocab: MLMVocab, block_size: int, *,
                 nsp: bool = False, mask_prob: float = 0.15, whole_word: bool = False) -> None:
        self.shards, self.vocab, self.block = shards, vocab, block_size
        self.nsp, self.mask_prob, self.whole_word = nsp, mask_prob, whole_word
        where = f"{shards.manifest_path} (split {shards.split!r})"
        if block_size < 5:
            raise LmlabError(f"block_size {block_size} is too small for masked-LM inputs")
        assert vocab.word_start is not None or not whole_word, "MLMVocab built without whole_word"
        self.sentences: Sentences | None = None
        if nsp:
            assert vocab.sentence_end is not None
            # The whole split is indexed (a memmap for one shard, else a copy in
            # memory): fine for corpora of up to a few hundred million tokens.
            self.tokens = shards.tokens()
            self.sentences = Sentences(self.tokens, vocab.eos_id, vocab.sentence_end)
            if self.sentences.num_docs < 2 or len(self.sentences.multi) == 0:
                raise LmlabError(
                    f"{where}: next-sentence prediction needs at least two documents, one of "
                    f"them of two or more sentences (found {self.sentences.num_docs} documents, "
                    f"{len(self.sentences.multi)} with several sentences); drop --nsp")
        elif shards.num_tokens < block_size - 1:
            raise LmlabError(f"{where}: {shards.num_tokens} tokens, too few for one window "
                             f"of {block_size - 2} tokens")

    def most_frequent_token(self, chunk: int = 1 << 24) -> int:
        """The split's most frequent non-special token: the trivial predictor's answer.

        Counted in chunks (np.bincount copies its input to int64); with NSP the
        stream already in memory is reused rather than concatenated again.
        """
        special = self.vocab.special
        counts = np.zeros(len(special), dtype=np.int64)
        tokens = self.tokens if self.nsp else self.shards.tokens()
        for i in range(0, len(tokens), chunk):
            counts += np.bincount(tokens[i:i + chunk], minlength=len(special))[: len(special)]
        counts[special.numpy()] = -1
        return int(counts.argmax())

    # -- unmasked examples -------------------------------------------------
    def windows(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """``[CLS] window [SEP]`` rows of random stream windows, (B, block_size), no padding."""
        x, _ = self.shards.sample_batch(batch_size, self.block - 2, generator)  # (B, T-2)
        cls = torch.full((batch_size, 1), self.vocab.cls_id, dtype=torch.long)
        sep = torch.full((batch_size, 1), self.vocab.sep_id, dtype=torch.long)
        return torch.cat([cls, x, sep], dim=1)

    def pair(self, u: list[float]) -> Pair:
        """One NSP pair from eight uniform numbers (BERT's create_instances_from_document).

        A is one or more whole sentences from a random start in a random
        document; B is the sentences that follow (IsNext) or, half the time,
        sentences from a random start in another document (NotNext). The pair
        is cut to ``block_size - 3`` tokens (room for [CLS] and two [SEP]) by
        trimming the longer segment, A from its start and B from its end, so an
        IsNext pair stays contiguous at the seam the model must judge.
        """
        s = self.sentences
        assert s is not None
        budget = self.block - 3
        if u[0] < SHORT_PAIR_PROB:
            budget = 2 + _index(u[1], budget - 1)  # 2 .. block_size-3
        d = int(s.multi[_index(u[2], len(s.multi))])
        first, last = int(s.first[d]), int(s.first[d] + s.count[d] - 1)
        i = first + _index(u[3], last - first)  # never the last sentence: B needs one after it
        # Sentences i .. j-1 until the budget is filled (at least two).
        j = int(np.searchsorted(s.end[i:last + 1], s.start[i] + budget, side="left")) + i + 1
        j = min(max(j, i + 2), last + 1)
        k = i + 1 + _index(u[4], j - i - 1)  # A = sentences i .. k-1, at least one each side
        a0, a1 = int(s.start[i]), int(s.end[k - 1])
        not_next = u[5] < NOT_NEXT_PROB
        if not_next:
            other = _index(u[6], s.num_docs - 1)
            if other >= d:  # any document but d
                other += 1
            o_first, o_last = int(s.first[other]), int(s.first[other] + s.count[other] - 1)
            m = o_first + _index(u[7], o_last - o_first + 1)
            b0 = int(s.start[m])
            want = max(budget - (a1 - a0), 1)
            n = int(np.searchsorted(s.end[m:o_last + 1], b0 + want, side="left")) + m
            b1 = int(s.end[min(n, o_last)])
        else:
            b0, b1 = int(s.start[k]), int(s.end[j - 1])
        la, lb = _truncate(a1 - a0, b1 - b0, budget)
        return Pair(a1 - la, a1, b0, b0 + lb, not_next)

    def pairs(self, batch_size: int, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[CLS] A [SEP] B [SEP]`` rows, right-padded to the longest.

        Returns input ids, token types, attention mask (each (B, T)) and NSP labels (B,).
        """
        v = self.vocab
        u = torch.rand((batch_size, 8), generator=generator, dtype=torch.float64).tolist()
        pairs = [self.pair(row) for row in u]
        T = max(p.a1 - p.a0 + p.b1 - p.b0 + 3 for p in pairs)
        ids = torch.full((batch_size, T), v.pad_id, dtype=torch.long)
        types = torch.zeros((batch_size, T), dtype=torch.long)
        attn = torch.zeros((batch_size, T), dtype=torch.long)
        for r, p in enumerate(pairs):
            a = self.tokens[p.a0:p.a1].astype(np.int64)
            b = self.tokens[p.b0:p.b1].astype(np.int64)
            row = np.concatenate([[v.cls_id], a, [v.sep_id], b, [v.sep_id]])
            n, la = len(row), len(a) + 2
            ids[r, :n] = torch.from_numpy(row)
            types[r, la:n] = 1
            attn[r, :n] = 1
        labels = torch.tensor([int(p.not_next) for p in pairs], dtype=torch.long)
        return ids, types, attn, labels

    # -- masked batches ----------------------------------------------------
    def sample(self, batch_size: int, generator: torch.Generator) -> MLMBatch:
        """A freshly masked batch (dynamic masking)."""
        v = self.vocab
        types = attn = nsp_labels = None
        if self.nsp:
            ids, types, attn, nsp_labels = self.pairs(batch_size, generator)
        else:
            ids = self.windows(batch_size, generator)
        word_start = v.word_start[ids] if self.whole_word and v.word_start is not None else None
        inputs, labels = mask_tokens(ids, ~v.unmaskable[ids], word_start, v.mask_id,
                                     v.vocab_size, generator, prob=self.mask_prob,
                                     random_ids=v.random_ids)
        return MLMBatch(inputs, labels, attn, types, nsp_labels)


def _truncate(la: int, lb: int, budget: int) -> tuple[int, int]:
    """Lengths after trimming the longer of two segments one token at a time to ``budget``.

    BERT's truncate_seq_pair in closed form: ties trim B, so A keeps the odd token.
    """
    excess = la + lb - budget
    if excess <= 0:
        return la, lb
    if la - excess >= lb:
        return la - excess, lb
    if lb - excess >= la:
        return la, lb - excess
    return budget - budget // 2, budget // 2


def fixed_batches(data: MLMData, n_batches: int, batch_size: int, seed: int) -> list[MLMBatch]:
    """``n_batches`` masked batches from their own generator: the same set every time."""
    g = torch.Generator().manual_seed(seed)
    return [data.sample(batch_size, g) for _ in range(n_batches)]


# ------------------------------------------------------------------------ loss and metrics
def pretraining_losses(model: BertForPreTraining, batch: MLMBatch
                       ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor,
                                  torch.Tensor | None]:
    """(MLM loss, NSP loss or None, MLM logits (N, V), NSP logits (B, 2) or None).

    The MLM head runs on the masked positions only; both losses are means
    (over masked tokens, over pairs), and BERT's objective is their sum.
    """
    masked = batch.masked_positions  # (B, T)
    mlm_logits, nsp_logits = model(batch.input_ids, batch.attention_mask,
                                   batch.token_type_ids, mlm_positions=masked)
    targets = batch.labels[masked]  # (N,)
    # Nothing masked (degenerate input): a zero loss without gradient, not NaN.
    mlm = F.cross_entropy(mlm_logits.float(), targets) if len(targets) else mlm_logits.sum() * 0.0
    nsp = None
    if nsp_logits is not None and batch.nsp_labels is not None:
        nsp = F.cross_entropy(nsp_logits.float(), batch.nsp_labels)
    return mlm, nsp, mlm_logits, nsp_logits


@dataclass
class MLMScore:
    """Validation sums over the fixed batches; the properties are the reported rates."""

    mlm_nll: float  # nats, summed over masked tokens
    masked: int  # masked (predicted) tokens
    correct: int  # masked tokens predicted exactly
    most_frequent: int  # masked tokens equal to the training split's most frequent token
    nsp_nll: float = 0.0  # nats, summed over pairs
    nsp_correct: int = 0
    pairs: int = 0  # 0 without NSP

    @property
    def mlm_loss(self) -> float:
        return self.mlm_nll / max(self.masked, 1)

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.mlm_loss, 700.0))

    @property
    def masked_accuracy(self) -> float:
        return self.correct / max(self.masked, 1)

    @property
    def most_frequent_rate(self) -> float:
        """Accuracy of always predicting the most frequent token: the bar to beat."""
        return self.most_frequent / max(self.masked, 1)

    @property
    def nsp_loss(self) -> float:
        return self.nsp_nll / max(self.pairs, 1)

    @property
    def nsp_accuracy(self) -> float:
        return self.nsp_correct / max(self.pairs, 1)

    @property
    def loss(self) -> float:
        """The training objective: MLM loss, plus NSP loss with NSP (as the train rows)."""
        return self.mlm_loss + (self.nsp_loss if self.pairs else 0.0)

    def to_dict(self) -> dict[str, float | int]:
        d: dict[str, float | int] = {
            "loss": self.loss, "mlm_loss": self.mlm_loss, "perplexity": self.perplexity,
            "masked_accuracy": self.masked_accuracy,
            "most_frequent_rate": self.most_frequent_rate, "masked_tokens": self.masked}
        if self.pairs:
            d.update(nsp_loss=self.nsp_loss, nsp_accuracy=self.nsp_accuracy, pairs=self.pairs)
        return d

    def summary(self) -> str:
        text = (f"val mlm loss {self.mlm_loss:.4f} (ppl {self.perplexity:.2f}), masked-token "
                f"accuracy {self.masked_accuracy:.1%} vs most-frequent-token rate "
                f"{self.most_frequent_rate:.1%}")
        if self.pairs:
            text += f", NSP accuracy {self.nsp_accuracy:.1%}"
        return text


@torch.no_grad()
def evaluate_mlm(model: BertForPreTraining, batches: list[MLMBatch],
                 most_frequent_id: int) -> MLMScore:
    """Score ``batches`` in eval mode (no dropout); the model's mode is restored after."""
    was_training = model.training
    model.eval()
    score = MLMScore(0.0, 0, 0, 0)
    try:
        for batch in batches:
            _, _, mlm_logits, nsp_logits = pretraining_losses(model, batch)
            targets = batch.labels[batch.masked_positions]  # (N,)
            score.mlm_nll += F.cross_entropy(mlm_logits.float(), targets,
                                             reduction="sum").item()
            score.masked += len(targets)
            score.correct += int((mlm_logits.argmax(-1) == targets).sum())
            score.most_frequent += int((targets == most_frequent_id).sum())
            if nsp_logits is not None and batch.nsp_labels is not None:
                score.nsp_nll += F.cross_entropy(nsp_logits.float(), batch.nsp_labels,
                                                 reduction="sum").item()
                score.nsp_correct += int((nsp_logits.argmax(-1) == batch.nsp_labels).sum())
                score.pairs += len(batch.nsp_labels)
    finally:
        model.train(was_training)
    return score
