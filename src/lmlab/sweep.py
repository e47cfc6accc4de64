"""`lmlab sweep`: a scaling-law sweep, model size against loss at a fixed budget.

Kaplan et al. (2020) found that a language model's loss falls as a power of its
size, L(N) = E + A / N^alpha, with N the non-embedding parameters (counting the
vocabulary and position tables blurs the law at small sizes), and Hoffmann et
al. (2022, "Chinchilla") wrote the training compute of N parameters over D
tokens as C = 6 N D (2 N per token forward, 4 N backward). This module trains
a ladder of sizes on one set of shards, each at the same budget:

- ``--tokens D``: every size reads D training tokens (the same data);
- ``--flops C``: every size spends C FLOPs, so a size of N parameters (all of
  them: the output layer's matmul is real compute, and at these sizes most of
  it) reads D = C / (6 N) tokens: small models read more.

Each size is an ordinary pretraining run in OUT/SIZE (``train/loop.py`` on the
one engine), so it checkpoints, resumes and runs under torchrun as `lmlab
pretrain` does; running the sweep again skips the sizes that finished and
resumes the others. Each finished size is scored on the whole validation split
(``evaluate.score_tokens``), and ``fit_power_law`` fits E, A and alpha to the
points by least squares: for a fixed alpha the model is linear in E and A, so
the fit is a grid over alpha with a closed-form solve at each point, refined by
golden-section search. Results: OUT/sweep.json, OUT/sweep.md and
OUT/scaling.png.
"""

from __future__ import annotations

import json
import math
import re
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.atomic import write_text
from lmlab.errors import LmlabError
from lmlab.options import refuse_foreign
from lmlab.train.configs import SweepConfig, TrainConfig

# The default ladder: gpt-nano's design (GPT-2 blocks, a head per 32 dimensions), deeper
# and wider together as Kaplan's models were: non-embedding sizes 0.1M to 1.8M, a ladder
# that trains in minutes on two CPU cores (wider ones: --sizes 6x256 8x384 ...).
DEFAULT_SIZES = ("gpt-nano", "2x96", "3x128", "4x160", "4x192")
HEAD_SIZE = 32  # the width of a head in an LxD shape, as in gpt-nano (64 / 2)
# What the sweep writes in OUT beside the size folders.
SWEEP_FILES = {"sweep_config.json", "sweep.json", "sweep.md", "scaling.png"}
# Settings that may differ between a size's finished run and the sweep now: where the
# data and run are, and how the work is done or watched, not what is trained.
FREE_SETTINGS = {"data", "out", "threads", "device", "compile", "eval_interval",
                 "checkpoint_interval", "eval_tokens"}
ALPHAS = np.linspace(-1.0, 3.0, 4001)  # the search range of alpha, step 0.001


# ---------------------------------------------------------------- the sizes
@dataclass(frozen=True)
class Size:
    """One rung of the ladder: a GPT preset, with the shape overrides of an LxD size."""

    name: str  # the folder name in OUT
    preset: str
    n_layer: int | None = None  # None: the preset's
    n_head: int | None = None
    n_embd: int | None = None


