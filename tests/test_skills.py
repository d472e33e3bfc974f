"""skills: answers recomputed independently, held-out splits, determinism, multi-turn structure,
preference pairs, and the instruction-file loaders on good and bad files."""
import json
import os
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from nanotransformer.skills import (
    SKILLS,
    Example,
    check_conversation,
    held_out,
    load_instructions,
    preference_pairs,
    skill_questions,
    skills_dataset,
    split_of,
    wrong_answer,
)
from nanotransformer.tasks import number_to_words

# Independent oracle: parse a question by its wording, recompute the answer, and name its
# held-out key (None for the documented exceptions: capital, after's days/months/letters).
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
MONTHS = "January February March April May June July August September October November December".split()
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
KNOWN_CAPITALS = {"France": "Paris", "Germany": "Berlin", "Japan": "Tokyo", "Italy": "Rome", "Egypt": "Cairo"}


def oracle(question):
    """question -> (skill, right answer or None when only the table knows it, key or None)."""
    if m := re.fullmatch(r"What is (\d+) ([+-]) (\d+)\?", question):
        a, op, b = int(m[1]), m[2], int(m[3])
        if op == "-":
            assert 10 <= b <= a <= 99
            return "sub2", str(a - b), (a, b)
        lo, hi = (100, 999) if a >= 100 else (10, 99)
        assert lo <= a <= hi and lo <= b <= hi
        return ("add3" if a >= 100 else "add2"), str(a + b), frozenset((a, b))
    if m := re.fullmatch(r"(Reverse|Sort): ([a-z ]+)", question):
        ws = m[2].split()
        assert len(set(ws)) == len(ws)
        if m[1] == "Reverse":
            assert 2 <= len(ws) <= 4
            return "reverse", " ".join(reversed(ws)), frozenset(ws)
        assert 3 <= len(ws) <= 4
        return "sort", " ".join(sorted(ws)), frozenset(ws)
    if m := re.fullmatch(r"How many ([a-z]) in ([a-z]+)\?", question):
        assert m[2].count(m[1]) <= 3
        return "count", str(m[2].count(m[1])), (m[2], m[1])
    if m := re.fullmatch(r"Say (\d+) in words\.", question):
        assert 0 <= int(m[1]) <= 999
        return "words", number_to_words(int(m[1])), int(m[1])
    if m := re.fullmatch(r"What comes after (\w+)\?", question):
        item = m[1]
        if item.isdigit():
            assert 0 <= int(item) <= 998
            return "after", str(int(item) + 1), int(item)
        seq = next(s for s in (DAYS, MONTHS, LETTERS) if item in s)
        return "after", seq[(seq.index(item) + 1) % len(seq)], None
    if m := re.fullmatch(r"What is the capital of ([A-Za-z ]+)\?", question):
        return "capital", KNOWN_CAPITALS.get(m[1]), None
    raise AssertionError(f"unrecognised question {question!r}")


def keys(examples):
    """Held-out keys of every question (every exchange, so multi-turn context counts too)."""
    out = set()
    for ex in examples:
        for m in ex.messages[::2]:
            skill, _, key = oracle(m["content"])
            if key is not None:
                out.add((skill, key))
    return out


# ----------------------------------------------------------------------------- answers


@pytest.mark.parametrize("skill", SKILLS)
def test_every_answer_is_right(skill):
    pairs = skill_questions(skill, "train", 300, seed=0)
    assert len(pairs) == 300
    checked = 0
    for q, a in pairs:
        s, want, _ = oracle(q)
        assert s == skill
        if want is not None:
            assert a == want, q
            checked += 1
    assert checked >= (5 if skill == "capital" else 300)


def test_capitals_are_consistent_and_all_countries_appear():
    pairs = skill_questions("capital", "train", 500, seed=0)
    table = {}
    for q, a in pairs:
        table.setdefault(q, set()).add(a)
    assert all(len(v) == 1 for v in table.values())
    assert 20 <= len(table) <= 30
    assert len({a for v in table.values() for a in v}) == len(table)  # distinct capitals


@pytest.mark.parametrize("skill", ["count", "after", "sort", "reverse"])
def test_skill_variety(skill):
    # count must include 0-occurrence letters and repeated letters; after numbers and named items;
    # sort and reverse both lengths
    pairs = skill_questions(skill, "train", 400, seed=0)
    if skill == "count":
        assert {"0", "1", "2"} <= {a for _, a in pairs}
    elif skill == "after":
        qs = [q for q, _ in pairs]
        assert any(re.search(r"\d", q) for q in qs) and any(w in q for q in qs for w in DAYS + MONTHS)
    else:
        assert len({len(q.split()) - 1 for q, _ in pairs}) == (3 if skill == "reverse" else 2)


