"""Multiple-choice evaluation: the sets built offline, log-likelihood scoring (checked
against the model's own logits), few-shot prompts, acc / acc_norm, `lmlab mcq`, and the
lm-evaluation-harness adapter giving the same numbers."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from lmlab.cli import main
from lmlab.config import GPTConfig
from lmlab.data.choice_sets import (
    Question,
    cedict_questions,
    debian_questions,
    mmlu_questions,
    read_questions,
    write_questions,
)
from lmlab.errors import LmlabError
from lmlab.models.registry import build_model
from lmlab.multiple_choice import (
    encode_pair,
    evaluate_choices,
    few_shot_prompt,
    loglikelihoods,
    prompts,
    score_choices,
)
from lmlab.tokenizer import Tokenizer
from lmlab.train.checkpoint import save_checkpoint

TEXT = ("Question: what do cats eat?\nAnswer: fish\n\nQuestion: what do dogs chase?\n"
        "Answer: cats\n\nThe capital of France is Paris. The capital of Italy is Rome.\n") * 8


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train([TEXT], kind="bpe", vocab_size=300, show_progress=False)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    m = build_model(GPTConfig.from_name("gpt-nano", vocab_size=tok.vocab_size, block_size=48))
    return m.eval()


def toy_questions(n: int = 12) -> list[Question]:
    rng = random.Random(1)
    words = ["fish", "cats", "Paris", "Rome", "dogs", "mice", "a long answer here", "no"]
    out = []
    for i in range(n):
        choices = rng.sample(words, 4)
        out.append(Question(query=f"Question {i}: what is it?\nAnswer:", choices=choices,
                            gold=i % 4, description="Answer each question.\n\n",
                            subject="toy" if i % 2 else "other"))
    return out


# --- the sets -------------------------------------------------------------------


def test_mmlu_has_the_282_dev_questions_with_their_answers():
    qs = mmlu_questions()
    assert len(qs) == 282
    assert len({q.subject for q in qs}) == 57
    assert Counter(len(q.choices) for q in qs) == {4: 281, 5: 1}  # one chemistry item has E
    first = qs[0]
    assert first.subject == "abstract_algebra" and first.choices == list("ABCD")
    assert first.query.startswith("Statement 1 | Every element of a group generates")
    assert first.query.endswith("D. False, True\nAnswer:") and first.gold == 2  # (C)
    assert "about abstract algebra." in first.description
    # Options on their own lines (the computer-science item with two-line options) too.
    algo = next(q for q in qs if "Steps 3 and 4 are missing" in q.query)
    assert "\nB. Step 3: Increase the value of position by 1.\n" in algo.query


def test_debian_set_from_a_status_file(tmp_path):
    status = tmp_path / "status"
    pkgs = {"adduser": "add and remove users and groups",
            "bzip2": "high-quality block-sorting file compressor - utilities",
            "curl": "command line tool for transferring data with URL syntax",
            "dash": "POSIX-compliant shell", "grep": "GNU grep, egrep and fgrep"}
    status.write_text("".join(f"Package: {p}\nStatus: install ok installed\n"
                              f"Description: {d}\n more text about {p}.\n .\n second\n\n"
                              for p, d in pkgs.items()))
    qs = debian_questions(status, n=None, seed=3)
    assert len(qs) == 5
    for q in qs:
        name = q.choices[q.gold]
        assert q.query == f"Description: {pkgs[name]}\nmore text about {name}.\nPackage:"
        assert len(set(q.choices)) == 4 and set(q.choices) <= set(pkgs)
    assert debian_questions(status, n=None, seed=3)[0] == qs[0]  # seeded
    with pytest.raises(LmlabError, match="no such file"):
        debian_questions(tmp_path / "missing")


def test_cedict_set_picks_a_gloss_among_four(tmp_path):
    path = tmp_path / "cedict_ts.u8"
    lines = ["# CC-CEDICT", "銀行 银行 [yin2 hang2] /bank/CL:家[jia1],個|个[ge4]/",
             "點心 点心 [dian3 xin5] /light refreshments/pastry/dimsum/",
             "一拍即合 一拍即合 [yi1 pai1 ji2 he2] /lit. to be together from the first beat/"
             "to hit it off/",
             "電腦 电脑 [dian4 nao3] /computer/CL:臺|台[tai2]/",
             "學生 学生 [xue2 sheng5] /student/schoolchild/",
             "大 大 [da4] /big/huge/"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    qs = cedict_questions(path, n=None, seed=0)
    words = {q.query.split("：")[1].split("\n")[0]: q.choices[q.gold] for q in qs}
    # One-character words and idioms glossed "lit. ..." are left out.
    assert words == {"银行": "bank", "点心": "light refreshments", "电脑": "computer",
                     "学生": "student"}
    assert all(q.query.endswith("\nEnglish:") and len(q.choices) == 4 for q in qs)


def test_questions_jsonl_round_trip_and_bad_rows(tmp_path):
    qs = toy_questions(3)
    write_questions(qs, tmp_path / "q.jsonl")
    back = read_questions(tmp_path / "q.jsonl")
    assert [(q.query, q.choices, q.gold, q.subject) for q in back] == \
        [(q.query, q.choices, q.gold, q.subject) for q in qs]
    (tmp_path / "bad.jsonl").write_text('{"query": "x", "choices": ["a", "b"], "gold": 2}\n')
    with pytest.raises(LmlabError, match="bad.jsonl:1: needs at least 2 choices and a gold"):
        read_questions(tmp_path / "bad.jsonl")
    (tmp_path / "bad2.jsonl").write_text('{"query": "x"}\n')
    with pytest.raises(LmlabError, match="bad2.jsonl:1: expected a JSON object"):
        read_questions(tmp_path / "bad2.jsonl")


# --- scoring --------------------------------------------------------------------


def reference_loglikelihood(model, tok, context: str, continuation: str) -> tuple[float, bool]:
    """One pair alone, through the model's full logits."""
    ctx, cont = encode_pair(tok, context, continuation)
    seq = (ctx + cont)[-(model.config.block_size + 1):]
    x = torch.tensor([seq[:-1]])
    with torch.no_grad():
        logp = F.log_softmax(model(x)[0].float(), -1)[-len(cont):]  # (len(cont), V)
    t = torch.tensor(cont)
    return logp.gather(1, t[:, None]).sum().item(), bool((logp.argmax(-1) == t).all())


