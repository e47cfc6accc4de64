"""Evaluating a model beyond perplexity: multiple-choice sets (zero- and few-shot),
their export for lm-evaluation-harness, and the bias probe.

One typed function per subcommand; see ``lmlab.commands``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

from lmlab.commands.common import say
from lmlab.errors import LmlabError
from lmlab.options import Count, InFile, InPath, OutDir


def default_cedict() -> Path:
    """CC-CEDICT where ``make setup`` puts it (``<venv>/assets/cedict``)."""
    return Path(sys.prefix) / "assets" / "cedict" / "cedict_ts.u8"


def _shot_counts(shots: list[int] | None) -> list[int]:
    """--shots as given, or 0 and 5."""
    shots = [0, 5] if shots is None else shots
    if any(k < 0 for k in shots):
        raise LmlabError(f"--shots must be 0 or more, got {shots}")
    return shots


def load_sets(tasks: list[str], limit: int | None, seed: int, debian: Path,
              cedict: Path | None) -> dict[str, list]:
    """Each named set (or JSONL file) as its questions, at most ``limit`` of each."""
    import random

    from lmlab.data import choice_sets as cs

    out: dict[str, list] = {}
    for task in tasks:
        if task == "mmlu":
            qs = cs.mmlu_questions()
        elif task == "debian":
            qs = cs.debian_questions(debian, n=None, seed=seed)
        elif task == "cedict":
            qs = cs.cedict_questions(cedict or default_cedict(), n=None, seed=seed)
        elif task.endswith(".jsonl") or Path(task).is_file():
            qs = cs.read_questions(Path(task))
        else:
            raise LmlabError(f"unknown task {task!r}: choose {', '.join(cs.SETS)} or give a "
                             ".jsonl file of questions (query, choices, gold)")
        if limit is not None and limit < len(qs):
            # The same questions for every model and number of shots (seeded).
            qs = random.Random(f"{seed}:{task}").sample(qs, limit)
        out[Path(task).stem if task not in cs.SETS else task] = qs
    return out


def mcq_eval(model: InPath, task: list[str] | None = None, shots: list[int] | None = None,
             limit: Count | None = 500, seed: int = 0, batch_size: Count = 16,
             tokenizer: InFile | None = None, debian: Path = Path("/var/lib/dpkg/status"),
             cedict: Path | None = None, dtype: Literal["float32", "bfloat16"] = "float32",
             quantize: Literal["none", "int8", "int4"] = "none", device: str = "auto",
             out: OutDir | None = None, json_out: bool = False,
             overwrite: bool = False) -> None:
    """Multiple-choice accuracy of a causal model, zero- and few-shot, against chance.

    Each choice is scored by the model's log-likelihood of it after the prompt,
    as lm-evaluation-harness scores multiple_choice tasks: acc (the most likely
    choice is right) and acc_norm (the likelihood divided by the choice's length
    in characters first). A k-shot prompt shows k answered questions of the same
    set, drawn with --seed, never the question itself. The sets, all built here
    without a network:

      mmlu    the 282 MMLU dev questions (57 subjects) shipped in lm-eval's
              chain-of-thought prompts; choices A-D
      debian  a package description -> the package's name among 4 (the installed
              packages in dpkg's status file, or a Debian Packages index)
      cedict  a Chinese word -> its English gloss among 4 (CC-CEDICT)

    or a JSONL file of your own questions ({"query", "choices", "gold"}).

    Args:
        model: a run or checkpoint folder, a Hugging Face folder or a .gguf file
        task: sets to run: mmlu, debian, cedict or .jsonl files (default: all three)
        shots: numbers of examples in the prompt (default: 0 and 5)
        limit: questions per set at most (a seeded sample; the same for every model)
        seed: seed of the sample, the examples and the Debian/CEDICT distractors
        batch_size: sequences per forward pass
        tokenizer: tokenizer.json (default: the model's)
        debian: dpkg's status file or a Debian Packages / Translation-en index
        cedict: CC-CEDICT's cedict_ts.u8 (default: the one `make setup` fetched)
        dtype: float32 or bfloat16
        quantize: int8 or int4 weight-only Linear layers
        device: auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps
        out: a folder for results.json and each question's prediction
        json_out: print the results as JSON
        overwrite: write into --out even if it holds files

    Examples:
        lmlab mcq eval smollm2.gguf
        lmlab mcq eval runs/mini --task mmlu --shots 0 5
        lmlab mcq eval gemma-3-270m-q4_k_m.gguf --task cedict --shots 0 --limit 200
        lmlab mcq eval runs/mini --task my_questions.jsonl --out results/mini
    """
    from lmlab.loading import load_for_inference
    from lmlab.multiple_choice import evaluate_choices

    shots = _shot_counts(shots)
    sets = load_sets(task or ["mmlu", "debian", "cedict"], limit, seed, debian, cedict)
    loaded = load_for_inference(Path(model), tokenizer, dtype, quantize, device)
    results = []
    for name, questions in sets.items():
        for k in shots:
            score, rows = evaluate_choices(loaded.model, loaded.tokenizer, questions, shots=k,
                                           seed=seed, batch_size=batch_size)
            results.append({"task": name, **score.to_dict()})
            if out is not None:
                Path(out).mkdir(parents=True, exist_ok=True)
                with open(Path(out) / f"{name}-{k}shot.jsonl", "w", encoding="utf-8") as f:
                    for row in rows:
                        f.write(json.dumps(row) + "\n")
    report = {"model": str(model), "seed": seed, "results": results}
    if out is not None:
        (Path(out) / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    if json_out:
        say(json.dumps(report))
        return
    say(f"{'task':<10} {'shots':>5} {'questions':>9}  {'acc':>13}  {'acc_norm':>13}  {'chance':>6}")
    for r in results:
        say(f"{r['task']:<10} {r['shots']:>5} {r['questions']:>9}  "
            f"{r['acc']:.3f} ± {r['acc_stderr']:.3f}  "
            f"{r['acc_norm']:.3f} ± {r['acc_norm_stderr']:.3f}  {r['chance']:>6.3f}")
    if out is not None:
        say(f"wrote {out}/results.json and each question's prediction")


def mcq_export(out: OutDir = Path("tasks"), task: list[str] | None = None,
               shots: list[int] | None = None,
               limit: Count | None = 500, seed: int = 0,
               debian: Path = Path("/var/lib/dpkg/status"), cedict: Path | None = None,
               overwrite: bool = False) -> None:
    """Write the multiple-choice sets as lm-evaluation-harness tasks (JSONL + YAML).

    Each (set, shots) pair becomes OUT/lmlab_SET_Kshot.jsonl, whose queries hold
    the same k-shot prompts `lmlab mcq eval` builds, and a task YAML reading it
    (dataset_path: json, so the harness needs no hub). Run them with any
    harness model, lmlab's included:

      python -m lmlab.harness --model lmlab --model_args path=MODEL \\
          --include_path OUT --tasks lmlab_mmlu_0shot

    Args:
        out: output folder
        task: sets to write: mmlu, debian, cedict or .jsonl files (default: all three)
        shots: numbers of examples in the prompt (default: 0 and 5)
        limit: questions per set at most (the sample `lmlab mcq eval` takes)
        seed: seed of the sample, the examples and the distractors
        debian: dpkg's status file or a Debian Packages / Translation-en index
        cedict: CC-CEDICT's cedict_ts.u8 (default: the one `make setup` fetched)
        overwrite: replace files already in OUT

    Examples:
        lmlab mcq export --out tasks/
        lmlab mcq export --task mmlu --shots 5 --out tasks/
    """
    from lmlab.data.choice_sets import Question, write_questions
    from lmlab.multiple_choice import prompts

    shots = _shot_counts(shots)
    sets = load_sets(task or ["mmlu", "debian", "cedict"], limit, seed, debian, cedict)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, questions in sets.items():
        for k in shots:
            stem = f"lmlab_{name}_{k}shot"
            jsonl, yaml = out / f"{stem}.jsonl", out / f"{stem}.yaml"
            # The whole k-shot prompt is the query: the harness then reads exactly the
            # text lmlab reads (its own few-shot sampler would draw other examples).
            texts = prompts(questions, k, seed)
            write_questions([Question(query=t, choices=q.choices, gold=q.gold,
                                      subject=q.subject)
                             for t, q in zip(texts, questions, strict=True)], jsonl)
            yaml.write_text(harness_yaml(stem, jsonl.resolve()))
            say(f"{stem}: {len(questions)} questions -> {jsonl}")
    names = ",".join(f"lmlab_{n}_{k}shot" for n in sets for k in shots)
    say(f"run: python -m lmlab.harness --model lmlab --model_args path=MODEL "
        f"--include_path {out} --tasks {names}")


def harness_yaml(task: str, data: Path) -> str:
    """An lm-evaluation-harness multiple_choice task reading a local JSONL file."""
    return (f"task: {task}\n"
            "dataset_path: json\n"
            "dataset_kwargs:\n"
            "  data_files:\n"
            f"    test: {json.dumps(str(data))}\n"
            "test_split: test\n"
            "output_type: multiple_choice\n"
            'doc_to_text: "{{query}}"\n'
            'doc_to_choice: "{{choices}}"\n'
            'doc_to_target: "{{gold}}"\n'
            'target_delimiter: " "\n'
            "num_fewshot: 0\n"
            "metric_list:\n"
            "  - metric: acc\n"
            "    aggregation: mean\n"
            "    higher_is_better: true\n"
            "  - metric: acc_norm\n"
            "    aggregation: mean\n"
            "    higher_is_better: true\n")



def bias(model: InPath, templates: InFile | None = None, out: OutDir | None = None,
         batch_size: Count = 16, tokenizer: InFile | None = None,
         dtype: Literal["float32", "bfloat16"] = "float32",
         quantize: Literal["none", "int8", "int4"] = "none", device: str = "auto",
         json_out: bool = False, overwrite: bool = False) -> None:
    """A bias probe: log P(he) - log P(she) (and 他 / 她) in templated sentences.

    For every template and occupation the two sentences ("The nurse said that
    he would be late today." / "... she ...") are scored by the model's
    log-likelihood; per template the table shows the mean difference in nats
    (positive: the first word is likelier), its spread over the occupations,
    the share where the first word wins, and the occupations at both ends.
    Built-in: English he/she and his/her templates, Chinese 他/她 templates,
    over 20-24 occupations; --templates reads your own.

    A probe, not a certificate: it measures preferences in these sentences only.
    A mean near zero does not make a model fair; a large one is a reason to look
    closer, not a verdict.

    Args:
        model: a run or checkpoint folder, a Hugging Face folder or a .gguf file
        templates: a JSON list of {"name", "templates" (with {filler} and {word}),
            "pair": [first, second], "fillers"} to use instead of the built-in sets
        out: a folder for bias.json and bias.png (per occupation, mean over templates)
        batch_size: sentences per forward pass
        tokenizer: tokenizer.json (default: the model's)
        dtype: float32 or bfloat16
        quantize: int8 or int4 weight-only Linear layers
        device: auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps
        json_out: print the results as JSON
        overwrite: write into --out even if it holds files

    Examples:
        lmlab bias smollm2.gguf --out results/bias
        lmlab bias runs/mini --templates my_templates.json
    """
    from lmlab.bias import BUILT_IN, plot_probe, probe, read_probe_sets
    from lmlab.loading import load_for_inference

    sets = read_probe_sets(Path(templates)) if templates else BUILT_IN
    loaded = load_for_inference(Path(model), tokenizer, dtype, quantize, device)
    results = probe(loaded.model, loaded.tokenizer, sets, batch_size=batch_size)
    report = {"model": str(model), "results": [r.to_dict() for r in results],
              "note": "a probe, not a certificate: preferences in these sentences only"}
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "bias.json").write_text(json.dumps(report, indent=2,
                                                        ensure_ascii=False) + "\n")
        drawn = plot_probe(results, Path(out) / "bias.png")
    if json_out:
        say(json.dumps(report, ensure_ascii=False))
        return
    say("log P(first) - log P(second) in nats, over the fillers of each template "
        "(positive: the first word is likelier)")
    for r in results:
        ends = sorted(r.per_filler, key=r.per_filler.__getitem__)
        say(f"[{r.set}] {r.pair[0]}/{r.pair[1]}  {r.template}")
        say(f"    mean {r.mean:+.3f}  std {r.std:.3f}  {r.pair[0]} likelier for "
            f"{r.first_wins:.0%}  most {r.pair[1]}: {', '.join(ends[:3])}  "
            f"most {r.pair[0]}: {', '.join(reversed(ends[-3:]))}")
    if out is not None:
        say(f"wrote {out}/bias.json" + (f" and {out}/bias.png ({', '.join(drawn)})"
                                          if drawn else ""))
