"""Multiple-choice question sets built from data on this machine.

No multiple-choice benchmark's data ships in a package (lm-evaluation-harness
fetches every task's data from a hub at run time), so lmlab builds three real
ones offline:

* ``mmlu``: the 282 MMLU development questions (57 subjects) inside lm-eval's
  chain-of-thought prompts file, with their answer letters; the prompt is the
  harness's MMLU prompt (``question``, ``A. ...`` lines, ``Answer:``).
* ``debian``: which package does this description describe? The synopsis and the
  first paragraph of an installed package's description (``/var/lib/dpkg/status``,
  or any Debian ``Packages`` / ``Translation-en`` index), four package names.
* ``cedict``: a Chinese headword of CC-CEDICT and four English glosses.

A question is its ``query`` (what the model reads, ending where the answer
starts), its ``choices`` (continuations, written after one space) and the index
of the right one; ``description`` is the line a prompt opens with.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from lmlab.errors import LmlabError

SETS = ("mmlu", "debian", "cedict")
LETTERS = "ABCDEFGHIJ"


@dataclass
class Question:
    query: str
    choices: list[str]
    gold: int
    description: str = ""  # the prompt's first line(s), before any examples
    subject: str = ""

    def answered(self) -> str:
        """The question with its right answer, as a few-shot example shows it."""
        return f"{self.query} {self.choices[self.gold]}"


def mmlu_prompts_file() -> Path:
    """lm-eval's ``_cot_prompts.json`` (the only MMLU data inside the harness)."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or spec.origin is None:
        raise LmlabError("the MMLU questions come from the lm-eval package, which is not "
                         "installed: pip install 'lm-eval==0.4.13' (or lmlab[harness])")
    path = (Path(spec.origin).parent / "tasks" / "mmlu" / "flan_cot_fewshot"
            / "_cot_prompts.json")
    if not path.is_file():
        raise LmlabError(f"{path}: not found; this lm-eval version does not ship MMLU's "
                         "chain-of-thought prompts (0.4.13 does)")
    return path


_OPTION = re.compile(r"\(([A-J])\) ")


def _mmlu_block(block: str, subject: str) -> Question | None:
    """One ``Q: ... (A) .. (B) .. A: ... The answer is (X).`` block as a Question."""
    question, sep, answer = block.partition("\nA: ")
    letters = re.findall(r"answer is \(?([A-J])\)?", answer)
    # The options start at the last line that opens with "(A) "; they run on one line or
    # one per line. (A few blocks carry a line of the example before's reasoning first.)
    start = question.rfind("\n(A) ")
    if not sep or not letters or start < 0:
        return None
    stem, options = question[:start].strip(), question[start + 1:]
    marks = list(_OPTION.finditer(options))
    # Options are A, B, C... in order; a "(B) " inside an option's text is not a mark.
    keep, expect = [], 0
    for m in marks:
        if expect < len(LETTERS) and m.group(1) == LETTERS[expect]:
            keep.append(m)
            expect += 1
    texts = [options[m.end():(keep[i + 1].start() if i + 1 < len(keep) else len(options))]
             .strip() for i, m in enumerate(keep)]
    gold = LETTERS.find(letters[-1])
    if len(texts) < 2 or gold >= len(texts) or not all(texts):
        return None
    lines = [stem] + [f"{LETTERS[i]}. {t}" for i, t in enumerate(texts)]
    name = subject.replace("_", " ")
    return Question(query="\n".join(lines) + "\nAnswer:", choices=list(LETTERS[:len(texts)]),
                    gold=gold, subject=subject,
                    description="The following are multiple choice questions (with answers) "
                                f"about {name}.\n\n")


def mmlu_questions(path: Path | None = None) -> list[Question]:
    """The MMLU dev questions of lm-eval's chain-of-thought prompts, in the harness's
    MMLU prompt (question, lettered options, ``Answer:``; the choices are the letters)."""
    path = path or mmlu_prompts_file()
    try:
        prompts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise LmlabError(f"{path}: not a JSON file of MMLU prompts ({err})") from err
    out: list[Question] = []
    for subject, text in sorted(prompts.items()):
        _, _, body = text.partition("\n\n")  # after the "The following are..." line
        for block in re.split(r"(?:^|\n\n)Q: ", body):
            if block.strip() and (q := _mmlu_block(block, subject)) is not None:
                out.append(q)
    if not out:
        raise LmlabError(f"{path}: no MMLU questions found")
    return out


def _distractors(rng: random.Random, right: str, pool: Sequence[str], k: int) -> list[str]:
    """``k`` entries of ``pool`` that differ from ``right`` and from each other."""
    picked: list[str] = []
    seen = {right.casefold()}
    while len(picked) < k:
        cand = pool[rng.randrange(len(pool))]
        if cand.casefold() not in seen:
            seen.add(cand.casefold())
            picked.append(cand)
    return picked


