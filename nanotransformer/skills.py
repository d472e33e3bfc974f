"""Instruction-tuning data: "skills", a built-in synthetic set of short questions with one
verifiable answer each (small enough for a ~1M-parameter character model to learn on a CPU in
minutes), loaders for user instruction data, and preference pairs for DPO.

    examples = skills_dataset("train", n=2000, seed=0)     # [Example(skill, messages, answer, prompt)]
    examples[0].messages   # ({"role": "user", "content": "What is 47 + 38?"}, {"role": "assistant", "content": "85"})
    pairs = preference_pairs("train", n=1000)              # [(prompt messages, chosen, rejected, skill)]
    convs = load_instructions("alpaca.json")               # or chat JSONL: [(message, ...), ...]

A conversation is a tuple of messages {"role": "user" | "assistant", "content": str}: it starts
with a user message, roles alternate, and it ends with the assistant (a "system" message is
allowed only first, in loaded data). The skills, one example each:

    add2     What is 47 + 38?                 -> 85           (operands 10..99)
    add3     What is 347 + 281?               -> 628          (operands 100..999)
    sub2     What is 85 - 38?                 -> 47           (10..99, a >= b)
    reverse  Reverse: cat dog sun             -> sun dog cat  (2-4 distinct words of WORDS)
    sort     Sort: pear fig apple             -> apple fig pear (3-4 distinct words)
    count    How many a in banana?            -> 3            (0-3 occurrences)
    words    Say 47 in words.                 -> forty seven  (0..999, tasks.number_to_words)
    after    What comes after 47?             -> 48           (0..998, or a day, month or letter)
    capital  What is the capital of France?   -> Paris        (the CAPITALS table)

Held-out splits: every question has a *key*, and `split_of(skill, key)` puts the key in train
(~85 %), val (~5 %) or test (~10 %) by a SHA-256 of (skill, key), so the split never depends on
the seed or on the process. Keys: the unordered operand pair for add2/add3 (47 + 38 and 38 + 47
are one key), the ordered pair for sub2, the number for words and after, the sorted word tuple for
reverse and sort (a test word set is never seen in training in any order), (word, letter) for
count. Exceptions, in every split because a lookup from memory cannot be held out by value:
capital, and after's days, months and letters (`held_out` is False for them).

Dimension legend: N examples (no arrays here: everything is Python strings).

Does not: tokenise (a character tokenizer or the chat template does that), add chat-template
markers, or generate open-ended text (every answer is exact-match checkable).
"""
import hashlib
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .tasks import number_to_words

SKILLS = ("add2", "add3", "sub2", "reverse", "sort", "count", "words", "after", "capital")
SPLITS = ("train", "val", "test")
ROLES = ("user", "assistant", "system")
TEST_FRACTION, VAL_FRACTION = 0.10, 0.05

WORDS = ("ant apple banana bee bird book cake cat corn cow dog door drum egg fig fish frog goat hat hill "
         "kiwi lake lamp leaf lime milk moon owl pear plum rain rice road rock salt sand ship snow star sun "
         "tree wind").split()  # fmt: skip
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")  # fmt: skip
LETTERS = tuple("abcdefghijklmnopqrstuvwxyz")
CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi", "Egypt": "Cairo", "Kenya": "Nairobi",
    "Peru": "Lima", "Chile": "Santiago", "Canada": "Ottawa", "Mexico": "Mexico City", "Brazil": "Brasilia",
    "Russia": "Moscow", "Greece": "Athens", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki",
    "Poland": "Warsaw", "Austria": "Vienna", "Ireland": "Dublin", "Cuba": "Havana", "Turkey": "Ankara",
    "Australia": "Canberra",
}  # fmt: skip

# A val/test split with fewer distinct questions than asked for (capital has 26, words' test split
# about 100) is recognised as used up after this many draws in a row that give nothing new.
MAX_MISSES = 5000


@dataclass(frozen=True)
class Example:
    """One skills conversation. skill: one of SKILLS; messages: the conversation, ending with the
    assistant's answer; answer == messages[-1]["content"] (the exact-match target); prompt ==
    messages[:-1] (what the model is given)."""

    skill: str
    messages: tuple
    answer: str
    prompt: tuple


def _message(role, content):
    return {"role": role, "content": content}


def _example(skill, messages):
    messages = tuple(messages)
    return Example(skill, messages, messages[-1]["content"], messages[:-1])


def _check_skill(skill):
    if skill not in SKILLS:
        raise ValueError(f"skill: expected one of {', '.join(SKILLS)}, got {skill!r}")


