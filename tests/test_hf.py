"""Hugging Face GPT-2 loading (hf.py) and pipeline("text-generation") (pipeline.py).

The reference is tests/fixtures/tiny-gpt2: a toy GPT-2 saved by transformers, with the logits,
greedy continuations and token ids that transformers/tokenizers computed for it
(benchmarks/make_gpt2_fixture.py). These tests need only our package. The `oracle` tests at the
end compare live against tokenizers / transformers / torch when they are installed.
"""
import json
import shutil
import struct
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import backend_params

from nanotransformer import hf
from nanotransformer.generation import generate_ids
from nanotransformer.pipeline import TextGenerationPipeline, pipeline

FIXTURE = Path(__file__).parent / "fixtures" / "tiny-gpt2"
REF = json.loads((FIXTURE / "reference.json").read_text(encoding="utf-8"))
PROMPTS = REF["prompts"]
# Logit tolerance. Ours and transformers' logits are both float32 but summed in different orders
# (NumPy's BLAS vs torch's kernels), so they differ by a few float32 ulps of |logit| ~ 10
# (observed: 2e-6). atol 1e-4 leaves room for other BLAS builds and the Numba backend, and is
# still 350x below the smallest top-1 minus top-2 gap on any greedy path (reference.json,
# min_greedy_margin >= 0.035), so logits within tolerance cannot change a greedy token.
ATOL = 1e-4


@pytest.fixture(scope="module")
def model():
    return hf.from_pretrained(FIXTURE)


@pytest.fixture(scope="module")
def tok():
    return hf.tokenizer_from_pretrained(FIXTURE)


@pytest.fixture(scope="module")
def pipe(model, tok):
    return pipeline("text-generation", model=FIXTURE)


def test_fixture_is_small():
    total = sum(p.stat().st_size for p in FIXTURE.iterdir())
    assert total <= 1_000_000, f"tests/fixtures/tiny-gpt2 is {total:,d} bytes, over 1 MB"


# ----------------------------------------------------------------------------- tokenizer