def test_encode_pair_moves_the_space_and_tokenizes_the_pair_as_one(tok):
    ctx, cont = encode_pair(tok, "The capital of France is ", "Paris")
    assert ctx[0] == tok.eos_id  # documents start after the end-of-text token
    assert ctx[1:] + cont == tok.encode("The capital of France is Paris")
    assert tok.decode(cont) == " Paris"


def test_loglikelihoods_equal_the_models_own_logits(model, tok):
    requests = [("The capital of France is", " Paris"), ("The capital of France is", " Rome"),
                ("Question: what do cats eat?\nAnswer:", " fish"),
                ("", "The capital"),  # an empty context: scored after the end-of-text token
                ("Question: what do dogs chase?\nAnswer:", " cats and dogs and mice"),
                # Longer than the context of 48 tokens: the context's start is dropped.
                (TEXT[:400], " Paris")]
    want = [reference_loglikelihood(model, tok, c, x) for c, x in requests]
    for batch_size in (1, 4):
        got = loglikelihoods(model, tok, requests, batch_size=batch_size)
        for (lp, greedy), (ref, ref_greedy) in zip(got, want, strict=True):
            assert lp == pytest.approx(ref, abs=1e-5) and greedy == ref_greedy
    # The greedy flag: the model's own argmax continuation is greedy.
    ctx, _ = encode_pair(tok, "The capital of", " x")
    with torch.no_grad():
        best = int(model(torch.tensor([ctx]))[0, -1].argmax())
    assert loglikelihoods(model, tok, [("The capital of", tok.decode([best]))])[0][1]


def test_a_continuation_longer_than_the_context_is_refused(model, tok):
    with pytest.raises(LmlabError, match="longer than the model's context of 48"):
        loglikelihoods(model, tok, [("x", " " + "cat " * 80)])


def test_few_shot_prompts_are_seeded_and_never_show_the_question():
    qs = toy_questions(12)
    p = few_shot_prompt(qs[1], qs, 3, random.Random(0))
    assert p.startswith("Answer each question.\n\n") and p.endswith(qs[1].query)
    assert p.count("Answer:") == 4 and p.count("\n\n") == 4
    shown = [q for q in qs if q.answered() + "\n\n" in p]
    assert len(shown) == 3 and qs[1] not in shown
    assert all(q.subject == qs[1].subject for q in shown)  # the same subject first
    assert prompts(qs, 3, seed=5) == prompts(qs, 3, seed=5) != prompts(qs, 3, seed=6)
    assert prompts(qs, 0)[0] == qs[0].description + qs[0].query


