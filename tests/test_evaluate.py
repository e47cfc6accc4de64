"""Sliding-window perplexity and bits per byte."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmlab.config import GPTConfig
from lmlab.evaluate import LMScore, score_tokens, unigram_score, window_starts
from lmlab.models.gpt import GPT


@pytest.mark.parametrize("n,block,stride", [(100, 16, 16), (100, 16, 5), (17, 16, 8), (5, 16, 4)])
def test_windows_score_every_target_once(n, block, stride):
    scored = []
    for start, first in window_starts(n, block, stride):
        length = min(block, n - 1 - start)
        assert length <= block
        scored += [start + 1 + i for i in range(first, length)]
    assert scored == list(range(1, n))


def test_sliding_window_equals_direct_computation_within_context():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("gpt-nano", vocab_size=31, block_size=64)).eval()
    toks = np.random.default_rng(0).integers(0, 31, 50)
    nll, count = score_tokens(model, toks, stride=7)
    x = torch.tensor(toks[None, :-1])
    with torch.no_grad():
        direct = F.cross_entropy(model(x)[0], torch.tensor(toks[1:]), reduction="sum")
    assert count == 49
    assert nll == pytest.approx(direct.item(), rel=1e-5)


def test_smaller_stride_gives_more_context_and_lower_loss_on_repeats():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("gpt-nano", vocab_size=31, block_size=16)).eval()
    toks = np.tile(np.arange(31), 4)
    a, n_a = score_tokens(model, toks, stride=16)
    b, n_b = score_tokens(model, toks, stride=4)
    assert n_a == n_b == len(toks) - 1
    assert a != b


def test_shorter_context_windows_equal_a_model_of_that_context():
    """``context`` cuts the windows as a model with that context would: the same weights
    built with block_size 16 score the same tokens the same."""
    torch.manual_seed(0)
    long = GPT(GPTConfig.from_name("gpt-nano", vocab_size=31, block_size=64)).eval()
    short = GPT(GPTConfig.from_name("gpt-nano", vocab_size=31, block_size=16)).eval()
    sd = long.state_dict()
    sd["transformer.wpe.weight"] = sd["transformer.wpe.weight"][:16]
    short.load_state_dict(sd)
    toks = np.random.default_rng(1).integers(0, 31, 60)
    got = score_tokens(long, toks, stride=8, context=16)
    want = score_tokens(short, toks, stride=8)
    assert got[1] == want[1] == 59 and got[0] == pytest.approx(want[0], rel=1e-6)


def test_bits_per_byte_and_unigram():
    s = LMScore(nll=100 * math.log(2), tokens=50, n_bytes=200)
    assert s.bits_per_byte == pytest.approx(0.5)
    assert s.perplexity == pytest.approx(4.0)
    train = np.array([0, 0, 1, 1])
    u = unigram_score(train, np.array([2, 0, 1]), vocab_size=3, n_bytes=2)
    # add-one: p(0) = p(1) = 3/7; targets are 0 and 1
    assert u.loss == pytest.approx(-math.log(3 / 7))
