"""Build tests/fixtures/tiny-gpt2: a tiny GPT-2 in Hugging Face format, plus what `transformers`
computes with it, so tests/test_hf.py can check our loader without torch.

Run (offline is fine; needs torch==2.13.0 CPU, transformers, tokenizers, safetensors):

    python -m venv venv-hf && venv-hf/bin/pip install torch==2.13.0 transformers tokenizers safetensors
    venv-hf/bin/python benchmarks/make_gpt2_fixture.py            # writes tests/fixtures/tiny-gpt2/

What it writes, in the layout of a model downloaded from the Hugging Face hub:
    config.json, generation_config.json, model.safetensors   (GPT2LMHeadModel.save_pretrained)
    vocab.json, merges.txt                                   (GPT-2's tokenizer files)
and the reference answers:
    reference.json               prompts, their ids, greedy continuations, tokenizer test strings
    reference_logits.safetensors transformers' float32 logits for each prompt, (T, V) each

The tokenizer: the real GPT-2 vocab.json/merges.txt (50257 tokens, 1.5 MB) are too big to commit,
so we train a byte-level BPE of 400 tokens on Alice in Wonderland with Hugging Face `tokenizers`
(GPT-2's byte-to-unicode alphabet and pre-tokenizer), then append <|endoftext|> as the last id,
where GPT-2 has it. The model: GPT-2's architecture at toy size (2 layers, 4 heads, 32 channels,
64 positions), trained for a few hundred steps on the same text so that greedy decoding says
something Alice-like and, more to the point, so that the top two logits at every greedy step are
far enough apart (checked below) that float32 round-off cannot change the argmax.
"""
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import safetensors.numpy
import tokenizers
import torch
import transformers
from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "tiny-gpt2"
TEXT = ROOT / "nanotransformer" / "data" / "alice.txt"
EOT = "<|endoftext|>"

VOCAB_BPE = 400  # byte-level tokens learned by `tokenizers` (256 bytes + 144 merges); +1 for EOT
N_POSITIONS, N_EMBD, N_LAYER, N_HEAD = 64, 32, 2, 4
TRAIN_STEPS, BATCH, LR, SEED = 400, 16, 3e-3, 0
MAX_NEW_TOKENS = 24
MIN_MARGIN = 1e-3  # every greedy step's top-1 minus top-2 logit; >> the 1e-4 test tolerance

PROMPTS = [
    "Alice was beginning to get very tired",
    "`Off with her head!' the Queen",
    "The Cat only grinned when it saw Alice.",
    " said the Hatter",
]

# Strings whose ids the tests compare (non-ASCII, runs of spaces, newlines, digits, contractions).
TOKENIZER_STRINGS = [
    "Hello world",
    "  two leading spaces,   three inside, trailing   ",
    "Alice's cat won't say what it's seen; they'll ask, I'd say, we've been, you're right",
    "ALICE'S ADVENTURES IN WONDERLAND\n\n\n    CHAPTER I\n\tDown the Rabbit-Hole",
    "numbers 1234567 and 3.14159, dates 2024-05-06",
    "héllo wörld, naïve café — “quotes” and ‘single’ ones",
    "日本語のテキストと中文字符",
    "emoji 🙂👍🏽 and combining e\u0301 and zero\u200bwidth",
    "\r\n windows line end \r\n\r\n",
    "",
    " ",
    "a\n\n\nb   \n   c",
]


def train_tokenizer(tmp):
    """Byte-level BPE trained by `tokenizers`, saved as GPT-2's vocab.json + merges.txt."""
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)  # GPT-2 does not prefix a space
    bpe.train([str(TEXT)], vocab_size=VOCAB_BPE, min_frequency=2, show_progress=False, special_tokens=[])
    bpe.save_model(str(tmp))
    vocab = json.loads((tmp / "vocab.json").read_text(encoding="utf-8"))
    assert EOT not in vocab and sorted(vocab.values()) == list(range(len(vocab)))
    vocab[EOT] = len(vocab)  # GPT-2 keeps <|endoftext|> as its last id (50256)
    (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    return GPT2Tokenizer.from_pretrained(tmp)  # reads vocab.json + merges.txt


def train_model(tok, vocab_size):
    """A toy GPT-2, trained briefly on Alice (float32, CPU, deterministic)."""
    torch.manual_seed(SEED)
    config = GPT2Config(
        vocab_size=vocab_size, n_positions=N_POSITIONS, n_embd=N_EMBD, n_layer=N_LAYER, n_head=N_HEAD,
        bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1,
    )
    model = GPT2LMHeadModel(config)
    data = torch.tensor(tok(TEXT.read_text(encoding="utf-8"))["input_ids"], dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    g = torch.Generator().manual_seed(SEED)
    model.train()
    for step in range(TRAIN_STEPS):
        starts = torch.randint(0, len(data) - N_POSITIONS - 1, (BATCH,), generator=g)
        x = torch.stack([data[s : s + N_POSITIONS] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == TRAIN_STEPS - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}")
    return model.eval()


def main():
    torch.set_num_threads(1)  # deterministic float32 sums, and polite on a shared machine
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok = train_tokenizer(tmp)
        V = len(tok)
        model = train_model(tok, V)
        if OUT.exists():
            shutil.rmtree(OUT)
        OUT.mkdir(parents=True)
        model.save_pretrained(OUT, safe_serialization=True)
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(tmp / name, OUT / name)

    # reference answers, computed from the files just written (as a user would load them)
    tok = GPT2Tokenizer.from_pretrained(OUT)
    model = GPT2LMHeadModel.from_pretrained(OUT, attn_implementation="eager").eval()
    eot = tok.convert_tokens_to_ids(EOT)
    assert eot == V - 1 and tok.eos_token_id == eot
    prompts, logits = [], {}
    with torch.no_grad():
        for i, text in enumerate(PROMPTS):
            ids = tok(text)["input_ids"]
            x = torch.tensor([ids])
            logits[f"prompt_{i}"] = model(x).logits[0].float().numpy()  # (T, V)
            out = model.generate(x, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=eot)
            new = out[0, len(ids):].tolist()
            # the greedy path's logits, to check that no step is a near-tie
            full = model(out).logits[0, len(ids) - 1 : -1]  # (new, V)
            top2 = torch.topk(full, 2, dim=-1).values
            margin = float((top2[:, 0] - top2[:, 1]).min())
            assert margin > MIN_MARGIN, f"prompt {i}: greedy near-tie (margin {margin:.2e}); change SEED"
            prompts.append({
                "text": text, "ids": ids, "greedy_ids": new, "greedy_text": tok.decode(new),
                "min_greedy_margin": margin,
            })
            print(f"{text!r} -> {tok.decode(new)!r}  (min margin {margin:.3f})")

    reference = {
        "made_by": "benchmarks/make_gpt2_fixture.py",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__},
        "eot_id": eot,
        "max_new_tokens": MAX_NEW_TOKENS,
        "prompts": prompts,
        "tokenizer": [{"text": s, "ids": tok(s)["input_ids"]} for s in TOKENIZER_STRINGS],
    }
    (OUT / "reference.json").write_text(json.dumps(reference, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    safetensors.numpy.save_file(logits, OUT / "reference_logits.safetensors")

    total = sum(p.stat().st_size for p in OUT.iterdir())
    for p in sorted(OUT.iterdir()):
        print(f"{p.stat().st_size:>9,d}  {p.relative_to(ROOT)}")
    print(f"{total:>9,d}  total")
    if total > 1_000_000:
        sys.exit(f"fixture is {total:,d} bytes, over the 1 MB budget")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
