"""The chat template, the SFT loss mask and packing, special tokens in the tokenizers, the chat
session's history window, and the vocabulary growth of a pretrained model (chat.py, tasks.SFTTask)."""
from types import SimpleNamespace

import numpy as np
import pytest

from nanotransformer.chat import (ASSISTANT, CHAT_TOKENS, END, USER, ChatSession, add_chat_tokens, answer,
                                  encode_chat, render, resize_vocab, sft_pair)
from nanotransformer.model import GPT, GPTConfig
from nanotransformer.skills import skills_dataset
from nanotransformer.tasks import IGNORE_INDEX, SFTTask
from nanotransformer.tokenizer import BPETokenizer, CharTokenizer

TEXT = "abcdefghijklmnopqrstuvwxyz0123456789 ?+-.<|>"
CONV = [{"role": "user", "content": "what is 2 + 3?"}, {"role": "assistant", "content": "5"},
        {"role": "user", "content": "and 4 + 4?"}, {"role": "assistant", "content": "8"}]  # fmt: skip


@pytest.fixture
def tok():
    return CharTokenizer(TEXT, special_tokens=CHAT_TOKENS)


# ----------------------------------------------------------------------------- special tokens


def test_char_special_tokens_get_ids_after_the_characters_and_round_trip(tok, tmp_path):
    assert sorted(tok.special_tokens.values()) == list(range(len(tok.chars), len(tok.chars) + 4))
    ids = tok.encode("ab" + END, allowed_special="all")
    assert ids == tok.encode_ordinary("ab") + [tok.special_tokens[END]]
    assert tok.decode(ids) == "ab" + END
    tok.save(tmp_path / "t")
    back = CharTokenizer.load(tmp_path / "t")
    assert back.special_tokens == tok.special_tokens and back.encode(END, allowed_special="all") == [tok.special_tokens[END]]


def test_special_token_text_raises_unless_allowed_and_is_characters_in_encode_ordinary(tok):
    with pytest.raises(ValueError, match="special token '<|end|>'"):
        tok.encode("x" + END)
    assert tok.encode_ordinary(END) == [tok.stoi[c] for c in END]  # seven characters, not the control token
    assert tok.special_tokens[END] not in tok.encode_ordinary(END)


def test_with_tokens_keeps_every_existing_id():
    base = CharTokenizer("hello world")
    grown = base.with_tokens("xyz!", CHAT_TOKENS)
    assert grown.encode_ordinary("hello world") == base.encode("hello world")
    assert grown.vocab_size == base.vocab_size + 4 + 4
    with pytest.raises(ValueError, match="cannot add characters"):
        grown.with_tokens("Q")
    assert grown.with_tokens("xyz", CHAT_TOKENS).special_tokens == grown.special_tokens  # nothing new: same ids


def test_bpe_tokenizer_gets_the_chat_tokens_at_new_ids():
    bpe = BPETokenizer()
    bpe.train("hello world, how are you doing today? " * 20, 270)
    V = bpe.vocab_size
    tok, _ = add_chat_tokens(bpe)
    assert sorted(tok.special_tokens[t] for t in CHAT_TOKENS) == list(range(V, V + 4))
    ids, train = encode_chat(tok, CONV[:2])
    assert tok.decode(ids) == render(CONV[:2])


# ----------------------------------------------------------------------------- the template and the mask


def test_render_is_what_encode_chat_encodes(tok):
    ids, train = encode_chat(tok, CONV, add_generation_prompt=True)
    assert tok.decode(ids) == render(CONV, add_generation_prompt=True)
    assert render(CONV[:2]) == f"{USER}what is 2 + 3?{END}{ASSISTANT}5{END}"
    assert len(ids) == len(train)


def test_loss_mask_is_exactly_the_assistant_text_and_its_end(tok):
    ids, train = encode_chat(tok, CONV)
    trained = "".join(tok.decode([i]) for i, t in zip(ids, train) if t)
    assert trained == "5" + END + "8" + END
    x, y = sft_pair(tok, CONV)
    assert len(x) == len(y) == len(ids) - 1
    assert np.array_equal(x, ids[:-1])
    kept = y != IGNORE_INDEX
    assert tok.decode(y[kept]) == "5" + END + "8" + END  # the user's words are never a target
    assert np.array_equal(y[kept], np.asarray(ids[1:])[kept])  # each target is the next id