def parse_size(spec: str) -> Size:
    """A size as given to --sizes: a GPT preset name, or LAYERSxWIDTH (gpt-nano's design
    with that depth and width, a head per 32 dimensions)."""
    from lmlab.models.registry import FAMILIES, family_of_preset

    shape = re.fullmatch(r"(\d+)x(\d+)", spec)
    if shape:
        n_layer, n_embd = int(shape[1]), int(shape[2])
        if n_layer < 1 or n_embd < HEAD_SIZE or n_embd % HEAD_SIZE:
            raise LmlabError(f"size {spec!r}: LAYERSxWIDTH needs at least one layer and a "
                             f"width that is a multiple of {HEAD_SIZE} (a head per "
                             f"{HEAD_SIZE} dimensions), e.g. 3x128")
        return Size(spec, "gpt-nano", n_layer, n_embd // HEAD_SIZE, n_embd)
    family = family_of_preset(spec)
    if family is None or family.name != "gpt":
        gpts = ", ".join(FAMILIES["gpt"].presets)
        what = "unknown size" if family is None else "not a GPT preset"
        raise LmlabError(f"--sizes: {spec!r}: {what}; give GPT presets ({gpts}) or "
                         "LAYERSxWIDTH shapes such as 3x128")
    return Size(spec, spec)


@dataclass
class SizePlan:
    """A size's run in the sweep: its pretraining config, size and budget, and whether it
    is to start (``new``), to go on (``resume``) or finished (``done``)."""

    size: Size
    train: TrainConfig
    params: int  # non-embedding parameters (Kaplan's N)
    params_total: int  # every parameter, a tied output layer once
    steps: int
    tokens: int  # steps x tokens per step
    state: str = "new"

    @property
    def flops(self) -> float:
        """Training compute, 6 N D with N every parameter (Chinchilla's count)."""
        return 6.0 * self.params_total * self.tokens

    @property
    def run_dir(self) -> Path:
        return Path(str(self.train.out))


def count_params(train: TrainConfig, vocab_size: int) -> tuple[int, int]:
    """(non-embedding, all) parameters of a run's model, built on the meta device (no
    memory, no initialisation cost)."""
    import torch

    from lmlab.models.registry import build_model

    with torch.device("meta"):
        model = build_model(train.model_config(vocab_size))
    return model.num_params(non_embedding=True), model.num_params()


def plan_sweep(cfg: SweepConfig, vocab_size: int, world_size: int = 1,
               overwrite: bool = False) -> list[SizePlan]:
    """Every size's pretraining run and budget, and what is left to do in each (checked
    against the run already in OUT/SIZE, before anything trains)."""
    sizes = [parse_size(s) for s in (cfg.sizes or DEFAULT_SIZES)]
    names = [s.name for s in sizes]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise LmlabError(f"--sizes: {', '.join(twice)} given more than once")
    per_step = cfg.batch_size * world_size * cfg.grad_accum * cfg.block_size
    shared = {k: v for k, v in cfg.settings().items()
              if k not in ("out", "sizes", "tokens", "flops", "warmup_steps")}
    plans = []
    for size in sizes:
        def config(steps: int, size: Size = size) -> TrainConfig:
            # A short run warms up for at most a tenth of its steps.
            return TrainConfig(**shared, out=str(Path(cfg.out) / size.name),
                               preset=size.preset, n_layer=size.n_layer, n_head=size.n_head,
                               n_embd=size.n_embd, max_steps=steps,
                               warmup_steps=min(cfg.warmup_steps, steps // 10))

        params, total = count_params(config(1), vocab_size)
        if cfg.tokens is not None:
            want = cfg.tokens
        else:
            assert cfg.flops is not None
            want = cfg.flops / (6 * total)
            if want < per_step:
                raise LmlabError(
                    f"--flops {cfg.flops:g} gives {size.name} ({total:,} parameters) "
                    f"{want:,.0f} tokens, less than one step of {per_step:,} tokens (batch x "
                    f"block x processes x accumulation); raise --flops")
        steps = max(1, math.ceil(want / per_step))  # at least the budget's tokens
        plan = SizePlan(size, config(steps), params, total, steps, steps * per_step)
        if not overwrite:
            plan.state = _state_of(plan)
        plans.append(plan)
    return plans


def _state_of(plan: SizePlan) -> str:
    """``new``, ``resume`` or ``done``: what the run in OUT/SIZE leaves to do; a run
    trained with other settings is refused (it would not be this sweep's point)."""
    from lmlab.models.weights import resolve_checkpoint
    from lmlab.train.checkpoint import STATE_FILE

    run = plan.run_dir
    if not (run / "checkpoints" / "latest").exists():
        return "new"
    saved_file = run / "train_config.json"
    try:
        saved = json.loads(saved_file.read_text(encoding="utf-8"))
        step = json.loads((resolve_checkpoint(run) / STATE_FILE).read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LmlabError(f"{run}: not a readable pretraining run ({e}); remove it, or "
                         "start the sweep over with --overwrite") from None
    now = asdict(plan.train)
    for key in sorted(set(now) - FREE_SETTINGS):
        if saved.get(key) != now[key]:
            raise LmlabError(
                f"{run}: trained with {key} = {saved.get(key)!r}, but the sweep now asks "
                f"for {now[key]!r}; run the sweep with that run's settings, in another "
                "--out, or start the sizes over with --overwrite")
    return "done" if step >= plan.steps else "resume"


# ---------------------------------------------------------------- the fit
@dataclass
class PowerLawFit:
    """L(N) = E + A / N^alpha fitted by least squares; ``ok`` only when it is a falling
    power law (alpha > 0, A > 0), else ``message`` says why not."""

    status: str  # ok | too_few | not_decreasing | no_power_law
    message: str
    points: int
    E: float | None = None
    A: float | None = None
    alpha: float | None = None
    rmse: float | None = None
    r2: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def formula(self) -> str:
        if self.E is None or self.A is None or self.alpha is None:
            return ""
        return f"L(N) = {self.E:.3f} + {self.A:.4g} / N^{self.alpha:.3f}"

    def predict(self, n: np.ndarray | float) -> np.ndarray:
        assert self.E is not None and self.A is not None and self.alpha is not None
        return self.E + self.A * np.asarray(n, dtype=np.float64) ** -self.alpha

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "formula": self.formula}


def _solve(n: np.ndarray, loss: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """For a fixed alpha the model is linear in (E, A): their least-squares values, with
    E >= 0 (a cross-entropy cannot fall below zero), and the sum of squared residuals."""
    x = n ** -alpha
    design = np.stack([np.ones_like(x), x], axis=1)  # (points, 2)
    (E, A), *_ = np.linalg.lstsq(design, loss, rcond=None)
    if E < 0:
        # The objective is a convex quadratic in (E, A): with the free optimum at E < 0,
        # the bounded one lies on E = 0, where A has a closed form.
        E, A = 0.0, float(x @ loss / (x @ x))
    r = loss - E - A * x
    return float(E), float(A), float(r @ r)


def fit_power_law(params: Sequence[float], losses: Sequence[float]) -> PowerLawFit:
    """Fit L(N) = E + A / N^alpha to (N, loss) points by least squares.

    A grid over alpha (``ALPHAS``, negative values included so that a loss that does
    not fall shows as alpha <= 0) with E and A solved in closed form at each point,
    then golden-section search around the best grid point. N is divided by its
    geometric mean inside, so N^-alpha stays near 1 for any alpha.
    """
    N = np.asarray(params, dtype=np.float64)
    L = np.asarray(losses, dtype=np.float64)
    k = len(N)
    if k < 3:
        return PowerLawFit("too_few", f"{k} finished size{'s' if k != 1 else ''}: fitting "
                           "E, A and alpha needs at least 3", k)
    order = np.argsort(N)
    N, L = N[order], L[order]
    if L[-1] >= L[0]:
        return PowerLawFit("not_decreasing", f"the loss does not fall with size ({L[0]:.4f} "
                           f"at N = {N[0]:,.0f}, {L[-1]:.4f} at N = {N[-1]:,.0f}): no power "
                           "law to fit; the larger sizes may need more tokens or a lower "
                           "--lr", k)
    ref = float(np.exp(np.log(N).mean()))
    n = N / ref
    sse = np.array([_solve(n, L, a)[2] for a in ALPHAS])
    i = int(np.argmin(sse))
    step = ALPHAS[1] - ALPHAS[0]
    lo, hi = ALPHAS[max(i - 1, 0)], ALPHAS[min(i + 1, len(ALPHAS) - 1)]
    # Golden-section search: the bracket shrinks by 0.618 a step, to 1e-9 of step.
    g = (math.sqrt(5) - 1) / 2
    c, d = hi - g * (hi - lo), lo + g * (hi - lo)
    while hi - lo > 1e-9 * step:
        if _solve(n, L, c)[2] < _solve(n, L, d)[2]:
            hi, d = d, c
            c = hi - g * (hi - lo)
        else:
            lo, c = c, d
            d = lo + g * (hi - lo)
    alpha = (lo + hi) / 2
    E, A_ref, rss = _solve(n, L, alpha)
    A = A_ref * ref ** alpha  # A_ref (N / ref)^-alpha = A_ref ref^alpha N^-alpha
    tss = float(((L - L.mean()) ** 2).sum())
    fit = PowerLawFit("ok", "", k, E, A, alpha, math.sqrt(rss / k),
                      1 - rss / tss if tss > 0 else float("nan"))
    if alpha <= 0 or A <= 0:
        fit.status = "no_power_law"
        fit.message = (f"the best fit has alpha = {alpha:.3f}, A = {A:.3g}: the loss does not "
                       "fall as a power of N over these sizes")
    elif alpha >= ALPHAS[-1] - step:
        fit.status = "no_power_law"
        fit.message = (f"alpha ran to the edge of the search ({ALPHAS[-1]:g}): the points do "
                       "not pin down a power law")
    elif k == 3:
        fit.message = "3 points for 3 parameters: the curve passes through them, untested"
    elif L[-1] < E:
        fit.message = (f"the largest size's loss ({L[-1]:.4f}) is below the fitted floor E: "
                       "the points scatter more than the curve bends")
    return fit


# ---------------------------------------------------------------- the report
def _count(x: float) -> str:
    """1234567 -> 1.23M: parameter and token counts at a glance."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.3g}{unit}"
    return f"{x:.0f}"


STATE_WORDS = {"new": "trained", "resume": "resumed", "done": "already done"}


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    from lmlab.runs import markdown_table

    headers = ["size", "layers", "width", "N (non-emb.)", "N (all)", "tokens", "C = 6ND",
               "val loss", "perplexity", "bits/byte", "run"]
    return markdown_table(headers, [
        [r["size"], r["n_layer"], r["n_embd"], f"{r['params']:,}", f"{r['params_total']:,}",
         _count(r["tokens"]), f"{r['flops']:.3g}", f"{r['val_loss']:.4f}",
         f"{r['val_perplexity']:.2f}", f"{r['val_bits_per_byte']:.4f}", STATE_WORDS[r["state"]]]
        for r in rows])


def budget_words(cfg: SweepConfig) -> str:
    if cfg.tokens is not None:
        return f"{cfg.tokens:,} tokens per size"
    return f"{cfg.flops:.3g} FLOPs per size (C = 6ND)"


def plot_scaling(rows: Sequence[dict[str, Any]], fit: PowerLawFit, path: Path,
                 title: str) -> Path:
    """Validation loss against non-embedding parameters on log-log axes: the points, and
    the fitted curve with its formula when the fit is a falling power law."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter

    N = np.array([r["params"] for r in rows], dtype=np.float64)
    L = np.array([r["val_loss"] for r in rows], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(7, 4.6), dpi=110)
    ax.plot(N, L, "o", color="tab:blue", zorder=3, label="validation loss")
    for r, x, y in zip(rows, N, L, strict=True):
        ax.annotate(r["size"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    if fit.ok:
        assert fit.E is not None and fit.A is not None and fit.alpha is not None
        grid = np.geomspace(N.min() / 1.5, N.max() * 1.5, 200)
        ax.plot(grid, fit.predict(grid), "-", color="tab:red",
                label=f"fit: $L(N) = {fit.E:.3f} + {fit.A:.4g}\\,/\\,N^{{{fit.alpha:.3f}}}$"
                      f"\n(RMSE {fit.rmse:.4f}, R² {fit.r2:.3f}; E: an unlimited model's loss at "
                      "this budget)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    # At least a decade of N, so that a power of ten is labelled; unlabelled minor ticks.
    ax.set_xlim(N.min() / 3, N.max() * 3)
    ax.xaxis.set_minor_formatter(NullFormatter())
    # Losses span less than a decade: plain numbers between the lowest and the highest.
    lo, hi = L.min(), L.max()
    pad = max(hi - lo, 0.02 * hi) * 0.15
    ax.set_ylim(lo - pad, hi + pad)
    ticks = MaxNLocator(5).tick_values(lo - pad, hi + pad)
    ax.set_yticks([t for t in ticks if lo - pad <= t <= hi + pad])
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("validation loss (nats/token)")
    ax.grid(which="both", alpha=0.3)
    # Below the axes: inside, it would hide points or their names.
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    heading = title if fit.ok else f"{title}\nno fit: {fit.message}"
    ax.set_title("\n".join(line for part in heading.split("\n")
                            for line in textwrap.wrap(part, 90)), fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def write_report(out: Path, cfg: SweepConfig, rows: Sequence[dict[str, Any]],
                 fit: PowerLawFit, data_info: dict[str, Any]) -> str:
    """OUT/sweep.json, OUT/sweep.md and OUT/scaling.png; returns the table and fit text."""
    table = format_table(rows)
    fit_line = (f"fit: {fit.formula} (N: non-embedding parameters; RMSE {fit.rmse:.4f}, "
                f"R² {fit.r2:.3f}, {fit.points} points)" if fit.ok
                else f"no fit: {fit.message}")
    if fit.ok and fit.message:
        fit_line += f"; {fit.message}"
    budget = budget_words(cfg)
    text = f"{table}\n\n{fit_line}"
    write_text(out / "sweep.md", f"# Scaling sweep on {cfg.data}: {budget}\n\n{text}\n\n"
               f"Validation: the whole split ({data_info['val_tokens']:,} tokens), loss in "
               f"nats/token. C = 6ND counts every parameter; the fit uses the non-embedding "
               f"N (Kaplan et al. 2020).\n")
    write_text(out / "sweep.json", json.dumps(
        {"config": cfg.settings(), "budget": budget, "data": data_info, "sizes": list(rows),
         "fit": fit.to_dict()}, indent=2) + "\n")
    plot_scaling(rows, fit, out / "scaling.png",
                 f"{cfg.data}: {budget}, context {cfg.block_size}")
    return text


# ---------------------------------------------------------------- the sweep
def _refuse_foreign(out: Path, plans: Sequence[SizePlan]) -> None:
    """OUT holds only what sweeps make: their files and pretraining runs (also of sizes
    that an earlier sweep there had and this one has not)."""
    runs = {p.name for p in out.iterdir() if (p / "train_config.json").is_file()} \
        if out.is_dir() else set()
    refuse_foreign(out, SWEEP_FILES | runs | {p.size.name for p in plans}, "sweep")


def score_run(run: Path, val_tokens: np.ndarray, n_bytes: int, device: str,
              batch_size: int = 32) -> dict[str, float]:
    """A finished size's score on the whole validation split (``evaluate.score_tokens``)."""
    from lmlab.evaluate import LMScore, score_tokens
    from lmlab.loading import load_model

    model = load_model(run, device=device)
    nll, count = score_tokens(model, val_tokens, batch_size=batch_size)
    score = LMScore(nll, count, n_bytes)
    return {"val_loss": score.loss, "val_perplexity": score.perplexity,
            "val_bits_per_byte": score.bits_per_byte, "val_tokens": count}


def run_sweep(cfg: SweepConfig, overwrite: bool = False, progress: bool = True
              ) -> dict[str, Any] | None:
    """Train, score and fit every size of ``cfg``; on rank 0, write the report and return
    its contents (None in the other processes under torchrun)."""
    from lmlab.data.shards import TokenShards
    from lmlab.device import resolve_device
    from lmlab.tokenizer import Tokenizer
    from lmlab.train import distributed
    from lmlab.train.loop import Trainer

    data, out = Path(cfg.data), Path(cfg.out)
    tokenizer = Tokenizer.from_file(data / "tokenizer.json")
    # One process group for the whole sweep (every size's run joins it), left at the end.
    world, _ = distributed.join(cfg.device)
    try:
        plans = plan_sweep(cfg, tokenizer.vocab_size, world.size, overwrite)
        if world.main:
            _refuse_foreign(out, plans)
            out.mkdir(parents=True, exist_ok=True)
            write_text(out / "sweep_config.json", json.dumps(cfg.settings(), indent=2) + "\n")
            print(f"sweep: {len(plans)} sizes on {data}, {budget_words(cfg)}, context "
                  f"{cfg.block_size}", flush=True)
        for i, plan in enumerate(plans, 1):
            if world.main:
                print(f"[{i}/{len(plans)}] {plan.size.name}: {plan.params:,} non-embedding "
                      f"parameters ({plan.params_total:,} in all), {plan.steps:,} steps, "
                      f"{plan.tokens:,} tokens, {plan.flops:.3g} FLOPs"
                      + (" - already done" if plan.state == "done" else ""), flush=True)
            if plan.state == "done":
                continue
            try:
                Trainer(plan.train, resume=plan.state == "resume", overwrite=overwrite,
                        progress=progress).fit()
            except KeyboardInterrupt:
                if world.main:
                    print(f"sweep stopped in {plan.size.name}: run the same `lmlab sweep` "
                          "again (without --overwrite) to go on; the finished sizes are "
                          "skipped and this one resumes from its last checkpoint",
                          file=sys.stderr)
                raise
    finally:
        distributed.leave()
    if not world.main:
        return None

    val = TokenShards(data, "val")
    eos = tokenizer.eos_id if tokenizer.eos_id is not None else 0
    # A leading end-of-text token lets the first token be scored too: every byte counts.
    val_tokens = np.concatenate([[eos], val.tokens()]).astype(np.int64)
    device = str(resolve_device(cfg.device))
    rows = []
    for plan in plans:
        s = plan.size
        mc = plan.train.model_config(tokenizer.vocab_size)
        rows.append({"size": s.name, "preset": s.preset, "n_layer": mc.n_layer,
                     "n_head": mc.n_head, "n_embd": mc.n_embd, "params": plan.params,
                     "params_total": plan.params_total, "steps": plan.steps,
                     "tokens": plan.tokens, "flops": plan.flops, "state": plan.state,
                     "run": str(plan.run_dir),
                     **score_run(plan.run_dir, val_tokens, val.num_bytes, device)})
    fit = fit_power_law([r["params"] for r in rows], [r["val_loss"] for r in rows])
    data_info = {"train_tokens": TokenShards(data, "train").num_tokens,
                 "val_tokens": val.num_tokens, "val_bytes": val.num_bytes,
                 "vocab_size": tokenizer.vocab_size}
    text = write_report(out, cfg, rows, fit, data_info)
    print(f"\n{text}", flush=True)
    print(f"\nreport: {out / 'sweep.md'}, {out / 'sweep.json'}   plot: {out / 'scaling.png'}",
          flush=True)
    return {"rows": rows, "fit": fit, "text": text}