def test_bytes_to_unicode_is_gpt2s():
    m = hf.bytes_to_unicode()
    assert sorted(m) == list(range(256)) and len(set(m.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in m.values())
    assert m[ord("A")] == "A" and m[ord("!")] == "!" and m[0xE9] == "é"  # printable bytes: themselves
    # the 68 others, in byte order, from U+0100: 0..32 -> U+0100..U+0120, 127..160 -> U+0121..U+0142, 173 -> U+0143
    assert (m[0], m[10], m[32], m[127], m[160], m[173]) == ("Ā", "Ċ", "Ġ", "ġ", "ł", "Ń")


@pytest.mark.parametrize("case", REF["tokenizer"], ids=[repr(c["text"])[:30] for c in REF["tokenizer"]])
def test_tokenizer_ids_match_transformers(tok, case):
    assert tok.encode(case["text"]) == case["ids"]
    assert tok.decode(case["ids"]) == case["text"]


def test_tokenizer_is_gpt2_shaped(tok):
    assert tok.vocab_size == 401 and tok.special_tokens == {"<|endoftext|>": 400}
    assert tok.encode("<|endoftext|>", allowed_special="all") == [400]
    assert tok.decode([400]) == "<|endoftext|>"
    with pytest.raises(ValueError, match="special token"):
        tok.encode("a<|endoftext|>")  # user text cannot smuggle in a special token by default


# ----------------------------------------------------------------------------- model


def test_config_maps_gpt2_names(model):
    c = model.config
    assert (c.vocab_size, c.block_size, c.n_layer, c.n_head, c.d_model) == (401, 64, 2, 4, 32)
    assert c.pos == "learned" and c.bias and model.params.dtype == np.float32


def test_weights_are_not_transposed(model):
    """HF's Conv1D weight is (C_in, C_out), like ours: copied as is."""
    hf_w = load_file(str(FIXTURE / "model.safetensors"))
    for name in ("h.0.attn.c_attn.w", "h.1.mlp.c_fc.w", "h.1.mlp.c_proj.w", "wte", "ln_f.b"):
        np.testing.assert_array_equal(model.p[name], hf_w["transformer." + hf.hf_name(name)])


@pytest.mark.parametrize("key, name", [
    ("transformer.wte.weight", "wte"), ("wpe.weight", "wpe"), ("transformer.h.0.ln_1.weight", "h.0.ln_1.w"),
    ("h.11.attn.c_attn.bias", "h.11.attn.c_attn.b"), ("transformer.h.3.mlp.c_proj.weight", "h.3.mlp.c_proj.w"),
    ("transformer.ln_f.bias", "ln_f.b"), ("h.0.attn.bias", None), ("transformer.h.5.attn.masked_bias", None),
    ("lm_head.weight", None), ("transformer.wte.bias", "transformer.wte.bias"), ("score.weight", "score.w"),
])
def test_our_name(key, name):
    assert hf.our_name(key) == name


def test_our_name_inverts_hf_name(model):
    for name, _ in model.specs:
        assert hf.our_name("transformer." + hf.hf_name(name)) == name == hf.our_name(hf.hf_name(name))


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("i", range(len(PROMPTS)))
def test_logits_match_transformers(i, backend):
    m = hf.from_pretrained(FIXTURE, backend=backend)
    expected = load_file(str(FIXTURE / "reference_logits.safetensors"))[f"prompt_{i}"]  # (T, V)
    logits, _ = m.forward(np.array([PROMPTS[i]["ids"]]))
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits[0], expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("use_cache", [True, False], ids=["kv-cache", "no-cache"])
@pytest.mark.parametrize("i", range(len(PROMPTS)))
def test_greedy_matches_transformers(model, i, use_cache):
    p = PROMPTS[i]
    out = generate_ids(model, p["ids"], REF["max_new_tokens"], temperature=0, use_cache=use_cache)
    assert out[0, len(p["ids"]):].tolist() == p["greedy_ids"]


def test_float64_load_matches_float32(model):
    m64 = hf.from_pretrained(FIXTURE, dtype=np.float64)
    ids = np.array([PROMPTS[0]["ids"]])
    np.testing.assert_allclose(m64.forward(ids)[0], model.forward(ids)[0], rtol=0, atol=ATOL)


# ----------------------------------------------------------------------------- pipeline


@pytest.mark.parametrize("i", range(len(PROMPTS)))
def test_pipeline_greedy_matches_transformers(pipe, i):
    p = PROMPTS[i]
    out = pipe(p["text"], max_new_tokens=REF["max_new_tokens"], do_sample=False)
    assert out == [{"generated_text": p["text"] + p["greedy_text"]}]
    new = pipe(p["text"], max_new_tokens=REF["max_new_tokens"], do_sample=False, return_full_text=False)
    assert new == [{"generated_text": p["greedy_text"]}]


def test_pipeline_max_length_counts_the_prompt(pipe, tok):
    p = PROMPTS[0]
    out = pipe(p["text"], max_length=len(p["ids"]) + 5, do_sample=False, return_full_text=False)
    assert out[0]["generated_text"] == tok.decode(p["greedy_ids"][:5])
    both = pipe(p["text"], max_length=3, max_new_tokens=5, do_sample=False, return_full_text=False)
    assert both == out  # max_new_tokens wins, as in transformers
    with pytest.warns(UserWarning, match="leaves no room"):
        assert pipe(p["text"], max_length=2, do_sample=False) == [{"generated_text": p["text"]}]


def test_pipeline_sampling(pipe):
    p = PROMPTS[1]
    a = pipe(p["text"], max_new_tokens=12, num_return_sequences=3, seed=7)
    assert len(a) == 3 and all(r["generated_text"].startswith(p["text"]) for r in a)
    assert a == pipe(p["text"], max_new_tokens=12, num_return_sequences=3, seed=7)  # seeded: repeatable
    assert len({r["generated_text"] for r in a}) > 1  # ... and the sequences are independent draws
    # with every greedy step won by a margin >= 0.035, a temperature of 1e-3 makes sampling greedy
    cold = pipe(p["text"], max_new_tokens=REF["max_new_tokens"], do_sample=True, temperature=1e-3, seed=0)
    assert cold == [{"generated_text": p["text"] + p["greedy_text"]}]
    top1 = pipe(p["text"], max_new_tokens=REF["max_new_tokens"], do_sample=True, top_k=1, temperature=5.0, seed=0)
    assert top1 == cold
    nucleus = pipe(p["text"], max_new_tokens=REF["max_new_tokens"], top_p=1e-6, temperature=2.0, seed=3)
    assert nucleus == cold


def test_pipeline_list_beams_and_defaults(pipe, model, tok):
    texts = [PROMPTS[0]["text"], PROMPTS[3]["text"]]
    out = pipe(texts, max_new_tokens=4, do_sample=False)
    assert [len(o) for o in out] == [1, 1] and out[1][0]["generated_text"].startswith(texts[1])
    beams = pipe(texts[0], max_new_tokens=6, num_beams=3, num_return_sequences=2)
    assert len(beams) == 2 and beams[0] != beams[1]
    # transformers' text-generation defaults: sample, temperature 0.7, top_k 50, 256 new tokens
    assert {k: pipe.generation_config[k] for k in ("do_sample", "temperature", "top_k", "max_new_tokens")} == \
        {"do_sample": True, "temperature": 0.7, "top_k": 50, "max_new_tokens": 256}
    assert pipe.eos_token_id == REF["eot_id"]
    same = pipeline("text-generation", model=model, tokenizer=tok)  # a GPT + tokenizer, as transformers allows
    assert same(texts[0], max_new_tokens=5, do_sample=False) == pipe(texts[0], max_new_tokens=5, do_sample=False)


def test_pipeline_stops_at_eos(model, tok):
    p = PROMPTS[0]
    eos = p["greedy_ids"][3]  # pretend the 4th greedy token is end-of-text
    pipe = TextGenerationPipeline(model, tok, {"eos_token_id": eos})
    out = pipe(p["text"], max_new_tokens=20, do_sample=False, return_full_text=False)
    assert out == [{"generated_text": tok.decode(p["greedy_ids"][:3])}]


# ----------------------------------------------------------------------------- checkpoint layouts


def _copy_fixture(tmp_path):
    d = tmp_path / "gpt2"
    shutil.copytree(FIXTURE, d)
    return d


def _edit_weights(d, fn):
    w = load_file(str(d / "model.safetensors"))
    save_file(fn(w), str(d / "model.safetensors"))


def _write_raw_safetensors(path, tensors):
    """tensors: {name: (dtype string, shape, raw bytes)} -> a safetensors file (for bf16, which NumPy lacks)."""
    header, offset = {}, 0
    for k, (dt, shape, raw) in tensors.items():
        header[k] = {"dtype": dt, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(h)) + h + b"".join(raw for _, _, raw in tensors.values()))


