"""Chat: the template that turns a conversation into tokens, the loss mask of instruction tuning,
and a session that keeps a multi-turn history inside the context window.

    tok, model = add_chat_tokens(tok, model, texts)     # register <|user|> ... (and resize the vocab)
    ids, train = encode_chat(tok, messages)             # one id list, and which ids the loss sees
    x, y = sft_pair(tok, messages)                      # y = next id on assistant tokens, -100 elsewhere
    session = ChatSession(model, tok, temperature=0)
    answer, notes = session.reply("What is 47 + 38?", on_text=print)

The template. Every message is its role token, its text and <|end|>:

    <|system|>Be brief.<|end|><|user|>What is 47 + 38?<|end|><|assistant|>85<|end|>

and a prompt for the next answer ends with <|assistant|> (`add_generation_prompt`). The four
tokens are special tokens of the tokenizer (`CHAT_TOKENS`): each one id, produced only by the
template. Message texts are encoded with `encode_ordinary`, so "<|end|>" typed by a user is seven
characters of text, never the control token (the tests check this).

Instruction tuning (SFT) is next-token prediction on these ids with the loss only where the
assistant speaks: targets are the next id where that id is an assistant text token or the
<|end|> that closes it (so the model learns to stop), and `IGNORE_INDEX` (-100) everywhere else
— the model is not trained to predict the user's words. `tasks.SFTTask` packs such sequences
into batches.

Dimension legend: T time (block size), V vocab.

Does not: apply a model's own published chat template (Llama's, ChatML): a model fine-tuned here
uses this one; or stream partial UTF-8 characters (the session prints whole characters only).
"""
from dataclasses import replace

import numpy as np

from .tasks import IGNORE_INDEX

SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
CHAT_TOKENS = (SYSTEM, USER, ASSISTANT, END)
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}


def has_chat_tokens(tokenizer):
    return all(t in getattr(tokenizer, "special_tokens", {}) for t in CHAT_TOKENS)


def chat_ids(tokenizer):
    """{token: id} of the four chat tokens; ValueError if the tokenizer lacks them."""
    if not has_chat_tokens(tokenizer):
        raise ValueError(f"tokenizer: expected the chat tokens {list(CHAT_TOKENS)} (a model instruction-tuned "
                         "with `nanotransformer sft`), got a tokenizer without them")
    return {t: tokenizer.special_tokens[t] for t in CHAT_TOKENS}


def render(messages, add_generation_prompt=False):
    """The template as text (what `encode_chat` encodes), for reading."""
    text = "".join(ROLE_TOKENS[m["role"]] + m["content"] + END for m in messages)
    return text + (ASSISTANT if add_generation_prompt else "")


def encode_chat(tokenizer, messages, add_generation_prompt=False):
    """messages: [{"role", "content"}] -> ids: list[int], train: list[bool] (same length)

    train[i] is True on the tokens an assistant message consists of: its text and its closing
    <|end|> (not its role token, which the template supplies)."""
    sp = chat_ids(tokenizer)
    ids, train = [], []
    for m in messages:
        body = tokenizer.encode_ordinary(m["content"]) + [sp[END]]
        ids += [sp[ROLE_TOKENS[m["role"]]]] + body
        train += [False] + [m["role"] == "assistant"] * len(body)
    if add_generation_prompt:
        ids.append(sp[ASSISTANT])
        train.append(False)
    return ids, train


def sft_pair(tokenizer, messages):
    """messages -> x: (T,) int64, y: (T,) int64: y[t] = ids[t + 1] where that token is trained,
    IGNORE_INDEX elsewhere (T = number of ids - 1)."""
    ids, train = encode_chat(tokenizer, messages)
    ids = np.asarray(ids, dtype=np.int64)
    y = np.where(np.asarray(train[1:]), ids[1:], IGNORE_INDEX)
    return ids[:-1], y


# ----------------------------------------------------------------------------- preparing a model