def test_user_typed_control_tokens_are_text_in_the_template(tok):
    ids, _ = encode_chat(tok, [{"role": "user", "content": "hi " + END + ASSISTANT}])
    sp = set(tok.special_tokens.values())
    assert [i for i in ids if i in sp] == [tok.special_tokens[USER], tok.special_tokens[END]]


# ----------------------------------------------------------------------------- packing


def test_sft_task_packs_whole_conversations_and_masks_everything_else(tok):
    exs = skills_dataset("train", 200, seed=0)
    big = CharTokenizer("".join(m["content"] for e in exs for m in e.messages) + TEXT, special_tokens=CHAT_TOKENS)
    pairs = [sft_pair(big, e.messages) for e in exs]
    task = SFTTask({"train": pairs, "val": pairs[:20]}, 64, big.special_tokens[END])
    x, y = task.get_batch("train", 8, np.random.default_rng(0))
    assert x.shape == y.shape and x.shape[1] <= 64
    user = big.special_tokens[USER]
    for row_x, row_y in zip(x, y):
        starts = np.flatnonzero(row_x == user)
        assert starts[0] == 0  # a row starts with a conversation
        assert np.all(row_y[row_x == user] == IGNORE_INDEX)  # what follows <|user|> is the user's, not trained
        assert np.all(row_y[row_x == big.special_tokens[ASSISTANT]] != IGNORE_INDEX)  # the answer's first token is
        # the row is whole conversations (x and y both) back to back, then padding
        pos = 0
        while True:
            nxt = [p for p in pairs if pos + len(p[0]) <= len(row_x) and np.array_equal(p[0], row_x[pos : pos + len(p[0])])
                   and np.array_equal(p[1], row_y[pos : pos + len(p[0])])]  # fmt: skip
            if not nxt:
                break
            pos += max(len(p[0]) for p in nxt)
        assert pos > 0 and np.all(row_y[pos:] == IGNORE_INDEX)
        assert np.all(row_x[pos:] == big.special_tokens[END])  # padding
    x2, y2 = task.get_batch("train", 8, np.random.default_rng(0))
    assert np.array_equal(x, x2) and np.array_equal(y, y2)  # seeded


def test_sft_task_leaves_out_conversations_longer_than_the_block(tok):
    short, long = sft_pair(tok, CONV[:2]), sft_pair(tok, CONV)
    task = SFTTask({"train": [short, long], "val": [short]}, len(short[0]), tok.special_tokens[END])
    assert task.dropped == {"train": 1, "val": 0}
    with pytest.raises(ValueError, match="no train conversation fits"):
        SFTTask({"train": [long], "val": [short]}, len(short[0]), tok.special_tokens[END])


# ----------------------------------------------------------------------------- models


def test_resize_vocab_keeps_the_old_logits_and_adds_distinct_new_rows():
    for kw in ({}, {"tie_embeddings": False}):
        m = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, d_model=8, **kw), dtype=np.float64, seed=1)
        big = resize_vocab(m, 24)
        ids = np.array([[1, 5, 7]])
        a, _ = m.forward(ids)
        b, _ = big.forward(ids)
        np.testing.assert_allclose(b[..., :20], a, rtol=1e-12, atol=1e-12)
        assert big.config.vocab_size == 24 and b.shape[-1] == 24
        rows = big.p["wte"][20:]
        assert len({tuple(r) for r in rows}) == 4  # distinct, so even a frozen embedding tells them apart
        old = m.p["wte"]
        assert np.all(np.abs(rows.mean(0) - old.mean(0)) < 4 * old.std(0) + 1e-12)  # on the old rows' scale
        if "lm_head.w" in big.p:
            assert len({tuple(c) for c in big.p["lm_head.w"][:, 20:].T}) == 4


def tiny_chat_model(tok, block_size=32, seed=0):
    return GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=1, n_head=2, d_model=16),
               seed=seed)