LAYOUTS = {
    "no transformer. prefix (GPT2Model checkpoints)": lambda w: {k.removeprefix("transformer."): v for k, v in w.items()},
    "tied lm_head.weight stored": lambda w: {**w, "lm_head.weight": w["transformer.wte.weight"].copy()},
    "old attn.bias / masked_bias buffers": lambda w: {
        **w, "transformer.h.0.attn.bias": np.tril(np.ones((1, 1, 64, 64), np.float32)),
        "transformer.h.1.attn.masked_bias": np.array(-1e4, np.float32)},
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_loads_other_key_layouts(tmp_path, model, layout):
    d = _copy_fixture(tmp_path)
    _edit_weights(d, LAYOUTS[layout])
    np.testing.assert_array_equal(hf.from_pretrained(d).params, model.params)


def test_loads_float16_and_bfloat16(tmp_path, model):
    d = _copy_fixture(tmp_path)
    w = load_file(str(d / "model.safetensors"))
    save_file({k: v.astype(np.float16) for k, v in w.items()}, str(d / "model.safetensors"))
    np.testing.assert_array_equal(hf.from_pretrained(d).params, model.params.astype(np.float16).astype(np.float32))
    # bf16 = the top 16 bits of a float32; we write them by truncation, so the load must give exactly that
    _write_raw_safetensors(d / "model.safetensors", {
        k: ("BF16", v.shape, (v.view(np.uint32) >> 16).astype("<u2").tobytes()) for k, v in w.items()})
    truncated = (model.params.view(np.uint32) & 0xFFFF0000).view(np.float32)
    np.testing.assert_array_equal(hf.from_pretrained(d).params, truncated)


def test_loads_sharded_checkpoint(tmp_path, model):
    d = _copy_fixture(tmp_path)
    w = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    keys = sorted(w)
    shards = {"model-00001-of-00002.safetensors": keys[:10], "model-00002-of-00002.safetensors": keys[10:]}
    for fname, ks in shards.items():
        save_file({k: w[k] for k in ks}, str(d / fname))
    index = {"weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    np.testing.assert_array_equal(hf.from_pretrained(d).params, model.params)


# ----------------------------------------------------------------------------- bad input


def _set_config(**kv):
    def edit(d):
        c = json.loads((d / "config.json").read_text())
        c.update(kv)
        (d / "config.json").write_text(json.dumps(c))
    return edit


def _weights(fn):
    return lambda d: _edit_weights(d, fn)


def _write(name, text):
    return lambda d: (d / name).write_text(text, encoding="utf-8")


def _only_pickle(d):
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")


def _truncate(d):
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])