def add_chat_tokens(tokenizer, model=None, texts=()):
    """Register the chat tokens (and, for a character tokenizer, every character of `texts` it
    lacks) -> (tokenizer, model). New ids come after the existing ones, so a pretrained model
    keeps its meaning: its embedding (and untied head) gain rows for the new ids, drawn like the
    existing rows (`resize_vocab`). Returns the same objects when nothing is missing."""
    from .tokenizer import BPETokenizer, CharTokenizer

    missing = [t for t in CHAT_TOKENS if t not in getattr(tokenizer, "special_tokens", {})]
    if isinstance(tokenizer, CharTokenizer):
        chars = "".join(texts)
        if missing or any(c not in tokenizer.stoi for c in set(chars)):
            tokenizer = tokenizer.with_tokens(chars, missing)
    elif isinstance(tokenizer, BPETokenizer):
        if missing:
            V = tokenizer.vocab_size
            tokenizer.register_special_tokens({t: V + k for k, t in enumerate(missing)})
    else:
        raise ValueError(f"tokenizer: expected a CharTokenizer or BPETokenizer, got {type(tokenizer).__name__}")
    if model is not None and model.config.vocab_size < tokenizer.vocab_size:
        model = resize_vocab(model, tokenizer.vocab_size)
    return tokenizer, model


def resize_vocab(model, vocab_size, seed=0):
    """A copy of GPT `model` with vocab_size >= its own: rows (columns of an untied head) for the
    new ids are drawn from a Gaussian with the old rows' mean and per-channel variance (Hewitt
    2021): each new token starts as a typical token of the old vocabulary, at its scale, and the
    new tokens differ from one another (identical rows, e.g. the plain mean, could never be told
    apart by a model whose embeddings stay frozen, as under LoRA). Every other parameter is copied."""
    from .checkpoint import refuse_quantized
    from .model import GPT

    refuse_quantized(model, "resized (resize the float model, then quantize it)")

    V = model.config.vocab_size
    if vocab_size < V:
        raise ValueError(f"vocab_size: expected at least the model's {V}, got {vocab_size}")
    new = GPT(replace(model.config, vocab_size=vocab_size), dtype=model.dtype, seed=None)
    rng = np.random.default_rng(seed)
    for name, t in model.p.items():
        if name == "wte":
            new.p[name][:V] = t
            new.p[name][V:] = rng.normal(t.mean(axis=0), t.std(axis=0), size=(vocab_size - V, t.shape[1]))
        elif name == "lm_head.w":
            new.p[name][:, :V] = t
            new.p[name][:, V:] = rng.normal(t.mean(axis=1), t.std(axis=1), size=(vocab_size - V, t.shape[0])).T
        else:
            new.p[name][...] = t
    return new


# ----------------------------------------------------------------------------- a conversation


