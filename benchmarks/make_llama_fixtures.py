"""Build tests/fixtures/tiny-llama and tests/fixtures/tiny-qwen2: a toy Llama and a toy Qwen2 in
Hugging Face format, plus what `transformers` computes with them, so tests/test_hf_llama.py can
check our loader (hf.py, hf_llama.py, hf_tokenizer.py) without torch.

Run (offline is fine; needs torch==2.13.0 CPU, transformers, tokenizers, safetensors):

    python -m venv venv-hf && venv-hf/bin/pip install torch==2.13.0 transformers tokenizers safetensors
    venv-hf/bin/python benchmarks/make_llama_fixtures.py      # writes both fixture directories

What each directory holds, in the layout of a model downloaded from the Hugging Face hub:
    config.json, generation_config.json, model.safetensors   (XxxForCausalLM.save_pretrained)
    tokenizer.json, tokenizer_config.json                    (PreTrainedTokenizerFast.save_pretrained)
and the reference answers:
    reference.json               prompts, their ids, greedy continuations, tokenizer test strings
    reference_logits.safetensors transformers' float32 logits for each prompt, (T, V) each

The two exercise different parts of the loader:
    tiny-llama  LlamaForCausalLM: grouped-query attention (4 query heads, 2 key/value heads), an
                untied LM head, rope_theta 500000, rms_norm_eps 1e-5. Its tokenizer is Llama 3's
                kind: Split(regex) + ByteLevel(use_regex=False), ignore_merges, and a post-processor
                (TemplateProcessing) that puts <|begin_of_text|> before every text, as Llama 3's
                does. Two end-of-text ids in generation_config.json, as Llama 3 Instruct has.
    tiny-qwen2  Qwen2ForCausalLM: biases on q, k and v (set to random values, since a fresh model
                has them at zero, which would test nothing), tied embeddings, rms_norm_eps 1e-6.
                Its tokenizer is Qwen2's kind: an NFC normalizer and Qwen2's split regex (single
                digits), no BOS.

The tokenizers are byte-level BPEs of ~350 tokens trained with Hugging Face `tokenizers` on a few KB
of Alice in Wonderland plus a paragraph of mixed scripts, with the special tokens appended last
(where Llama 3 and Qwen2 have theirs). The models' vocab_size is the tokenizer's rounded up to a
multiple of 64, as real checkpoints pad theirs, so the last ids are never produced by the tokenizer.
Each model is trained for a few hundred steps on the same text, so that greedy decoding is not
a coin toss: every greedy step's top-1 minus top-2 logit is checked to be far above the tests'
float32 tolerance.
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
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
ALICE = ROOT / "nanotransformer" / "data" / "alice.txt"

# The split regexes, verbatim from the published tokenizer.json files.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# A paragraph of other scripts, so that multi-byte merges are learned too (and, for Qwen2's NFC,
# decomposed accents: "e\u0301" becomes "é" before splitting).
UNICODE_TEXT = (
    "Alice trouva une petite clé d'or, très étrange : « Où suis-je ? » Déjà l'été, déjà la fête.\n"
    "Die Grinsekatze lächelte über die Straße; „Wer bist du?“ fragte die Raupe. Größe ändert sich.\n"
    "Η Αλίκη έπεσε στην τρύπα του κουνελιού. Алиса упала в кроличью нору, очень глубокую нору.\n"
    "アリスはウサギの穴に落ちました。不思議の国のアリス。兔子洞里的爱丽丝。🐇🕳️🫖🃏 ✨✨\n"
    "Cafe\u0301 cre\u0300me, nai\u0308ve, re\u0301sume\u0301 — 1234567890, 3.14159, 2024-05-06.\n"
)
N_ALICE_CHARS = 6000
MODEL_VOCAB_MULTIPLE = 64

# Strings whose ids the tests compare: non-ASCII, NFC-sensitive, runs of spaces, digits, contractions.
TOKENIZER_STRINGS = [
    "Hello world",
    "  two leading spaces,   three inside, trailing   ",
    "Alice's cat won't say what it's seen; they'll ask, I'd say, we've been, you're right, I'M SURE",
    "ALICE'S ADVENTURES IN WONDERLAND\n\n\n    CHAPTER I\n\tDown the Rabbit-Hole",
    "numbers 1234567 and 3.14159, dates 2024-05-06",
    "héllo wörld, naïve café — “quotes” and ‘single’ ones, déjà l'été",
    "Cafe\u0301 cre\u0300me nai\u0308ve e\u0301 \u212b \ufb01 \u1e9b\u0323",  # decomposed accents, Å (angstrom), ﬁ
    "Η Αλίκη, Алиса и кролик, アリスはウサギ, 兔子洞里的爱丽丝",
    "日本語のテキストと中文字符",
    "emoji 🙂👍🏽 🐇🕳️ and zero\u200bwidth",
    "\r\n windows line end \r\n\r\n",
    "",
    " ",
    "a\n\n\nb   \n   c",
]
PROMPTS = [
    "Alice was beginning to get very tired",
    "`Off with her head!' the Queen",
    "Déjà l'été, la petite clé",
    " said the Hatter",
]
MAX_NEW_TOKENS = 12
TRAIN_STEPS, BATCH, BLOCK, LR, SEED = 300, 16, 64, 3e-3, 0
MIN_MARGIN = 1e-3  # every greedy step's top-1 minus top-2 logit; >> the tests' 1e-4 logit tolerance
MAX_BYTES = 1_000_000

FIXTURE_SPECS = {
    "tiny-llama": dict(
        model_class=LlamaForCausalLM, pattern=LLAMA3_PATTERN, nfc=False, ignore_merges=True,
        vocab_size=340, specials=["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"], bos="<|begin_of_text|>",
        eos=["<|end_of_text|>", "<|eot_id|>"],
        config=lambda V, bos, eos: LlamaConfig(
            vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 500000.0}, bos_token_id=bos, eos_token_id=eos[0]),
    ),
    "tiny-qwen2": dict(
        model_class=Qwen2ForCausalLM, pattern=QWEN2_PATTERN, nfc=True, ignore_merges=False,
        vocab_size=360, specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos=None, eos=["<|endoftext|>"],
        config=lambda V, bos, eos: Qwen2Config(
            vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, use_sliding_window=False,
            bos_token_id=None, eos_token_id=eos[0]),
    ),
}


def training_text():
    return ALICE.read_text(encoding="utf-8")[:N_ALICE_CHARS] + "\n" + UNICODE_TEXT


def train_tokenizer(spec, text):
    """A byte-level BPE in the style of Llama 3 or Qwen2, trained by `tokenizers`."""
    tok = tokenizers.Tokenizer(models.BPE())
    if spec["nfc"]:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(spec["pattern"]), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=not spec["nfc"], use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=spec["vocab_size"], min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator([text], trainer=trainer)
    n = tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in spec["specials"]])
    ids = {s: tok.token_to_id(s) for s in spec["specials"]}
    assert list(ids.values()) == list(range(n, n + len(ids))), ids  # appended last, in order
    if spec["bos"] is not None:  # Llama 3's post-processor: ByteLevel offsets, then BOS before the text
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{spec['bos']} $A", pair=f"{spec['bos']} $A {spec['bos']} $B",
                                          special_tokens=[(spec["bos"], ids[spec["bos"]])]),
        ])
    else:  # Qwen2's: ByteLevel, which only trims offsets
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    if spec["ignore_merges"]:  # Llama 3 sets it (a word that is a token is taken whole); no setter for it
        j = json.loads(tok.to_str())
        j["model"]["ignore_merges"] = True
        tok = tokenizers.Tokenizer.from_str(json.dumps(j))
    return tok, ids


def train_model(spec, tok, ids):
    """A toy Llama / Qwen2, trained briefly on the training text (float32, CPU, deterministic)."""
    torch.manual_seed(SEED)
    n_tok = tok.get_vocab_size()
    V = -(-n_tok // MODEL_VOCAB_MULTIPLE) * MODEL_VOCAB_MULTIPLE
    bos = ids[spec["bos"]] if spec["bos"] else None
    eos = [ids[e] for e in spec["eos"]]
    config = spec["config"](V, bos, eos)
    model = spec["model_class"](config)
    with torch.no_grad():  # q/k/v biases start at zero: make them matter (Qwen2 only has them)
        for name, p in model.named_parameters():
            if name.endswith("_proj.bias"):
                p.copy_(0.5 * torch.randn_like(p))
    data = torch.tensor(tok.encode(training_text()).ids, dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    g = torch.Generator().manual_seed(SEED)
    model.train()
    for step in range(TRAIN_STEPS):
        starts = torch.randint(0, len(data) - BLOCK - 1, (BATCH,), generator=g)
        x = torch.stack([data[s: s + BLOCK] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == TRAIN_STEPS - 1:
            print(f"  step {step:4d}  loss {loss.item():.3f}")
    model.generation_config.eos_token_id = eos if len(eos) > 1 else eos[0]
    model.generation_config.bos_token_id = bos
    return model.eval()


def reference(name, spec, out):
    """The answers, computed from the files just written (as a user would load them)."""
    tok = AutoTokenizer.from_pretrained(out)
    model = spec["model_class"].from_pretrained(out, attn_implementation="eager").eval()
    assert model.config.model_type in ("llama", "qwen2")
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    prompts, logits = [], {}
    with torch.no_grad():
        for i, text in enumerate(PROMPTS):
            ids = tok(text)["input_ids"]  # with the post-processor's BOS (Llama), as transformers' pipeline
            x = torch.tensor([ids])
            logits[f"prompt_{i}"] = model(x).logits[0].float().numpy()  # (T, V)
            gen = model.generate(x, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=eos[0],
                                 eos_token_id=None)  # the full length, even past an end-of-text token
            new = gen[0, len(ids):].tolist()
            full = model(gen).logits[0, len(ids) - 1: -1]  # the greedy path's logits (new, V)
            top2 = torch.topk(full, 2, dim=-1).values
            margin = float((top2[:, 0] - top2[:, 1]).min())
            assert margin > MIN_MARGIN, f"{name} prompt {i}: greedy near-tie (margin {margin:.2e}); change SEED"
            prompts.append({"text": text, "ids": ids, "greedy_ids": new,
                            "greedy_text": tok.decode(new, skip_special_tokens=True), "min_greedy_margin": margin})
            print(f"  {text!r} -> {tok.decode(new)!r}  (min margin {margin:.3f})")
    ref = {
        "made_by": "benchmarks/make_llama_fixtures.py",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__},
        "model_type": model.config.model_type,
        "tokenizer_size": len(tok),
        "special_tokens": {s: tok.convert_tokens_to_ids(s) for s in spec["specials"]},
        "bos_id": tok.convert_tokens_to_ids(spec["bos"]) if spec["bos"] else None,
        "eos_ids": eos,
        "max_new_tokens": MAX_NEW_TOKENS,
        "prompts": prompts,
        # ids without the post-processor's BOS: what BPE alone makes of each string
        "tokenizer": [{"text": s, "ids": tok(s, add_special_tokens=False)["input_ids"]} for s in TOKENIZER_STRINGS],
    }
    (out / "reference.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    safetensors.numpy.save_file(logits, out / "reference_logits.safetensors")


def build(name, spec):
    print(name)
    out = FIXTURES / name
    tok, ids = train_tokenizer(spec, training_text())
    model = train_model(spec, tok, ids)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    special = dict(bos_token=spec["bos"], eos_token=spec["eos"][0])
    with tempfile.TemporaryDirectory() as tmp:  # through a file: tokenizer_object keeps the Python object
        tok.save(str(Path(tmp) / "tokenizer.json"))
        PreTrainedTokenizerFast(tokenizer_file=str(Path(tmp) / "tokenizer.json"), **special).save_pretrained(out)
    for extra in ("special_tokens_map.json", "chat_template.jinja"):  # not needed, keep the fixture small
        (out / extra).unlink(missing_ok=True)
    reference(name, spec, out)
    total = sum(p.stat().st_size for p in out.iterdir())
    for p in sorted(out.iterdir()):
        print(f"  {p.stat().st_size:>9,d}  {p.relative_to(ROOT)}")
    print(f"  {total:>9,d}  total")
    if total > MAX_BYTES:
        sys.exit(f"{out} is {total:,d} bytes, over the 1 MB budget")


def main():
    torch.set_num_threads(1)  # deterministic float32 sums, and polite on a shared machine
    for name, spec in FIXTURE_SPECS.items():
        build(name, spec)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
