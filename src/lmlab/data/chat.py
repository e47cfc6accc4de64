"""Conversations for chat fine-tuning: readers, chat templates, and assistant-only labels.

Readers take a ``.jsonl`` file (one conversation per line) or a ``.json`` array, in
any of the three shapes people share conversations in:

* messages (OpenAI, TRL, torchtune): ``{"messages": [{"role": "user", "content":
  ...}, {"role": "assistant", ...}]}``, roles system / user / assistant;
* ShareGPT: ``{"conversations": [{"from": "human", "value": ...}, {"from": "gpt",
  ...}]}`` (human -> user, gpt -> assistant, system -> system);
* Alpaca: ``{"instruction": ..., "input": ..., "output": ...}`` (the input, when
  there is one, follows the instruction after a blank line).

A record that fits none of them, a role lmlab does not know, a non-text content or
a conversation without an assistant turn is an error naming the file and line.

Chat templates are the Jinja2 programs of Hugging Face tokenizers and GGUF files,
rendered as ``transformers`` renders them (sandboxed, ``trim_blocks``,
``lstrip_blocks``). A model without one gets ChatML.

Labels (``encode_conversation``): the loss is on the assistant's tokens only, its
end-of-turn token included (so the model learns to stop), every turn of a
multi-turn conversation. The spans come from the template itself: for each
assistant turn i, the conversation up to turn i rendered with the generation
prompt is a prefix of the conversation up to and including turn i; the text
between the two is the answer. Truncation never cuts inside an answer: a
conversation longer than ``max_length`` tokens keeps its turns up to the last
answer that ends within the limit; one whose first answer does not fit is
skipped (and counted by the caller).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError

Message = dict[str, str]

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# For a model without a template (a base model pretrained with lmlab).
PLAIN_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
PLAIN_STOPS = ("\nUser:", "\nSystem:")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
                  "system": "system"}


# ---------------------------------------------------------------- templates
def _raise(message: str) -> None:
    raise LmlabError(f"chat template: {message}")


@lru_cache(maxsize=8)
def _compile(template: str):
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    try:
        return env.from_string(template)
    except TemplateError as e:
        raise LmlabError(f"chat template does not parse: {e}") from None


def render_chat(template: str, messages: list[Message], *,
                add_generation_prompt: bool = True, bos_token: str = "",
                eos_token: str = "") -> str:
    """The prompt text for ``messages`` ([{"role": ..., "content": ...}, ...])."""
    return _compile(template).render(messages=messages,
                                     add_generation_prompt=add_generation_prompt,
                                     bos_token=bos_token, eos_token=eos_token)


def chat_format(template: str | None, tokenizer: Any) -> tuple[str, tuple[str, ...]]:
    """The template to render with and the stop strings that end an answer: a model
    without a template gets the plain format (stopping at the next "User:"); a ChatML
    answer ends at <|im_end|> unless that is the tokenizer's own end token (a base
    model tuned with ChatML writes it as text or as a token that is not its end)."""
    if not template:
        return PLAIN_TEMPLATE, PLAIN_STOPS
    if "<|im_end|>" in template and tokenizer.eos_token != "<|im_end|>":
        return template, ("<|im_end|>",)
    return template, ()


_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use characters: placeholders for contents


def render_prompt(template: str | None, tokenizer: Any,
                  messages: list[Message]) -> tuple[list[int], tuple[str, ...]]:
    """A conversation's prompt ids (the template, then the generation prompt) and the
    stop strings of its answer.

    The template writes control tokens (<|im_start|>...) as text, which must become
    their special ids; a message's own text must not: a user who types
    "<|im_end|><|im_start|>system" gets those characters, not a system turn. A
    conversation with no special-token text in its messages is encoded whole (the
    tokens the model saw in training); one with some has its contents spliced in,
    encoded as plain text."""
    template, stops = chat_format(template, tokenizer)
    eos = tokenizer.eos_token or ""
    start = tokenizer.start_ids
    bos = tokenizer.id_to_token(start[0]) if start else ""
    specials = [t for t in tokenizer.special_tokens if t]
    if not any(t in m["content"] for m in messages for t in specials):
        text = render_chat(template, messages, bos_token=bos, eos_token=eos)
        ids = tokenizer.encode(text, allow_special=True)
    else:
        marked = [dict(m, content=f"{_OPEN}{i}{_CLOSE}") for i, m in enumerate(messages)]
        text = render_chat(template, marked, bos_token=bos, eos_token=eos)
        ids = []
        for j, part in enumerate(re.split(f"{_OPEN}(\\d+){_CLOSE}", text)):
            if j % 2:  # a message's content: plain text
                ids += tokenizer.encode(messages[int(part)]["content"])
            elif part:
                ids += tokenizer.encode(part, allow_special=True)
    if start and ids[:1] != start:
        ids = start + ids  # a template that does not write the start token itself
    return ids, stops


# ---------------------------------------------------------------- readers
def _text(value: Any, where: str, what: str) -> str:
    if not isinstance(value, str):
        raise LmlabError(f"{where}: {what} is {type(value).__name__}, not text")
    return value


def conversation_of(record: Any, where: str) -> list[Message]:
    """The messages of one record in any of the three shapes (see the module docstring)."""
    if not isinstance(record, dict):
        raise LmlabError(f"{where}: expected a JSON object, found {type(record).__name__}")
    if "messages" in record:
        turns = record["messages"]
        if not isinstance(turns, list):
            raise LmlabError(f"{where}: \"messages\" is not a list")
        out = []
        for j, m in enumerate(turns):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                role = m.get("role") if isinstance(m, dict) else m
                raise LmlabError(f"{where}: message {j} has role {role!r}; expected one of "
                                 f"{', '.join(ROLES)}")
            out.append({"role": m["role"],
                        "content": _text(m.get("content"), where, f"message {j}'s content")})
    elif "conversations" in record:
        turns = record["conversations"]
        if not isinstance(turns, list):
            raise LmlabError(f"{where}: \"conversations\" is not a list")
        out = []
        for j, m in enumerate(turns):
            who = m.get("from") if isinstance(m, dict) else None
            if who not in SHAREGPT_ROLES:
                raise LmlabError(f"{where}: turn {j} is from {who!r}; expected one of "
                                 f"{', '.join(SHAREGPT_ROLES)}")
            out.append({"role": SHAREGPT_ROLES[who],
                        "content": _text(m.get("value"), where, f"turn {j}'s value")})
    elif "instruction" in record and "output" in record:
        prompt = _text(record["instruction"], where, "instruction")
        extra = record.get("input") or ""
        if _text(extra, where, "input").strip():
            prompt = f"{prompt}\n\n{extra}"
        out = [{"role": "user", "content": prompt},
               {"role": "assistant", "content": _text(record["output"], where, "output")}]
    else:
        raise LmlabError(f"{where}: not a conversation: expected \"messages\" (role/content), "
                         f"\"conversations\" (ShareGPT from/value) or \"instruction\" and "
                         f"\"output\" (Alpaca); found keys {sorted(record)[:6]}")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in out):
        raise LmlabError(f"{where}: the conversation has no assistant answer to learn")
    return out


def iter_records(path: Path) -> Iterator[tuple[Any, str]]:
    """(record, "file:line") of a .jsonl file, or of a .json array."""
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"{path}: no such file")
    try:
        if path.suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise LmlabError(f"{path}: not valid JSON ({e}); a truncated array can be "
                                 "recovered with `lmlab chatdata recover`") from None
            if not isinstance(data, list):
                raise LmlabError(f"{path}: expected a JSON array of conversations")
            for i, record in enumerate(data):
                yield record, f"{path}[{i}]"
            return
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line), f"{path}:{n}"
                except json.JSONDecodeError as e:
                    raise LmlabError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise LmlabError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_conversations(path: Path) -> list[list[Message]]:
    """Every conversation of a .jsonl or .json file, as messages."""
    out = [conversation_of(record, where) for record, where in iter_records(path)]
    if not out:
        raise LmlabError(f"{path}: holds no conversation")
    return out


def recover_json_array(path: Path) -> tuple[list[Any], int]:
    """The complete elements of a JSON array, even a truncated one (ShareGPT's file ends
    in the middle of a record), and the count of bytes left over that did not parse."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    decoder = json.JSONDecoder()
    i = text.find("[")
    if i < 0:
        raise LmlabError(f"{path}: not a JSON array")
    i += 1
    records = []
    n = len(text)
    while True:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n or text[i] == "]":
            return records, 0
        try:
            record, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return records, n - i
        records.append(record)


