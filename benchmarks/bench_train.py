"""Training throughput: lmlab's Trainer against a plain PyTorch loop over HF GPT2LMHeadModel.

Both sides train the same model (gpt-micro: 4 layers, 4 heads, 128 wide, context
64, dropout 0) on the same character-level tokens of the Lee corpus (shipped
with gensim), from the same initial weights, on the same batches, with the
same AdamW hyper-parameters, gradient clipping and warm-up + cosine schedule.

* lmlab: ``lmlab.train.loop.Trainer`` built from a ``TrainConfig`` exactly as
  ``lmlab pretrain`` builds it; each step is ``Trainer.train_step``, the step
  ``Trainer.fit`` runs (lr from ``lr_at``, forward and backward, clip, fused
  AdamW step). Evaluation, checkpoints and logging are left out.
* HF: ``GPT2LMHeadModel`` with ``attn_implementation="sdpa"``, initialized with
  lmlab's initial weights via ``to_hf_gpt2``; its batches come from the same
  ``TokenShards.sample_batch`` with an identically seeded ``torch.Generator``.
  Its AdamW groups follow the HF Trainer's rule (no decay for biases and
  LayerNorm weights). Two optimizers are run: ``torch.optim.AdamW`` with its
  defaults (a per-tensor loop on CPU), and ``fused=True``, which is what the HF
  Trainer's default ``optim="adamw_torch_fused"`` picks with torch >= 2.8.

Every variant runs warm-up steps, then ``repeats`` timed chunks of
``chunk_steps`` steps; the variants' chunks are interleaved (A B C A B C ...)
so that machine noise hits all of them alike. tokens/s is the median over the
chunks. The loss of every step is kept; the table reports the largest
difference to the HF run over all steps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OthersCpu, machine_line, median, spread, table, verdict  # noqa: E402

PRESET = "gpt-micro"
BATCH = 12
SEED = 1337
THREADS = 2
TARGET = 1.5  # lmlab tokens/s over the HF peer's


@dataclass
class Settings:
    warmup: int = 20
    repeats: int = 20
    chunk_steps: int = 10
    variants: tuple[str, ...] = ("eager", "compile", "bf16")

    @property
    def total_steps(self) -> int:
        return self.warmup + self.repeats * self.chunk_steps


QUICK = Settings(warmup=3, repeats=3, chunk_steps=4, variants=("eager", "bf16"))


@dataclass
class Run:
    """One variant's record: per-step loss and time, batch fingerprints, chunk rates."""

    name: str
    step: Callable[[int], float]
    losses: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)
    chunk_tps: list[float] = field(default_factory=list)
    batch_ids: list[int] = field(default_factory=list)
    setup_s: float = 0.0
    compile_s: float | None = None
    next_step: int = 0

    def advance(self, n: int) -> float:
        """Run n steps; return their wall time."""
        t_all = time.perf_counter()
        for _ in range(n):
            t0 = time.perf_counter()
            self.losses.append(self.step(self.next_step))
            self.step_s.append(time.perf_counter() - t0)
            self.next_step += 1
        return time.perf_counter() - t_all


def _fingerprint(x: torch.Tensor) -> int:
    w = torch.arange(1, x.numel() + 1, dtype=torch.int64)
    return int((x.flatten() * w).sum())