def _check_args(split, n, seed, skills=SKILLS):
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n: expected a non-negative integer, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    if isinstance(skills, str) or not skills:
        raise ValueError(f"skills: expected a non-empty tuple of skill names, got {skills!r}")
    for s in skills:
        _check_skill(s)


# ----------------------------------------------------------------------------- held-out splits


def _canonical(key):
    """np.int64(47) -> 47 and lists -> tuples, so a key's repr (hence its split) does not depend
    on how it was built (NumPy 2 reprs np.int64(47) as "np.int64(47)")."""
    if isinstance(key, (tuple, list)):
        return tuple(_canonical(k) for k in key)
    return int(key) if isinstance(key, np.integer) else key


def split_of(skill, key):
    """(skill, key) -> "train" | "val" | "test", from the first 8 bytes of SHA-256(repr((skill,
    key))) as a fraction u in [0, 1): test if u < 0.10, val if u < 0.15, else train. Stable across
    seeds, processes and machines (Python's own hash() of a str is salted per process)."""
    _check_skill(skill)
    digest = hashlib.sha256(repr((skill, _canonical(key))).encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    return "test" if u < TEST_FRACTION else "val" if u < TEST_FRACTION + VAL_FRACTION else "train"


def held_out(skill, key):
    """False for the keys that appear in every split (capital, and after's days, months and
    letters: facts recalled from memory, which cannot be held out by value); True otherwise."""
    _check_skill(skill)
    return not (skill == "capital" or (skill == "after" and isinstance(key, str)))


def _after(item):
    """The successor: 47 -> 48, "Sunday" -> "Monday", "December" -> "January", "z" -> "a"."""
    if isinstance(item, (int, np.integer)):
        return str(int(item) + 1)
    seq = next(s for s in (DAYS, MONTHS, LETTERS) if item in s)
    return seq[(seq.index(item) + 1) % len(seq)]


def _draw(skill, rng):
    """One random question of `skill` -> (key, question, answer)."""
    if skill in ("add2", "add3", "sub2"):
        lo, hi = (100, 1000) if skill == "add3" else (10, 100)
        a, b = (int(v) for v in rng.integers(lo, hi, size=2))
        if skill == "sub2":
            a, b = max(a, b), min(a, b)
            return (a, b), f"What is {a} - {b}?", str(a - b)
        return (min(a, b), max(a, b)), f"What is {a} + {b}?", str(a + b)
    if skill in ("reverse", "sort"):
        k = int(rng.integers(2, 5)) if skill == "reverse" else int(rng.integers(3, 5))
        ws = [WORDS[i] for i in rng.permutation(len(WORDS))[:k]]
        answer = ws[::-1] if skill == "reverse" else sorted(ws)
        return tuple(sorted(ws)), f"{skill.capitalize()}: {' '.join(ws)}", " ".join(answer)
    if skill == "count":
        word = WORDS[int(rng.integers(len(WORDS)))]
        # mostly a letter of the word (1-3 times), sometimes one it lacks (0 times)
        pool = sorted(set(word)) if rng.random() < 0.8 else [c for c in LETTERS if c not in word]
        letter = pool[int(rng.integers(len(pool)))]
        return (word, letter), f"How many {letter} in {word}?", str(word.count(letter))
    if skill == "words":
        x = int(rng.integers(0, 1000))
        return x, f"Say {x} in words.", number_to_words(x)
    if skill == "after":
        if rng.random() < 0.6:
            item = int(rng.integers(0, 999))
        else:
            seq = (DAYS, MONTHS, LETTERS)[int(rng.integers(3))]
            item = seq[int(rng.integers(len(seq)))]
        return item, f"What comes after {item}?", _after(item)
    country = list(CAPITALS)[int(rng.integers(len(CAPITALS)))]
    return country, f"What is the capital of {country}?", CAPITALS[country]


# ----------------------------------------------------------------------------- datasets


def skill_questions(skill, split, n, seed=0):
    """One skill's single-turn (question, answer) pairs of one split: random keys drawn from
    np.random.default_rng([seed, crc32(skill)]), kept if their split (`split_of`) is `split`.

    "train" gives exactly n pairs, drawn independently (repeats allowed, so a skill with few
    questions such as capital keeps its share). "val" and "test" give each question at most once:
    n pairs, or fewer when the split has fewer distinct questions (given up after MAX_MISSES
    draws in a row that bring nothing new).
    """
    _check_skill(skill)
    _check_args(split, n, seed)
    rng = np.random.default_rng([int(seed), zlib.crc32(skill.encode())])
    out, seen, misses = [], set(), 0
    while len(out) < n and misses < MAX_MISSES:
        key, question, answer = _draw(skill, rng)
        if (held_out(skill, key) and split_of(skill, key) != split) or (split != "train" and question in seen):
            misses += 1
            continue
        misses = 0
        seen.add(question)
        out.append((question, answer))
    return out


def skills_dataset(split="train", n=2000, seed=0, skills=SKILLS, multi_turn=0.1):
    """About n `Example`s of `split`, shuffled with `seed`; the same arguments give the same list.

    Equal shares, round-robin by count: each skill contributes n // len(skills) questions (the
    first n % len(skills) skills one more), from `skill_questions(skill, split, ., seed)`; val and
    test may be shorter (see there). With probability multi_turn an example is two exchanges: a
    random other question of the same split with its answer, then this example's question (skill,
    answer and prompt are always the last exchange's), so no held-out key leaks into training.
    """
    _check_args(split, n, seed, skills)
    if not 0.0 <= multi_turn <= 1.0:
        raise ValueError(f"multi_turn: expected a probability in [0, 1], got {multi_turn!r}")
    k = len(skills)
    pool = [(s, q, a) for i, s in enumerate(skills) for q, a in skill_questions(s, split, n // k + (i < n % k), seed)]
    rng = np.random.default_rng(seed)
    examples = []
    for i in rng.permutation(len(pool)).tolist():
        skill, question, answer = pool[i]
        messages = (_message("user", question), _message("assistant", answer))
        if len(pool) > 1 and rng.random() < multi_turn:
            j = int(rng.integers(len(pool) - 1))
            _, q0, a0 = pool[j + (j >= i)]  # any question but this one
            messages = (_message("user", q0), _message("assistant", a0)) + messages
        examples.append(_example(skill, messages))
    return examples


_PATTERNS = {"reverse": r"Reverse: (.+)", "sort": r"Sort: (.+)", "words": r"Say (\d+) in words\.",
             "after": r"What comes after (\w+)\?"}  # fmt: skip


def wrong_answer(skill, question, answer, rng):
    """A plausible wrong answer to `question` (a skills question whose right answer is `answer`),
    never equal to `answer`: arithmetic off by 1 or 10 or with two neighbouring digits swapped;
    reverse/sort with two words swapped or in the question's order; count off by one; words for a
    neighbouring number; after -> the same item or the one two ahead; capital -> another capital."""
    _check_skill(skill)
    body = None
    if skill in _PATTERNS:
        m = re.fullmatch(_PATTERNS[skill], question)
        if m is None:
            raise ValueError(f"question: expected a {skill!r} question matching {_PATTERNS[skill]!r}, got {question!r}")
        body = m.group(1)
    if skill in ("add2", "add3", "sub2", "count"):
        if not answer.isdigit():
            raise ValueError(f"answer: expected a non-negative integer for {skill!r}, got {answer!r}")
        v = int(answer)
        steps = (1, -1) if skill == "count" else (1, -1, 10, -10)
        cands = [str(v + d) for d in steps if v + d >= 0]
        if skill != "count":
            swaps = [answer[:i] + answer[i + 1] + answer[i] + answer[i + 2:] for i in range(len(answer) - 1)]
            cands += [s for s in swaps if s[0] != "0"]
    elif skill in ("reverse", "sort"):
        ws = answer.split()
        i, j = sorted(int(x) for x in rng.permutation(len(ws))[:2]) if len(ws) > 1 else (0, 0)
        swapped = ws[:i] + [ws[j]] + ws[i + 1:j] + [ws[i]] + ws[j + 1:] if i != j else ws
        cands = [body, " ".join(swapped)]
    elif skill == "words":
        x = int(body)
        cands = [number_to_words(y) for y in (x - 1, x + 1) if 0 <= y < 10**9]
    elif skill == "after":
        item = int(body) if body.isdigit() else body
        if not isinstance(item, int) and item not in DAYS + MONTHS + LETTERS:
            raise ValueError(f"question: expected a number, day, month or letter after 'after', got {body!r}")
        cands = [str(item), _after(int(_after(item)) if isinstance(item, int) else _after(item))]
    else:
        cands = list(CAPITALS.values())
    cands = [c for c in dict.fromkeys(cands) if c != answer]
    if not cands:
        raise ValueError(f"answer: found no wrong answer different from {answer!r} for {question!r}")
    return cands[int(rng.integers(len(cands)))]


def preference_pairs(split="train", n=1000, seed=0, skills=SKILLS):
    """DPO data: for each example of `skills_dataset(split, n, seed, skills)` -> (prompt messages,
    chosen = the right answer, rejected = `wrong_answer(...)`, skill). The wrong answers are drawn
    from np.random.default_rng([seed, 1]), apart from the stream that chose the examples."""
    rng = np.random.default_rng([int(seed), 1])
    return [(ex.prompt, ex.answer, wrong_answer(ex.skill, ex.prompt[-1]["content"], ex.answer, rng), ex.skill)
            for ex in skills_dataset(split, n, seed, skills)]  # fmt: skip


# ----------------------------------------------------------------------------- user instruction data


def check_conversation(messages, where):
    """Validate one conversation -> a tuple of fresh {"role", "content"} dicts (other keys dropped).

    Expected: a non-empty list of messages, each a dict with a role in ROLES and a non-empty string
    content; "system" only first; then user and assistant alternating, starting with user and
    ending with assistant. Errors are ValueError prefixed with `where` (e.g. "data.jsonl:7") and
    name the message by its 0-based index.
    """
    if not isinstance(messages, (list, tuple)):
        raise ValueError(f"{where}: expected a list of messages, got {type(messages).__name__}")
    if not messages:
        raise ValueError(f"{where}: expected a non-empty conversation, got no messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"{where}: message {i} is a {type(m).__name__}, expected an object with role and content")
        for field in ("role", "content"):
            if field not in m:
                raise ValueError(f"{where}: message {i} is missing field {field!r}")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise ValueError(f"{where}: message {i} has role {role!r}, expected one of {'/'.join(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"{where}: message {i} content is a {type(content).__name__}, expected a string")
        if not content:
            raise ValueError(f"{where}: message {i} ({role}) has empty content, expected some text")
        offset = 1 if out and out[0]["role"] == "system" else 0
        if role == "system" and i:
            raise ValueError(f"{where}: message {i} has role 'system', expected a system message only first")
        want = ("user", "assistant")[(i - offset) % 2]
        if role != "system" and role != want:
            raise ValueError(f"{where}: message {i} has role {role!r}, expected {want!r} (user and assistant alternate,"
                             " starting with user)")  # fmt: skip
        out.append(_message(role, content))
    if out[-1]["role"] != "assistant":
        raise ValueError(f"{where}: expected the conversation to end with an assistant message, "
                         f"got {out[-1]['role']!r} last")  # fmt: skip
    return tuple(out)


def _load_alpaca(path, text):
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty list of Alpaca records, got an empty list")
    convs = []
    for i, rec in enumerate(data):
        where = f"{path}: record {i}"
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected an object with 'instruction' and 'output', got {type(rec).__name__}")
        for field in ("instruction", "output"):
            if field not in rec:
                raise ValueError(f"{where}: missing field {field!r}")
        for field in ("instruction", "input", "output"):
            if field in rec and not isinstance(rec[field], str):
                raise ValueError(f"{where}: field {field!r} is a {type(rec[field]).__name__}, expected a string")
        user = rec["instruction"] + ("\n\n" + rec["input"] if rec.get("input") else "")
        convs.append(check_conversation([_message("user", user), _message("assistant", rec["output"])], where))
    return convs


def read_text(path, what):
    """A UTF-8 file (a BOM is allowed) -> its text; ValueError naming the file if it is missing or
    not UTF-8. what: what the file should hold, for the message."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file (expected {what})")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: expected UTF-8 text, got an undecodable byte at offset {e.start}") from None


def jsonl_records(path, text):
    """The JSON values of a JSONL text's non-empty lines -> [(line number, value)]; a line that
    is not JSON is a ValueError naming the file and the line (1-based)."""
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    return out


def _load_jsonl(path, text):
    convs = []
    for lineno, obj in jsonl_records(path, text):
        if not isinstance(obj, dict) or "messages" not in obj:
            got = "an object without it" if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"{path}:{lineno}: expected an object with a 'messages' list, got {got}")
        convs.append(check_conversation(obj["messages"], f"{path}:{lineno}"))
    return convs


def load_instructions(path):
    """A file of instruction data -> [conversation], each a tuple of messages (`check_conversation`).

    The format is chosen by content: a file whose first non-space character is "[" is Alpaca JSON,
    a list of {"instruction", "input" (optional, may be empty), "output"} records, read as the user
    message instruction (+ "\\n\\n" + input when there is one) and the assistant message output.
    Anything else is chat JSONL: one {"messages": [{"role", "content"}, ...]} per non-empty line.
    Errors are ValueError naming the file and the record (0-based) or line (1-based).
    """
    path = Path(path)
    text = read_text(path, "an Alpaca JSON file or a chat JSONL file")
    if not text.strip():
        raise ValueError(f"{path}: empty file, expected Alpaca JSON (a list of records) or chat JSONL")
    convs = _load_alpaca(path, text) if text.lstrip().startswith("[") else _load_jsonl(path, text)
    if not convs:
        raise ValueError(f"{path}: expected at least one conversation, found none")
    return convs