# ----------------------------------------------------------------------------- held-out splits


def test_split_fractions():
    pairs = [(a, b) for a in range(10, 100) for b in range(a, 100)]
    got = Counter(split_of("add2", k) for k in pairs)
    n = len(pairs)
    assert 0.08 < got["test"] / n < 0.12 and 0.035 < got["val"] / n < 0.065 and got["train"] / n > 0.82


def test_split_of_is_not_python_hash():
    code = "from nanotransformer.skills import split_of; print([split_of('words', i) for i in range(60)])"
    outs = set()
    for hashseed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hashseed)
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout.strip())  # fmt: skip
    assert outs == {str([split_of("words", i) for i in range(60)])}
    assert split_of("words", np.int64(7)) == split_of("words", 7)


@pytest.mark.parametrize("skill", [s for s in SKILLS if s != "capital"])
def test_held_out_keys_never_in_train(skill):
    train = {oracle(q)[2] for q, _ in skill_questions(skill, "train", 3000, seed=0)} - {None}
    for split, seed in (("test", 1), ("val", 2), ("test", 0)):
        held = {oracle(q)[2] for q, _ in skill_questions(skill, split, 300, seed=seed)} - {None}
        assert len(held) >= 20
        assert not held & train, (split, sorted(held & train, key=str)[:5])
        assert all(split_of(skill, k) == split for k in held if isinstance(k, int | tuple))


def test_held_out_across_whole_datasets():
    train = keys(skills_dataset("train", 3000, seed=0, multi_turn=0.5))
    test = keys(skills_dataset("test", 600, seed=1, multi_turn=0.5))
    val = keys(skills_dataset("val", 600, seed=2, multi_turn=0.5))
    assert len(test) > 300 and len(val) > 200
    assert not test & train and not val & train and not test & val


def test_documented_exceptions_appear_in_every_split():
    for skill, key in (("capital", "France"), ("after", "Tuesday"), ("after", "q")):
        assert not held_out(skill, key)
    assert held_out("after", 47) and held_out("count", ("banana", "a"))
    caps = [{q for q, _ in skill_questions("capital", s, 100, seed=0)} for s in ("train", "val", "test")]
    assert caps[0] == caps[1] == caps[2]


def test_val_and_test_have_distinct_questions():
    for split in ("val", "test"):
        for skill in SKILLS:
            qs = [q for q, _ in skill_questions(skill, split, 200, seed=3)]
            assert len(qs) == len(set(qs)), (split, skill)
    # capital has only its table's questions: an evaluation split stops there
    assert len(skill_questions("capital", "test", 200, seed=0)) < 40


# ----------------------------------------------------------------------------- mixing


def test_determinism_and_seeds():
    a, b = skills_dataset("train", 300, seed=0), skills_dataset("train", 300, seed=0)
    assert a == b
    assert all(isinstance(e, Example) for e in a)
    assert skills_dataset("train", 300, seed=1) != a
    assert [e.answer for e in skills_dataset("test", 200, seed=5)] == [e.answer for e in skills_dataset("test", 200, seed=5)]


def test_sizes_and_equal_shares():
    train = skills_dataset("train", 901, seed=0)
    assert len(train) == 901
    counts = Counter(e.skill for e in train)
    assert set(counts) == set(SKILLS) and max(counts.values()) - min(counts.values()) <= 1
    for split in ("val", "test"):
        assert 0.9 * 270 <= len(skills_dataset(split, 270, seed=0)) <= 270
    sub = skills_dataset("train", 100, seed=0, skills=("add2", "words"))
    assert Counter(e.skill for e in sub) == {"add2": 50, "words": 50}
    assert [e.skill for e in sub] != sorted(e.skill for e in sub)  # shuffled