BAD_MODEL = {
    "missing config.json": (lambda d: (d / "config.json").unlink(), r"config\.json: missing"),
    "config not JSON": (_write("config.json", "{oops"), r"config\.json: not valid JSON"),
    "unknown model_type": (_set_config(model_type="gemma"), r"model_type: expected one of .*got 'gemma'"),
    "GPT-2 keys labelled llama": (_set_config(model_type="llama"), r"model_type: expected 'gpt2' .*got 'llama'"),
    "other activation": (_set_config(activation_function="relu"), r"activation_function: .*got 'relu'"),
    "exact-erf gelu": (_set_config(activation_function="gelu"), r"activation_function: .*got 'gelu'"),
    "layer norm eps": (_set_config(layer_norm_epsilon=1e-6), r"layer_norm_epsilon: expected 1e-05"),
    "n_inner": (_set_config(n_inner=100), r"n_inner: expected null or 4 \* n_embd = 128 .*got 100"),
    "untied in config": (_set_config(tie_word_embeddings=False), r"tie_word_embeddings: expected True"),
    "n_head not a divisor": (_set_config(n_head=5), r"config\.json: n_head: expected a divisor of d_model=32"),
    "only a pickle checkpoint": (_only_pickle, r"(?s)found pytorch_model\.bin but no model\.safetensors\. Only safetensors "
                                               r".*a PyTorch pickle, and unpickling a file can run arbitrary code.*"
                                               r"save_pretrained\(.*, safe_serialization=True\)"),
    "no weights": (lambda d: (d / "model.safetensors").unlink(), r"missing model\.safetensors \(found: \["),
    "shape mismatch (vocab)": (_set_config(vocab_size=402), r"tensor 'wte\.weight': expected shape \(402, 32\) .*got \(401, 32\)"),
    "shape mismatch (width)": (_set_config(n_embd=64), r"tensor 'wte\.weight': expected shape \(401, 64\) from config\.json \(n_embd=64, .*got \(401, 32\)"),
    "missing tensor": (_weights(lambda w: {k: v for k, v in w.items() if k != "transformer.ln_f.bias"}),
                       r"missing tensor 'ln_f\.bias' \(our 'ln_f\.b', shape \(32,\)\)"),
    "extra layer": (_weights(lambda w: {**w, "transformer.h.2.ln_1.weight": np.ones(32, np.float32)}),
                    r"unexpected tensors \['transformer\.h\.2\.ln_1\.weight'\] \(not part of a GPT-2 with n_layer=2\)"),
    "untied lm_head": (_weights(lambda w: {**w, "lm_head.weight": w["transformer.wte.weight"] + 1}), r"untied LM head"),
    "NaN weight": (_weights(lambda w: {**w, "transformer.h.1.mlp.c_fc.bias": np.full(128, np.nan, np.float32)}),
                   r"tensor 'h\.1\.mlp\.c_fc\.bias' contains NaN"),
    "integer tensor": (_weights(lambda w: {**w, "transformer.wpe.weight": np.zeros((64, 32), np.int32)}),
                       r"expected floating-point tensors, got int32 for 'transformer\.wpe\.weight'"),
    "truncated safetensors": (_truncate, r"model\.safetensors: not a readable safetensors file, truncated or corrupted"),
}