def _shuffled(rng: random.Random, right: str, wrong: list[str]) -> tuple[list[str], int]:
    choices = [right, *wrong]
    rng.shuffle(choices)
    return choices, choices.index(right)


def _sample(items: list, n: int | None, rng: random.Random) -> list:
    if n is not None and n < len(items):
        return rng.sample(items, n)
    return items


def debian_questions(path: Path = Path("/var/lib/dpkg/status"), n: int | None = 500,
                     seed: int = 0, choices: int = 4) -> list[Question]:
    """Description -> package name, ``choices`` names each (the others drawn at random
    from the same file). ``path``: dpkg's status file (the installed packages) or a
    Debian ``Packages`` / ``Translation-LANG`` index."""
    from lmlab.data.summaries import read_deb822, split_description

    if not path.is_file():
        raise LmlabError(f"{path}: no such file (the Debian set reads dpkg's status file or a "
                         "Packages / Translation-en index; `lmlab download descriptions` "
                         "fetches one)")
    described: dict[str, str] = {}
    for fields in read_deb822(path):
        name = fields.get("Package")
        value = fields.get("Description") or fields.get("Description-en")
        if not name or not value or name in described:
            continue
        synopsis, paragraphs = split_description(value)
        text = synopsis + (f"\n{paragraphs[0]}" if paragraphs else "")
        described[name] = text[:400].rsplit(" ", 1)[0] + " ..." if len(text) > 400 else text
    names = sorted(described)
    if len(names) < choices:
        raise LmlabError(f"{path}: {len(names)} described packages; at least {choices} needed")
    rng = random.Random(seed)
    out = []
    for name in _sample(names, n, rng):
        opts, gold = _shuffled(rng, name, _distractors(rng, name, names, choices - 1))
        out.append(Question(query=f"Description: {described[name]}\nPackage:", choices=opts,
                            gold=gold, subject="debian",
                            description="Each Debian package description below is followed "
                                        "by the package's name.\n\n"))
    return out


def cedict_questions(path: Path, n: int | None = 500, seed: int = 0,
                     choices: int = 4) -> list[Question]:
    """A Chinese word (simplified, 2-4 characters) -> its English gloss among ``choices``.

    Words are drawn from the 5,000 headwords with the most senses in CC-CEDICT (a
    common word has many; a rare name or term has one), so the set asks about words
    a reader knows rather than its long tail."""
    from lmlab.data.parallel import cedict_glosses

    if not path.is_file():
        raise LmlabError(f"{path}: no such file (CC-CEDICT's cedict_ts.u8; `lmlab download "
                         "cedict` fetches it)")
    entries = [(simp, senses, gloss) for _, simp, senses, gloss in cedict_glosses(path)
               if 2 <= len(simp) <= 4 and len(gloss) <= 40
               and not gloss.startswith(("lit.", "fig."))]  # an idiom's literal reading
    best: dict[str, tuple[int, str]] = {}
    for simp, senses, gloss in entries:
        if senses > best.get(simp, (0, ""))[0]:
            best[simp] = (senses, gloss)
    common = sorted(best, key=lambda w: (-best[w][0], w))[:5000]
    if len(common) < choices:
        raise LmlabError(f"{path}: too few CC-CEDICT entries for a {choices}-choice set")
    glosses = sorted({best[w][1] for w in common})
    rng = random.Random(seed)
    out = []
    for word in _sample(common, n, rng):
        right = best[word][1]
        opts, gold = _shuffled(rng, right, _distractors(rng, right, glosses, choices - 1))
        out.append(Question(query=f"中文：{word}\nEnglish:", choices=opts, gold=gold,
                            subject="cedict",
                            description="Each Chinese word below is followed by its English "
                                        "meaning.\n\n"))
    return out


def read_questions(path: Path) -> list[Question]:
    """Questions of a JSONL file: ``query``, ``choices`` (list), ``gold`` (index), and
    optionally ``description`` and ``subject``."""
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise LmlabError(f"{path}: cannot read ({err})") from err
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            q = Question(query=str(rec["query"]), choices=[str(c) for c in rec["choices"]],
                         gold=int(rec["gold"]), description=str(rec.get("description", "")),
                         subject=str(rec.get("subject", "")))
        except (ValueError, KeyError, TypeError) as err:
            raise LmlabError(f"{path}:{n}: expected a JSON object with query, choices (a "
                             f"list) and gold (an index): {err}") from err
        if len(q.choices) < 2 or not 0 <= q.gold < len(q.choices):
            raise LmlabError(f"{path}:{n}: needs at least 2 choices and a gold index among "
                             f"them (got {len(q.choices)} choices, gold {q.gold})")
        out.append(q)
    if not out:
        raise LmlabError(f"{path}: no questions")
    return out


def write_questions(questions: Sequence[Question], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for q in questions:
            f.write(json.dumps(asdict(q), ensure_ascii=False) + "\n")