@pytest.mark.parametrize("multi_turn", [0.0, 0.1, 1.0])
def test_conversation_structure(multi_turn):
    examples = skills_dataset("train", 1000, seed=0, multi_turn=multi_turn)
    n_multi = sum(len(e.messages) == 4 for e in examples)
    if multi_turn == 0.0:
        assert n_multi == 0
    elif multi_turn == 1.0:
        assert n_multi == len(examples)
    else:
        assert 50 <= n_multi <= 150
    for e in examples:
        assert len(e.messages) in (2, 4)
        assert [m["role"] for m in e.messages] == ["user", "assistant"] * (len(e.messages) // 2)
        assert e.answer == e.messages[-1]["content"] and e.prompt == e.messages[:-1]
        assert check_conversation(list(e.messages), "x") == e.messages
        for q, a in zip(e.messages[::2], e.messages[1::2]):
            s, want, _ = oracle(q["content"])
            assert want is None or a["content"] == want
        assert oracle(e.prompt[-1]["content"])[0] == e.skill
        chars = sum(len(m["content"]) for m in e.messages)
        assert chars <= (60 if len(e.messages) == 2 else 120)


# ----------------------------------------------------------------------------- preference pairs


def test_preference_pairs():
    pairs = preference_pairs("train", 900, seed=0)
    assert len(pairs) == 900 and pairs == preference_pairs("train", 900, seed=0)
    all_capitals = {a for q, a in skill_questions("capital", "train", 300, seed=0)}
    for prompt, chosen, rejected, skill in pairs:
        question = prompt[-1]["content"]
        assert prompt[-1]["role"] == "user" and rejected != chosen
        s, want, key = oracle(question)
        assert s == skill and (want is None or chosen == want)
        if skill in ("add2", "add3", "sub2", "count"):
            assert rejected.isdigit()
            assert sorted(rejected) == sorted(chosen) or abs(int(rejected) - int(chosen)) in (1, 10)
        elif skill in ("reverse", "sort"):
            assert sorted(rejected.split()) == sorted(chosen.split())
        elif skill == "words":
            assert rejected in {number_to_words(key - 1) if key else "", number_to_words(key + 1)}
        elif skill == "after":
            item = question[len("What comes after "):-1]
            assert rejected == item or oracle(f"What comes after {chosen}?")[1] == rejected
        else:
            assert rejected in all_capitals
    assert len({skill for *_, skill in pairs}) == len(SKILLS)


@pytest.mark.parametrize("skill", SKILLS)
def test_wrong_answer_never_right(skill):
    rng = np.random.default_rng(0)
    seen = set()
    for q, a in skill_questions(skill, "train", 400, seed=4):
        for _ in range(5):
            w = wrong_answer(skill, q, a, rng)
            assert w != a and isinstance(w, str) and w
            seen.add(w)
    assert len(seen) >= (4 if skill == "count" else 20)


def test_wrong_answer_edge_cases():
    rng = np.random.default_rng(0)
    assert {wrong_answer("sub2", "What is 10 - 10?", "0", rng) for _ in range(50)} == {"1", "10"}
    assert {wrong_answer("count", "How many z in cat?", "0", rng) for _ in range(20)} == {"1"}
    assert {wrong_answer("reverse", "Reverse: cat dog", "dog cat", rng) for _ in range(20)} == {"cat dog"}
    assert {wrong_answer("words", "Say 0 in words.", "zero", rng) for _ in range(20)} == {"one"}
    assert {wrong_answer("after", "What comes after Sunday?", "Monday", rng) for _ in range(40)} == {"Sunday", "Tuesday"}
    with pytest.raises(ValueError, match="question: expected a 'words' question"):
        wrong_answer("words", "What is 4 + 4?", "8", rng)
    with pytest.raises(ValueError, match="skill: expected one of"):
        wrong_answer("poetry", "?", "!", rng)


@pytest.mark.parametrize("call, match", [
    (lambda: skill_questions("poetry", "train", 5, 0), "skill: expected one of add2"),
    (lambda: skill_questions("add2", "dev", 5, 0), "split: expected one of train, val, test, got 'dev'"),
    (lambda: skills_dataset("train", -1), "n: expected a non-negative integer, got -1"),
    (lambda: skills_dataset("train", 10, seed=-3), "seed: expected a non-negative integer"),
    (lambda: skills_dataset("train", 10, multi_turn=1.5), r"multi_turn: expected a probability in \[0, 1\], got 1.5"),
    (lambda: skills_dataset("train", 10, skills=()), "skills: expected a non-empty tuple"),
    (lambda: skills_dataset("train", 10, skills="add2"), "skills: expected a non-empty tuple"),
])  # fmt: skip
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------------------------- loading instruction files


def test_load_alpaca(tmp_path):
    p = tmp_path / "alpaca.json"
    records = [{"instruction": "Add.", "input": "2 + 3", "output": "5"},
               {"instruction": "Say hi.", "input": "", "output": "hi"},
               {"instruction": "Name a colour.", "output": "red"}]  # fmt: skip
    p.write_text("  \n" + json.dumps(records, indent=2), encoding="utf-8")
    convs = load_instructions(p)
    assert convs == [
        ({"role": "user", "content": "Add.\n\n2 + 3"}, {"role": "assistant", "content": "5"}),
        ({"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}),
        ({"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "red"}),
    ]


def test_load_jsonl(tmp_path):
    p = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello", "name": "bot"}]},
            {"messages": [{"role": "user", "content": "1?"}, {"role": "assistant", "content": "2"},
                          {"role": "user", "content": "3?"}, {"role": "assistant", "content": "4"}]}]  # fmt: skip
    p.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n", encoding="utf-8")
    convs = load_instructions(str(p))
    assert [tuple(m["role"] for m in c) for c in convs] == [("system", "user", "assistant"), ("user", "assistant") * 2]
    assert convs[0][2] == {"role": "assistant", "content": "Hello"}  # extra keys dropped
    assert convs[1][-1]["content"] == "4"


def test_skills_round_trip_through_jsonl(tmp_path):
    p = tmp_path / "skills.jsonl"
    examples = skills_dataset("train", 50, seed=0, multi_turn=0.5)
    p.write_text("".join(json.dumps({"messages": list(e.messages)}) + "\n" for e in examples), encoding="utf-8")
    assert load_instructions(p) == [e.messages for e in examples]


def _msgs(*pairs):
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in pairs]})


U, A = ("user", "q"), ("assistant", "a")
BAD_FILES = [
    ("a.json", json.dumps([{"instruction": "x", "output": "y"}, {"instruction": "x"}]), ": record 1: missing field 'output'"),
    ("a.json", json.dumps([{"output": "y"}]), ": record 0: missing field 'instruction'"),
    ("a.json", json.dumps([{"instruction": "x", "input": 3, "output": "y"}]), ": record 0: field 'input' is a int"),
    ("a.json", json.dumps([["x", "y"]]), ": record 0: expected an object with 'instruction' and 'output', got list"),
    ("a.json", json.dumps([{"instruction": "x", "output": ""}]), ": record 0: message 1 \\(assistant\\) has empty content"),
    ("a.json", "[]", ": expected a non-empty list of Alpaca records"),
    ("a.json", '[\n {"instruction": "x",\n  "output": y}\n]', ":3: invalid JSON"),
    ("c.jsonl", _msgs(U, A) + "\n" + _msgs(U, ("bot", "a")), ":2: message 1 has role 'bot', expected one of user/assistant/system"),
    ("c.jsonl", json.dumps({"messages": [{"role": "user", "content": ["q"]}, dict(zip(("role", "content"), A))]}),
     ":1: message 0 content is a list, expected a string"),
    ("c.jsonl", json.dumps({"messages": []}), ":1: expected a non-empty conversation"),
    ("c.jsonl", "\n" + _msgs(U, A, U), ":2: expected the conversation to end with an assistant message"),
    ("c.jsonl", _msgs(U, U, A), ":1: message 1 has role 'user', expected 'assistant'"),
    ("c.jsonl", _msgs(U, ("system", "s"), A), ":1: message 1 has role 'system', expected a system message only first"),
    ("c.jsonl", _msgs(A), ":1: message 0 has role 'assistant', expected 'user'"),
    ("c.jsonl", _msgs(U, A) + "\n" + '{"messages": [', ":2: invalid JSON"),
    ("c.jsonl", json.dumps({"conversation": []}), ":1: expected an object with a 'messages' list"),
    ("c.jsonl", json.dumps({"messages": [{"role": "user"}]}), ":1: message 0 is missing field 'content'"),
    ("c.jsonl", json.dumps({"messages": ["hi"]}), ":1: message 0 is a str"),
    ("c.jsonl", json.dumps({"messages": "hi"}), ":1: expected a list of messages, got str"),
    ("c.jsonl", b"\xff\xfe" + b"junk", ": expected UTF-8 text, got an undecodable byte at offset 0"),
    ("c.jsonl", " \n\n ", ": empty file"),
]  # fmt: skip


@pytest.mark.parametrize("name, content, match", BAD_FILES)
def test_load_bad_files(tmp_path, name, content, match):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    with pytest.raises(ValueError, match=re.escape(str(p)) + match):
        load_instructions(p)


def test_load_missing_file(tmp_path):
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "nope.json")) + ": no such file"):
        load_instructions(tmp_path / "nope.json")


def test_check_conversation_normalises_without_mutating():
    msgs = [{"role": "user", "content": "q", "extra": 1}, {"role": "assistant", "content": "a"}]
    out = check_conversation(msgs, "here")
    assert out == ({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"})
    assert isinstance(out, tuple) and msgs[0]["extra"] == 1
    with pytest.raises(ValueError, match="^here: expected a list of messages, got dict"):
        check_conversation({"role": "user"}, "here")