@pytest.mark.parametrize("case", list(BAD_MODEL))
def test_bad_checkpoint_is_refused(tmp_path, case):
    edit, msg = BAD_MODEL[case]
    d = _copy_fixture(tmp_path)
    edit(d)
    with pytest.raises(ValueError, match=msg):
        hf.from_pretrained(d)


def _swap_merges(d):
    lines = (d / "merges.txt").read_text(encoding="utf-8").split("\n")
    lines[1], lines[2] = lines[2], lines[1]
    (d / "merges.txt").write_text("\n".join(lines), encoding="utf-8")


def _add_vocab(token):
    def edit(d):
        v = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
        v[token] = len(v)
        (d / "vocab.json").write_text(json.dumps(v), encoding="utf-8")
    return edit


BAD_TOKENIZER = {
    "missing vocab.json": (lambda d: (d / "vocab.json").unlink(), r"vocab\.json: missing"),
    "missing merges.txt": (lambda d: (d / "merges.txt").unlink(), r"merges\.txt: missing"),
    "vocab not an object of ids": (_write("vocab.json", '{"a": "b"}'), r"expected an object of token -> non-negative integer id"),
    "malformed merge line": (_write("merges.txt", "#version: 0.2\nĠ t x\n"), r"merges\.txt: line 2: expected 'left right', got 'Ġ t x'"),
    "merge of unknown tokens": (_write("merges.txt", "#version: 0.2\nĠ zzz\n"), r"line 2: merge 'Ġ zzz' uses or makes a token that is not in vocab\.json"),
    "merges out of id order": (_swap_merges, r"line 3: merge 'Ġ t' makes id 256, lower than the previous merge's 257"),
    "not a byte-level token": (_add_vocab("日本"), r"token '日本' has the character '日', which is not in GPT-2's byte-to-unicode"),
    "unreachable token": (_add_vocab("<pad>"), r"token '<pad>' \(id 401\) is neither a single byte nor made by a merge"),
}


@pytest.mark.parametrize("case", list(BAD_TOKENIZER))
def test_bad_tokenizer_files_are_refused(tmp_path, case):
    edit, msg = BAD_TOKENIZER[case]
    d = _copy_fixture(tmp_path)
    edit(d)
    with pytest.raises(ValueError, match=msg):
        hf.tokenizer_from_pretrained(d)


def test_bad_paths(tmp_path):
    with pytest.raises(ValueError, match=r"nope: no such directory"):
        hf.from_pretrained(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"expected a directory holding config\.json, .*got a file"):
        hf.from_pretrained(tmp_path / "file")
    with pytest.raises(ValueError, match=r"name_or_path: expected a directory path or a hub name"):
        hf.from_pretrained(3)


# ----------------------------------------------------------------------------- hub names


def _fake_hub(monkeypatch, snapshot_download):
    mod = types.ModuleType("huggingface_hub")
    mod.snapshot_download = snapshot_download
    monkeypatch.setitem(sys.modules, "huggingface_hub", mod)