class ChatSession:
    """A multi-turn conversation with a chat model (a GPT whose tokenizer has `CHAT_TOKENS`).

    reply(text) appends the user's turn, decodes the assistant's answer (streamed through
    on_text(new_text) as it is produced) until <|end|> or max_new_tokens, and appends it too.
    History and answer must fit in the block: before decoding, the oldest exchanges are dropped
    until the prompt leaves room for max_new_tokens (at most half the block); a turn too
    long even alone is cut from its start. Each drop is reported in the returned notes, never an
    error. Characters a character-level model has no id for are left out, with a note.
    Sampling: temperature (0 = greedy), top_k, top_p, seed, as `generation.generate`.
    """

    def __init__(self, model, tokenizer, *, system=None, max_new_tokens=64, temperature=0.0, top_k=None,
                 top_p=None, seed=0):  # fmt: skip
        self.sp = chat_ids(tokenizer)
        self.model, self.tokenizer, self.system = model, tokenizer, system
        bs = model.config.block_size
        self.max_new_tokens = max(1, min(int(max_new_tokens), bs // 2))
        self.sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
        self.rng = np.random.default_rng(seed)
        self.history = []

    def reset(self):
        self.history = []

    def _clean(self, text):
        """text -> (text the tokenizer can encode, note or None)."""
        stoi = getattr(self.tokenizer, "stoi", None)
        if stoi is None or getattr(self.tokenizer, "unk_id", None) is not None:
            return text, None
        bad = sorted({c for c in text if c not in stoi})
        if not bad:
            return text, None
        shown = "".join(bad[:10]) + ("..." if len(bad) > 10 else "")
        return "".join(c for c in text if c in stoi), f"note: left out characters the model does not know: {shown!r}"

    def _prompt(self, notes):
        """The prompt ids of system + history + the generation prompt, dropping old turns to fit."""
        bs = self.model.config.block_size
        budget = bs - self.max_new_tokens
        head = [{"role": "system", "content": self.system}] if self.system else []
        while True:
            ids, _ = encode_chat(self.tokenizer, head + self.history, add_generation_prompt=True)
            if len(ids) <= budget or len(self.history) <= 1:
                break
            self.history = self.history[2:]  # the oldest user + assistant exchange
            notes.append("note: the conversation is longer than the model's context; dropped the oldest exchange")
        if len(ids) > budget:  # one turn alone: keep the template's tokens, cut the text from its start
            sp = self.sp
            text = self.tokenizer.encode_ordinary(self.history[-1]["content"])
            head_ids = encode_chat(self.tokenizer, head)[0] if head else []
            dropped_system = bool(head) and len(head_ids) + 4 > budget  # not even one token of the turn fits beside it
            if dropped_system:
                head_ids = []
                notes.append("note: the system message does not fit in the model's context with this turn; left it out")
            keep = max(1, budget - len(head_ids) - 3)
            if len(text) > keep:
                notes.append(f"note: this turn alone is longer than the model's context; kept its last {keep} tokens")
            ids = head_ids + [sp[USER]] + text[-keep:] + [sp[END], sp[ASSISTANT]]
        return np.asarray(ids, dtype=np.int64)

    def reply(self, text, on_text=None):
        """The user's turn `text` -> (answer: str, notes: list[str])."""
        text, note = self._clean(text)
        notes = [note] if note else []
        self.history.append({"role": "user", "content": text})
        prompt = self._prompt(notes)
        answer, ended = decode_answer(self.model, self.tokenizer, prompt, self.max_new_tokens, on_text=on_text,
                                      rng=self.rng, **self.sampling)  # fmt: skip
        if not ended:
            notes.append(f"note: the answer reached --max-new-tokens ({self.max_new_tokens}) without <|end|>")
        self.history.append({"role": "assistant", "content": answer})
        return answer, notes


def decode_answer(model, tokenizer, prompt_ids, max_new_tokens, *, on_text=None, rng=None, **sampling):
    """Decode the assistant's answer after prompt_ids (ending with <|assistant|>) until a template
    token (<|end|>, or any other the model emits) or max_new_tokens -> (answer: str, ended: bool,
    whether a template token ended it). on_text(new_text) streams it, whole characters only.
    sampling: temperature, top_k, top_p as `generation.generate_ids` (default: greedy)."""
    from .generation import generate_ids

    stops = set(chat_ids(tokenizer).values())
    T0, shown = len(prompt_ids), [""]

    def stream(ids):
        s = tokenizer.decode([int(t) for t in ids[0, T0:] if int(t) not in stops])
        if s.endswith("\ufffd"):  # half a UTF-8 character: wait for the rest
            return
        if len(s) > len(shown[0]):
            on_text(s[len(shown[0]) :])
        shown[0] = s

    sampling.setdefault("temperature", 0.0)
    out = generate_ids(model, np.asarray(prompt_ids), max_new_tokens, rng=rng, on_token=stream if on_text else None,
                       should_stop=lambda new: int(new[-1]) in stops, **sampling)  # fmt: skip
    new = [int(t) for t in out[0, T0:]]
    cut = next((i for i, t in enumerate(new) if t in stops), len(new))
    answer = tokenizer.decode(new[:cut])
    if on_text is not None and len(answer) > len(shown[0]):
        on_text(answer[len(shown[0]) :])
    return answer, cut < len(new)


def answer(model, tokenizer, messages, max_new_tokens=32):
    """The greedy answer of a chat model to a conversation ending with a user message (the
    exact-match evaluation of `nanotransformer eval ... skills`) -> str."""
    ids, _ = encode_chat(tokenizer, messages, add_generation_prompt=True)
    room = model.config.block_size - len(ids)
    if room < 1:
        raise ValueError(f"messages: expected a conversation shorter than the block size {model.config.block_size}, "
                         f"got {len(ids)} tokens")
    return decode_answer(model, tokenizer, ids, min(max_new_tokens, room))[0]