def test_acc_and_acc_norm():
    qs = [Question("q1", ["a", "bbbbbbbb"], 1), Question("q2", ["x", "y", "z"], 0)]
    # q1: "a" is likelier in total, but per character "bbbbbbbb" wins (-4/8 > -2/1).
    lls = [(-2.0, False), (-4.0, False), (-1.0, True), (-3.0, False), (-2.0, False)]
    score, rows = score_choices(qs, lls, shots=0)
    assert score.acc == 0.5 and score.acc_norm == 1.0
    assert score.chance == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert rows[0]["pred"] == 0 and rows[0]["pred_norm"] == 1
    assert score.acc_stderr == pytest.approx(0.5)  # sample std 0.707 / sqrt(2)


def test_evaluate_choices_scores_each_choice_after_its_prompt(model, tok):
    qs = toy_questions(8)
    score, rows = evaluate_choices(model, tok, qs, shots=2, seed=1, show_progress=False)
    texts = prompts(qs, 2, seed=1)
    for q, text, row in zip(qs, texts, rows, strict=True):
        ref = [reference_loglikelihood(model, tok, text, " " + c)[0] for c in q.choices]
        assert row["loglikelihoods"] == pytest.approx(ref, abs=1e-5)
        assert row["pred"] == max(range(4), key=ref.__getitem__)
    assert score.acc == sum(r["pred"] == q.gold for r, q in zip(rows, qs, strict=True)) / 8
    assert score.chance == 0.25 and score.shots == 2


# --- the command and the harness ---------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory, model, tok):
    root = tmp_path_factory.mktemp("mcq")
    tok.save(root / "tok.json")
    save_checkpoint(root / "gpt", 1, model, root / "tok.json")
    write_questions(toy_questions(12), root / "toy.jsonl")
    return root


def test_cli_eval_prints_the_table_and_writes_predictions(saved, capsys):
    out = saved / "res"
    code = main(["mcq", "eval", str(saved / "gpt"), "--task", str(saved / "toy.jsonl"),
                 "--shots", "0", "2", "--out", str(out), "--device", "cpu"])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "task" in stdout and "acc_norm" in stdout and "chance" in stdout
    assert "toy" in stdout and " 0.250" in stdout  # chance of 4 choices
    res = json.loads((out / "results.json").read_text())
    assert [(r["task"], r["shots"], r["questions"]) for r in res["results"]] == \
        [("toy", 0, 12), ("toy", 2, 12)]
    assert len((out / "toy-2shot.jsonl").read_text().splitlines()) == 12
    code = main(["mcq", "eval", str(saved / "gpt"), "--task", "nonsense", "--device", "cpu"])
    assert code == 2 and "error: unknown task 'nonsense'" in capsys.readouterr().err


def test_harness_adapter_gives_lmlabs_own_numbers(saved, capsys, monkeypatch):
    """lm-evaluation-harness, through the `lmlab` model, on the exported local task: the
    same log-likelihoods (1e-5) and accuracies as `lmlab mcq eval`."""
    lm_eval = pytest.importorskip("lm_eval")
    import lmlab.harness  # noqa: F401  (registers the model "lmlab")
    from lmlab.loading import load_for_inference

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tasks = saved / "tasks"
    assert main(["mcq", "export", "--task", str(saved / "toy.jsonl"), "--shots", "2",
                 "--out", str(tasks)]) == 0
    assert "lmlab_toy_2shot" in capsys.readouterr().out
    results = lm_eval.simple_evaluate(
        model="lmlab", model_args=f"path={saved / 'gpt'},batch_size=4",
        tasks=["lmlab_toy_2shot"], task_manager=lm_eval.tasks.TaskManager(
            include_path=str(tasks), include_defaults=False), log_samples=True)
    samples = results["samples"]["lmlab_toy_2shot"]
    loaded = load_for_inference(saved / "gpt")
    qs = toy_questions(12)
    score, rows = evaluate_choices(loaded.model, loaded.tokenizer, qs, shots=2, seed=0,
                                   show_progress=False)
    for sample in samples:
        i = sample["doc_id"]
        theirs = [r[0] for r in sample["filtered_resps"]]
        assert theirs == pytest.approx(rows[i]["loglikelihoods"], abs=1e-5)
    metrics = results["results"]["lmlab_toy_2shot"]
    assert metrics["acc,none"] == pytest.approx(score.acc)
    assert metrics["acc_norm,none"] == pytest.approx(score.acc_norm)