def test_hub_name_without_huggingface_hub(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no ./gpt2 directory here
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes `import huggingface_hub` fail
    with pytest.raises(ValueError) as e:
        hf.from_pretrained("gpt2")
    msg = str(e.value)
    assert "huggingface_hub is not installed" in msg
    assert "https://huggingface.co/openai-community/gpt2/tree/main" in msg
    assert "config.json, model.safetensors, vocab.json, merges.txt" in msg and "from_pretrained('./gpt2')" in msg


def test_hub_name_offline(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)

    def offline(repo_id, **kw):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    _fake_hub(monkeypatch, offline)
    with pytest.raises(ValueError, match=r"(?s)'openai-community/gpt2-medium' is not a local directory.*"
                                         r"OSError: We couldn't connect.*huggingface\.co/openai-community/gpt2-medium/tree/main"):
        hf.from_pretrained("openai-community/gpt2-medium")


def test_hub_name_downloads(monkeypatch, tmp_path, model):
    monkeypatch.chdir(tmp_path)
    calls = []

    def download(repo_id, **kw):
        calls.append((repo_id, kw["allow_patterns"]))
        return str(FIXTURE)

    _fake_hub(monkeypatch, download)
    np.testing.assert_array_equal(hf.from_pretrained("gpt2").params, model.params)
    assert calls[0][0] == "gpt2" and "model*.safetensors*" in calls[0][1] and "*.bin" not in calls[0][1]
    assert pipeline("text-generation", model="gpt2")(PROMPTS[0]["text"], max_new_tokens=3, do_sample=False)


def test_local_directory_wins_over_hub_name(monkeypatch, tmp_path, model):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(FIXTURE, tmp_path / "gpt2")
    _fake_hub(monkeypatch, lambda *a, **k: pytest.fail("should not download"))
    np.testing.assert_array_equal(hf.from_pretrained("gpt2").params, model.params)


# ----------------------------------------------------------------------------- bad pipeline calls

BAD_CALLS = {
    "greedy with several sequences": (dict(do_sample=False, num_return_sequences=2), r"num_return_sequences: expected 1 with greedy"),
    "zero temperature sampling": (dict(do_sample=True, temperature=0), r"temperature: expected a number > 0 when do_sample=True"),
    "negative max_new_tokens": (dict(max_new_tokens=-1), r"max_new_tokens: expected a non-negative integer"),
    "float max_length": (dict(max_length=10.5), r"max_length: expected a non-negative integer"),
    "do_sample not a bool": (dict(do_sample="yes"), r"do_sample: expected True or False"),
    "negative top_k": (dict(top_k=-1), r"top_k: expected an integer >= 0"),
    "top_p out of range": (dict(top_p=1.5), r"top_p: expected a probability in \(0, 1\]"),
    "zero beams": (dict(num_beams=0), r"num_beams: expected a positive integer"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_pipeline_calls(pipe, case):
    kwargs, msg = BAD_CALLS[case]
    with pytest.raises(ValueError, match=msg):
        pipe("Alice", **{"max_new_tokens": 3, **kwargs})


def test_bad_pipeline_construction(pipe, model):
    with pytest.raises(ValueError, match=r"task: expected one of \('text-generation',\), got 'summarization'"):
        pipeline("summarization", model=FIXTURE)
    with pytest.raises(ValueError, match=r"tokenizer: expected a tokenizer .* got None"):
        pipeline("text-generation", model=model)
    with pytest.raises(ValueError, match=r"model: expected a checkpoint directory, a hub name or a GPT, got int"):
        pipeline("text-generation", model=3)
    with pytest.raises(ValueError, match=r"text_inputs: expected a str or a list of str, got int"):
        pipe(3)
    with pytest.raises(ValueError, match=r"expected a prompt of at least one token"):
        pipe("", max_new_tokens=2)


# ----------------------------------------------------------------------------- oracles (live)

ORACLE_STRINGS = [c["text"] for c in REF["tokenizer"]] + [
    "Ünïcödé ẞ straße İstanbul ﬁ ligature", "tab\tseparated\tvalues\t", "mixed123numbers456 and 7.0e-3",
    "'s 't 're 've 'm 'll 'd 'S 'LL", "    indented code:\n        return x  # comment\n", "\u00a0nbsp\u00a0and\u2009thin",
]


def _random_strings(n, seed=0):
    """Random mixtures of the characters that stress the split regex and byte-level BPE."""
    rng = np.random.default_rng(seed)
    alphabet = list("abcdefghijklmnopqrstuvwxyzABC  \n\t'`-.,;!?0123456789") + ["é", "ß", "日", "🙂", "\u0301", "\r\n"]
    text = open(Path(hf.__file__).parent / "data" / "alice.txt", encoding="utf-8").read()
    words = text.split()[:2000]
    out = []
    for _ in range(n):
        parts = [rng.choice(alphabet) if rng.random() < 0.5 else " " * int(rng.integers(0, 3)) + rng.choice(words)
                 for _ in range(int(rng.integers(1, 12)))]
        out.append("".join(parts))
    return out


@pytest.mark.oracle
def test_tokenizer_matches_tokenizers_library(tok):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers

    ref = tokenizers.Tokenizer(models.BPE.from_file(str(FIXTURE / "vocab.json"), str(FIXTURE / "merges.txt")))
    ref.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's regex + byte-to-unicode
    ref.decoder = decoders.ByteLevel()
    alice = open(Path(hf.__file__).parent / "data" / "alice.txt", encoding="utf-8").read()
    for s in ORACLE_STRINGS + _random_strings(500) + [alice]:
        ids = ref.encode(s).ids
        assert tok.encode(s) == ids, repr(s[:80])
        assert tok.decode(ids) == ref.decode(ids), repr(s[:80])


@pytest.mark.oracle
def test_tokenizer_matches_transformers_gpt2_tokenizer(tok):
    pytest.importorskip("transformers")
    from transformers import GPT2Tokenizer

    ref = GPT2Tokenizer.from_pretrained(str(FIXTURE))
    for s in ORACLE_STRINGS + _random_strings(200, seed=1) + ["a<|endoftext|>b", "<|endoftext|>"]:
        ids = ref(s)["input_ids"]
        assert tok.encode(s, allowed_special="all") == ids, repr(s[:80])  # transformers matches it as special
        assert tok.decode(ids) == ref.decode(ids), repr(s[:80])


@pytest.fixture
def hf_torch():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    return torch, transformers


@pytest.mark.oracle
@pytest.mark.parametrize("shape", [dict(n_embd=48, n_head=3, n_layer=3, vocab_size=97, n_positions=32),
                                   dict(n_embd=16, n_head=1, n_layer=1, vocab_size=50, n_positions=8)],
                         ids=["C48-NH3-L3", "C16-NH1-L1"])
@pytest.mark.parametrize("prefix", [True, False], ids=["GPT2LMHeadModel", "GPT2Model-keys"])
def test_random_gpt2_matches_transformers_live(tmp_path, hf_torch, shape, prefix):
    torch, transformers = hf_torch
    torch.manual_seed(0)
    ref = transformers.GPT2LMHeadModel(transformers.GPT2Config(**shape)).eval()
    with torch.no_grad():  # weights well away from init, so the test exercises every parameter
        for p in ref.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ref.save_pretrained(tmp_path, safe_serialization=True)
    if not prefix:
        _edit_weights(tmp_path, lambda w: {k.removeprefix("transformer."): v for k, v in w.items()})
    ours = hf.from_pretrained(tmp_path)
    ids = np.random.default_rng(0).integers(0, shape["vocab_size"], size=(2, shape["n_positions"]))
    with torch.no_grad():
        expected = ref(torch.from_numpy(ids)).logits.numpy()
    # |logits| reach ~30 with these perturbed weights; 1e-4 relative covers float32 sum order
    np.testing.assert_allclose(ours.forward(ids)[0], expected, rtol=1e-4, atol=ATOL)
    n_new = shape["n_positions"] - 3
    with torch.no_grad():
        greedy = ref.generate(torch.from_numpy(ids[:1, :3]), max_new_tokens=n_new, do_sample=False,
                              pad_token_id=0, eos_token_id=None)
    assert generate_ids(ours, ids[0, :3], n_new, temperature=0)[0].tolist() == greedy[0].tolist()


@pytest.mark.oracle
def test_pipeline_matches_transformers_pipeline(hf_torch, pipe):
    _, transformers = hf_torch
    ref = transformers.pipeline("text-generation", model=str(FIXTURE), device="cpu")
    for p in PROMPTS:
        for kw in (dict(max_new_tokens=15), dict(max_length=len(p["ids"]) + 7), dict(max_new_tokens=9, return_full_text=False)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected = ref(p["text"], do_sample=False, **kw)
            assert pipe(p["text"], do_sample=False, **kw) == expected, (p["text"], kw)