# ----------------------------------------------------------------- data
def lee_documents() -> list[str]:
    from gensim.test.utils import datapath

    text = Path(datapath("lee_background.cor")).read_text(encoding="utf-8", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def build_shards(workdir: Path) -> Path:
    """Lee corpus -> corpus dir (train/val jsonl) -> char tokenizer -> token shards."""
    from lmlab.data.shards import prepare
    from lmlab.tokenizer import Tokenizer

    docs = lee_documents()
    n_val = max(1, len(docs) // 10)
    corpus = workdir / "corpus"
    corpus.mkdir(parents=True)
    for split, part in (("train", docs[:-n_val]), ("val", docs[-n_val:])):
        with (corpus / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for text in part:
                f.write(json.dumps({"text": text}) + "\n")
    tok = Tokenizer.train(docs[:-n_val], kind="char", vocab_size=512)
    tok.save(workdir / "tokenizer.json")
    prepare(corpus, workdir / "tokenizer.json", workdir / "shards", progress=False)
    return workdir / "shards"


# ----------------------------------------------------------------- lmlab
def train_config(shards: Path, out: Path, total_steps: int, dtype: str = "float32",
                 compile: bool = False):
    from lmlab.train.loop import TrainConfig

    # Schedule defaults of TrainConfig (lr 1e-3, warm-up 50, cosine to lr/10,
    # AdamW betas (0.9, 0.95), weight decay 0.1, clip 1.0); the run ends at total_steps.
    return TrainConfig(data=str(shards), out=str(out), preset=PRESET, batch_size=BATCH,
                       dropout=0.0, max_steps=total_steps, eval_interval=10**9, seed=SEED,
                       dtype=dtype, compile=compile, threads=THREADS)


def lmlab_run(name: str, shards: Path, out: Path, total_steps: int, dtype: str,
              compile: bool) -> tuple[Run, dict[str, torch.Tensor]]:
    """A Trainer as `lmlab pretrain` builds it; returns the run and its initial weights."""
    from lmlab.models.weights import model_state
    from lmlab.train.loop import Trainer

    t0 = time.perf_counter()
    tr = Trainer(train_config(shards, out, total_steps, dtype, compile), progress=False)
    init = {k: v.clone() for k, v in model_state(tr.model).items()}
    tr.model.train()
    run = Run(name, step=lambda s: 0.0)

    sample = tr.train_data.sample_batch

    def recording_sample(b: int, t: int, g: torch.Generator, rows: slice | None = None):
        x, y = sample(b, t, g, rows=rows)
        run.batch_ids.append(_fingerprint(x))
        return x, y

    tr.train_data.sample_batch = recording_sample  # type: ignore[method-assign]

    def step(s: int) -> float:
        # Trainer.fit's step, without its validation, logging and checkpoints.
        return tr.train_step(s)[0]

    run.step = step
    run.setup_s = time.perf_counter() - t0
    run.trainer = tr  # type: ignore[attr-defined]  # kept alive; closed by the caller
    return run, init


# ----------------------------------------------------------------- HF peer
def hf_run(name: str, shards: Path, init: dict[str, torch.Tensor], vocab_size: int,
           total_steps: int, fused: bool) -> Run:
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmlab.config import GPTConfig
    from lmlab.data.shards import TokenShards
    from lmlab.interop.hf_gpt2 import hf_gpt2_config, to_hf_gpt2
    from lmlab.train.loop import lr_at

    t0 = time.perf_counter()
    tcfg = train_config(shards, Path("unused"), total_steps)
    mcfg = GPTConfig.from_name(PRESET, vocab_size=vocab_size, dropout=0.0)
    # use_cache=False: a training forward needs no KV cache (the HF default
    # would build an empty DynamicCache every step).
    hf_cfg = GPT2Config(**hf_gpt2_config(mcfg), attn_implementation="sdpa", use_cache=False)
    model = GPT2LMHeadModel(hf_cfg)
    model.load_state_dict(to_hf_gpt2(init), strict=True)
    model.train()
    # The HF Trainer's grouping: no weight decay for biases and LayerNorm weights.
    no_decay_names = {n for n, _ in model.named_parameters() if "bias" in n or ".ln_" in n}
    decay = [p for n, p in model.named_parameters() if n not in no_decay_names]
    no_decay = [p for n, p in model.named_parameters() if n in no_decay_names]
    assert all(p.dim() >= 2 for p in decay) and all(p.dim() < 2 for p in no_decay)
    groups = [{"params": decay, "weight_decay": tcfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2),
                            fused=True if fused else None)
    data = TokenShards(shards, "train")
    gen = torch.Generator().manual_seed(SEED)
    block = mcfg.block_size
    params = list(model.parameters())
    run = Run(name, step=lambda s: 0.0)

    def step(s: int) -> float:
        lr = lr_at(s, tcfg)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = data.sample_batch(BATCH, block, gen)
        run.batch_ids.append(_fingerprint(x))
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        value = loss.item()
        torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return value

    run.step = step
    run.setup_s = time.perf_counter() - t0
    return run


# ----------------------------------------------------------------- driver
VARIANTS = {
    # name: (label, dtype, compile)
    "eager": ("lmlab eager fp32", "float32", False),
    "compile": ("lmlab torch.compile fp32", "float32", True),
    "bf16": ("lmlab eager bf16 autocast", "bfloat16", False),
    "compile-bf16": ("lmlab torch.compile bf16 autocast", "bfloat16", True),
}


def run_benchmark(settings: Settings, log: Callable[[str], None] = print) -> dict:
    torch.set_num_threads(THREADS)
    results: dict = {"settings": settings.__dict__ | {"total_steps": settings.total_steps}}
    with tempfile.TemporaryDirectory(prefix="lmlab-bench-train-") as tmp:
        work = Path(tmp)
        # A fresh inductor cache: compile times are those of a first run.
        saved_cache_dir = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor")
        try:
            runs, hf_default, hf_fused, vocab, train_tokens, others_busy = _run_all(
                settings, work, log)
        finally:
            if saved_cache_dir is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = saved_cache_dir

    for peer in (hf_default, hf_fused):
        assert peer.batch_ids == runs[0].batch_ids, "HF peer saw different batches"
    for run in runs:
        assert run.batch_ids == runs[0].batch_ids, f"{run.name} saw different batches"

    results["others_cpu_during_timing"] = others_busy
    results["vocab_size"] = vocab
    results["train_tokens"] = train_tokens
    results["runs"] = [
        {"name": r.name, "tokens_per_s": median(r.chunk_tps), "chunk_tokens_per_s": r.chunk_tps,
         "first_steps_excess_s": r.compile_s, "setup_s": r.setup_s, "losses": r.losses,
         "step_s": r.step_s}
        for r in runs
    ]
    results["peer_default"] = hf_default.name
    results["peer_fused"] = hf_fused.name
    return results


def _run_all(settings: Settings, work: Path, log: Callable[[str], None]):
    from lmlab.data.shards import TokenShards

    shards = build_shards(work)
    vocab = json.loads((shards / "manifest.json").read_text())["tokenizer"]["vocab_size"]
    train_tokens = TokenShards(shards, "train").num_tokens
    n = settings.total_steps
    runs: list[Run] = []
    init = None
    for key in settings.variants:
        label, dtype, comp = VARIANTS[key]
        run, init_k = lmlab_run(label, shards, work / f"run-{key}", n, dtype, comp)
        if init is None:
            init = init_k
        else:  # same seed -> same initial weights in every variant
            assert all(torch.equal(init[k], init_k[k]) for k in init)
        runs.append(run)
    assert init is not None
    hf_default = hf_run("HF GPT2 + AdamW (torch default)", shards, init, vocab,
                        n, fused=False)
    hf_fused = hf_run("HF GPT2 + AdamW fused (HF Trainer default)", shards, init,
                      vocab, n, fused=True)
    runs += [hf_default, hf_fused]

    tokens_per_step = BATCH * 64
    for run in runs:
        log(f"  warm-up: {run.name} ({settings.warmup} steps)")
        run.advance(settings.warmup)
    others = OthersCpu().start()
    for rep in range(settings.repeats):
        log(f"  timed chunk {rep + 1}/{settings.repeats}")
        for run in runs:
            dt = run.advance(settings.chunk_steps)
            run.chunk_tps.append(settings.chunk_steps * tokens_per_step / dt)
    others_busy = others.stop()
    for run in runs:
        steady = median(run.step_s[settings.warmup:])
        # Compilation happens in the first steps: their excess over a steady step.
        run.compile_s = sum(s - steady for s in run.step_s[:settings.warmup])
        tr = getattr(run, "trainer", None)
        if tr is not None:
            tr.logger.close()
            del run.trainer  # type: ignore[attr-defined]

    return runs, hf_default, hf_fused, vocab, train_tokens, others_busy


def format_results(res: dict) -> str:
    s = res["settings"]
    runs = {r["name"]: r for r in res["runs"]}
    p_def = runs[res["peer_default"]]
    p_fus = runs[res["peer_fused"]]
    rows = []
    for r in res["runs"]:
        tps = r["tokens_per_s"]
        is_peer = r["name"] in (p_def["name"], p_fus["name"])
        diff = max(abs(a - b) for a, b in zip(r["losses"], p_def["losses"], strict=True))
        compile_s = r["first_steps_excess_s"]
        rows.append([
            r["name"],
            f"{tps:,.0f}",
            spread(r["chunk_tokens_per_s"]),
            f"{1e3 * median(r['step_s'][s['warmup']:]):.1f}",
            f"{tps / p_def['tokens_per_s']:.2f}x",
            f"{tps / p_fus['tokens_per_s']:.2f}x",
            "-" if is_peer else verdict(tps / p_def["tokens_per_s"], TARGET),
            f"{compile_s:.1f} s" if "compile" in r["name"] else "-",
            f"{diff:.1e}" if r["name"] != p_def["name"] else "(reference)",
        ])
    headers = ["variant", "tokens/s (median)", "IQR over chunks", "ms/step",
               "vs HF (AdamW default)", "vs HF (AdamW fused)",
               f">= {TARGET}x HF default?", "compile time",
               "max abs loss diff vs HF default"]
    out = [
        f"### Training throughput: {PRESET} (4 layers, 4 heads, 128 wide, context 64), "
        f"batch {BATCH}, char-level Lee corpus",
        "",
        f"vocab {res['vocab_size']}, {res['train_tokens']:,} training tokens; "
        f"{s['warmup']} warm-up steps + {s['repeats']} interleaved chunks x "
        f"{s['chunk_steps']} steps per variant ({BATCH * 64} tokens/step); "
        "identical batches and initial weights on every row (checked). "
        f"Other processes used {res['others_cpu_during_timing']:.0%} of the CPUs during the "
        "timed chunks.",
        "",
        table(headers, rows),
        "",
        "compile time = wall time of the warm-up steps beyond steady steps (cold inductor "
        "cache); it is excluded from tokens/s. Loss differences are over all "
        f"{s['total_steps']} steps; fp32 rows should be ~1e-5 or below, bf16 rows differ by "
        "rounding.",
    ]
    # A few loss values so the numbers behind the max difference are visible.
    n = len(p_def["losses"])
    picks = sorted({0, 1, n // 4, n // 2, 3 * n // 4, n - 1})
    loss_rows = [[str(i + 1)] + [f"{r['losses'][i]:.6f}" for r in res["runs"]] for i in picks]
    out += ["", "Loss at selected steps:", "",
            table(["step"] + [r["name"] for r in res["runs"]], loss_rows)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few steps only (smoke test)")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    args = ap.parse_args(argv)
    settings = QUICK if args.quick else Settings()
    t0 = time.perf_counter()
    res = run_benchmark(settings, log=lambda m: print(m, file=sys.stderr))
    res["wall_s"] = time.perf_counter() - t0
    print(machine_line())
    print()
    print(format_results(res))
    print(f"\nwall time: {res['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