# ---------------------------------------------------------------- token ids and labels
@dataclass
class Encoded:
    ids: list[int]
    labels: list[bool]  # True where the token is part of an answer (it is learned)
    turns_dropped: int  # answers cut off by the length limit


def answer_spans(template: str, messages: list[Message], bos: str = "",
                 eos: str = "") -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the (start, end) character spans of its answers."""
    full = render_chat(template, messages, add_generation_prompt=False, bos_token=bos,
                       eos_token=eos)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or i == 0:
            continue
        before = render_chat(template, messages[:i], add_generation_prompt=True, bos_token=bos,
                             eos_token=eos)
        upto = render_chat(template, messages[:i + 1], add_generation_prompt=False,
                           bos_token=bos, eos_token=eos)
        if not upto.startswith(before) or not full.startswith(upto):
            raise LmlabError("the chat template renders earlier turns differently once later "
                             "ones follow; its answers cannot be found for training (use "
                             "--chat-template chatml)")
        spans.append((len(before), len(upto)))
    return full, spans


def encode_conversation(tok: Any, template: str, messages: list[Message],
                        max_length: int) -> Encoded | None:
    """Token ids of a conversation and which of them are learned (the answers); None
    when its first answer does not end within ``max_length`` tokens."""
    text, spans = answer_spans(template, messages, eos=tok.eos_token or "")
    ids: list[int] = []
    labels: list[bool] = []
    at = answers = 0
    for start, end in spans:
        new_ids: list[int] = []
        new_labels: list[bool] = []
        for piece, learned in ((text[at:start], False), (text[start:end], True)):
            if piece:
                piece_ids = tok.encode(piece, allow_special=True)
                new_ids += piece_ids
                new_labels += [learned] * len(piece_ids)
        if len(ids) + len(new_ids) > max_length:
            break  # this answer would be cut: it and every later turn go
        ids += new_ids
        labels += new_labels
        at = end
        answers += 1
    if answers == 0:
        return None
    return Encoded(ids, labels, len(spans) - answers)


# ---------------------------------------------------------------- built-in chat data
DEBIAN_QUESTION = "What does the Debian package {package} do?"


def _sentences_within(text: str, limit: int) -> str:
    """The leading whole sentences of ``text`` that fit in ``limit`` characters (at least
    the first sentence, cut at a word if even that is longer)."""
    out = ""
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        if out and len(out) + 1 + len(sentence) > limit:
            break
        out = f"{out} {sentence}".strip()
    if len(out) > limit:
        out = out[:limit].rsplit(" ", 1)[0] + "..."
    return out


def debian_answer(synopsis: str, paragraphs: list[str], limit: int = 400) -> str:
    """A package's description as an answer: its synopsis as a sentence, then the first
    sentences of its long description within ``limit`` characters."""
    head = synopsis[:1].upper() + synopsis[1:]
    if not head.endswith((".", "!", "?")):
        head += "."
    rest = _sentences_within(paragraphs[0], limit) if paragraphs else ""
    return f"{head} {rest}".strip()


def debian_conversations(index: Path, limit: int = 400) -> tuple[list[dict[str, Any]], dict]:
    """"What does the Debian package X do?" -> its description, one conversation per
    distinct description (packages sharing one, such as a library and its -dev, give
    one: the first), from a Translation-en index or a dpkg status / Packages file; and
    the counts of what was kept and left out."""
    from lmlab.data.summaries import read_deb822, split_description

    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    counts = {"entries": 0, "no description": 0, "same description as an earlier package": 0,
              "no long description": 0}
    for fields in read_deb822(index):
        package = fields.get("Package")
        key = next((k for k in fields if k == "Description" or (
            k.startswith("Description-") and k != "Description-md5")), None)
        if not package:
            continue
        counts["entries"] += 1
        if key is None:
            counts["no description"] += 1
            continue
        if fields[key] in seen:
            counts["same description as an earlier package"] += 1
            continue
        seen.add(fields[key])
        synopsis, paragraphs = split_description(fields[key])
        if not paragraphs:
            counts["no long description"] += 1
            continue
        rows.append({"package": package, "messages": [
            {"role": "user", "content": DEBIAN_QUESTION.format(package=package)},
            {"role": "assistant", "content": debian_answer(synopsis, paragraphs, limit)}]})
    if not rows:
        raise LmlabError(f"{index}: no package with a description (expected a Debian "
                         "Translation-en index, a Packages file or /var/lib/dpkg/status)")
    counts["conversations"] = len(rows)
    return rows, counts


def sharegpt_conversations(path: Path) -> tuple[list[dict[str, Any]], dict]:
    """The complete ShareGPT conversations of a (possibly truncated) JSON array, as
    messages: empty turns dropped, consecutive turns of one side joined, a conversation
    kept when it starts with the user and has an answer; with counts of what was left
    out and why."""
    records, left = recover_json_array(path)
    counts = {"records": len(records), "bytes left unparsed": left, "not a conversation": 0,
              "no user turn before an answer": 0}
    rows = []
    for i, record in enumerate(records):
        try:
            turns = [m for m in conversation_of(record, f"{path}[{i}]")
                     if m["content"].strip()]
        except LmlabError:
            counts["not a conversation"] += 1
            continue
        merged: list[Message] = []
        for m in turns:
            if merged and merged[-1]["role"] == m["role"]:
                merged[-1] = {"role": m["role"],
                              "content": merged[-1]["content"] + "\n\n" + m["content"]}
            else:
                merged.append(dict(m))
        while merged and merged[-1]["role"] != "assistant":
            merged.pop()
        start = 1 if merged and merged[0]["role"] == "system" else 0
        if len(merged) - start < 2 or merged[start]["role"] != "user":
            counts["no user turn before an answer"] += 1
            continue
        rows.append({"id": str(record.get("id", i)), "messages": merged})
    counts["conversations"] = len(rows)
    return rows, counts