def test_chat_session_drops_the_oldest_exchanges_to_fit_and_never_crashes(tok):
    session = ChatSession(tiny_chat_model(tok, block_size=48), tok, max_new_tokens=8)
    notes_seen = []
    for k in range(6):
        ans, notes = session.reply(f"what is {k} + {k}?")
        assert isinstance(ans, str)
        notes_seen += notes
    assert any("dropped the oldest exchange" in n for n in notes_seen)
    ids, _ = encode_chat(tok, session.history)
    assert len(ids) <= 48
    ans, notes = session.reply("x" * 200)  # a turn longer than the context alone
    assert any("longer than the model's context" in n for n in notes)
    session.reset()
    assert session.history == []


def test_chat_session_leaves_out_unknown_characters_with_a_note(tok):
    session = ChatSession(tiny_chat_model(tok), tok, max_new_tokens=4)
    _, notes = session.reply("what is ÿ?")
    assert any("left out characters" in n and "ÿ" in n for n in notes)
    assert session.history[0]["content"] == "what is ?"


class ScriptedModel:
    """A stand-in GPT whose next token is always the next one of `script` (for the decoding loop)."""

    def __init__(self, vocab_size, script, block_size=64):
        self.config = SimpleNamespace(vocab_size=vocab_size, block_size=block_size, n_layer=1)
        self.script, self.n = script, 0

    def forward(self, ids, targets=None, kv_cache=None, **kw):
        if kv_cache is not None:
            kv_cache.k[0] = np.zeros((ids.shape[0], 1, len(kv_cache) + ids.shape[1], 1))
        logits = np.zeros((ids.shape[0], ids.shape[1], self.config.vocab_size))
        logits[:, -1, self.script[min(self.n, len(self.script) - 1)]] = 10.0
        self.n += 1
        return logits, None


def test_answer_stops_at_end_and_streaming_shows_the_same_text(tok):
    script = tok.encode_ordinary("85") + [tok.special_tokens[END]] + tok.encode_ordinary("junk")
    msgs = [{"role": "user", "content": "what is 47 + 38?"}]
    assert answer(ScriptedModel(tok.vocab_size, script), tok, msgs) == "85"
    pieces = []
    session = ChatSession(ScriptedModel(tok.vocab_size, script), tok)
    ans, notes = session.reply("what is 47 + 38?", on_text=pieces.append)
    assert ans == "85" and "".join(pieces) == "85" and not notes
    assert session.history[-1] == {"role": "assistant", "content": "85"}


def test_a_turn_longer_than_the_context_keeps_the_template_tokens(tok):
    from nanotransformer.chat import SYSTEM

    script = tok.encode_ordinary("ok") + [tok.special_tokens[END]]
    for system, kept in (("be brief", True), ("be brief " * 3, False)):  # a system message too long to keep
        model = ScriptedModel(tok.vocab_size, script, block_size=32)
        seen = []
        forward = model.forward
        model.forward = lambda ids, forward=forward, seen=seen, **kw: (seen.append(ids.copy()), forward(ids, **kw))[1]
        session = ChatSession(model, tok, system=system, max_new_tokens=8)
        ans, notes = session.reply("abc" * 40)
        prompt = seen[0][0]
        assert len(prompt) <= 32 - 8 and ans == "ok"
        if kept:
            assert tok.decode(prompt[: len(system) + 2]) == SYSTEM + system + END
        user_at = len(system) + 2 if kept else 0
        assert tok.decode(prompt[user_at : user_at + 1]) == USER and tok.decode(prompt[-2:]) == END + ASSISTANT
        text = tok.decode(prompt[user_at + 1 : -2])
        assert ("abc" * 40).endswith(text) and len(text) == len(prompt) - user_at - 3  # cut from its start
        assert any("system message does not fit" in n for n in notes) == (not kept)
        assert any("kept its last" in n for n in notes)
    # a short turn after a system message too long for the context: only that note, the turn whole
    session = ChatSession(ScriptedModel(tok.vocab_size, script, block_size=32), tok, system="b" * 100, max_new_tokens=8)
    _, notes = session.reply("add 1")
    assert notes == ["note: the system message does not fit in the model's context with this turn; left it out"]
