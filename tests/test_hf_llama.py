"""Loading Llama / Mistral / Qwen2 checkpoints (hf.py, hf_llama.py) and tokenizer.json (hf_tokenizer.py).

The references are tests/fixtures/tiny-llama and tests/fixtures/tiny-qwen2: toy models saved by
transformers, with the logits, greedy continuations and token ids that transformers / tokenizers
computed for them (benchmarks/make_llama_fixtures.py). These tests need only our package; the
`oracle` tests at the end compare live against tokenizers / transformers / torch when installed.
"""
import json
import shutil
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import backend_params

from nanotransformer import hf, hf_llama
from nanotransformer.generation import generate_ids
from nanotransformer.pipeline import TextGenerationPipeline, pipeline

FIXTURES = {name: Path(__file__).parent / "fixtures" / name for name in ("tiny-llama", "tiny-qwen2")}
REFS = {name: json.loads((d / "reference.json").read_text(encoding="utf-8")) for name, d in FIXTURES.items()}
NAMES = list(FIXTURES)
# Logit tolerance. Ours and transformers' logits are float32 summed in different orders, and our
# RoPE angles are computed in float64 where transformers' are float32: observed max |diff| 6.8e-6
# (tiny-llama) and 6.2e-6 (tiny-qwen2), either backend, for |logits| up to 12. atol 1e-4 leaves
# room for other BLAS builds, and is still > 100x below the smallest top-1 minus top-2 gap on
# any greedy path (reference.json, min_greedy_margin >= 0.013), so it cannot change a greedy token.
ATOL = 1e-4
PROMPT_CASES = [(n, i) for n in NAMES for i in range(len(REFS[n]["prompts"]))]
TOKENIZER_CASES = [(n, i) for n in NAMES for i in range(len(REFS[n]["tokenizer"]))]


@pytest.fixture(scope="module")
def models():
    return {n: hf.from_pretrained(d) for n, d in FIXTURES.items()}


@pytest.fixture(scope="module")
def toks():
    return {n: hf.tokenizer_from_pretrained(d) for n, d in FIXTURES.items()}


@pytest.fixture(scope="module")
def pipes(models):
    return {n: pipeline("text-generation", model=d) for n, d in FIXTURES.items()}


@pytest.mark.parametrize("name", NAMES)
def test_fixture_is_small(name):
    total = sum(p.stat().st_size for p in FIXTURES[name].iterdir())
    assert total <= 1_000_000, f"tests/fixtures/{name} is {total:,d} bytes, over 1 MB"


# ----------------------------------------------------------------------------- tokenizer.json


@pytest.mark.parametrize("name, i", TOKENIZER_CASES, ids=[f"{n}-{REFS[n]['tokenizer'][i]['text'][:20]!r}"
                                                          for n, i in TOKENIZER_CASES])
def test_tokenizer_ids_match_tokenizers(toks, name, i):
    case = REFS[name]["tokenizer"][i]
    tok = toks[name]
    assert tok.encode(case["text"]) == case["ids"]
    expected = unicodedata.normalize("NFC", case["text"]) if tok.normalizer else case["text"]
    assert tok.decode(case["ids"]) == expected


@pytest.mark.parametrize("name", NAMES)
def test_tokenizer_shape(toks, name):
    ref, tok = REFS[name], toks[name]
    assert tok.vocab_size == ref["tokenizer_size"] and tok.special_tokens == ref["special_tokens"]
    for text, idx in ref["special_tokens"].items():
        assert tok.encode(text, allowed_special="all") == [idx] and tok.decode([idx]) == text
    with pytest.raises(ValueError, match="special token"):
        tok.encode("a" + next(iter(ref["special_tokens"])))  # user text cannot smuggle one in
    # Llama 3's post-processor puts BOS before every text; Qwen2's adds nothing
    assert hf.prefix_ids(FIXTURES[name]) == ([ref["bos_id"]] if ref["bos_id"] is not None else [])
    assert ref["prompts"][0]["ids"] == hf.prefix_ids(FIXTURES[name]) + tok.encode(ref["prompts"][0]["text"])


def test_qwen2_normalizes_nfc(toks):
    tok = toks["tiny-qwen2"]
    assert tok.normalizer == "NFC" and toks["tiny-llama"].normalizer is None
    assert tok.encode("Cafe\u0301 e\u0301te\u0301") == tok.encode("Café été")
    assert toks["tiny-llama"].encode("e\u0301") != toks["tiny-llama"].encode("é")  # no normalizer: bytes as given
    # special tokens are found in the text as given, before normalising the rest
    assert tok.encode("e\u0301<|im_end|>e\u0301", allowed_special="all") == tok.encode("é") + [362] + tok.encode("é")


def test_nfc_tokenizer_save_load_round_trip(toks, tmp_path):
    from nanotransformer.tokenizer import BPETokenizer, load_tokenizer

    tok = toks["tiny-qwen2"]
    tok.save(tmp_path / "qwen2.tok")
    back = load_tokenizer(tmp_path / "qwen2.tok")
    assert isinstance(back, BPETokenizer) and back.normalizer == "NFC" and back.pattern == tok.pattern
    assert back.encode("Cafe\u0301 <|im_start|>", allowed_special="all") == tok.encode("Cafe\u0301 <|im_start|>",
                                                                                       allowed_special="all")
    with pytest.raises(ValueError, match=r"normalizer: expected None or one of \('NFC',\), got 'NFKC'"):
        BPETokenizer(normalizer="NFKC")
    text = (tmp_path / "qwen2.tok").read_text(encoding="utf-8").replace('normalizer: "NFC"', 'normalizer: "NFKC"')
    (tmp_path / "bad.tok").write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.tok: line 4: expected normalizer to be one of \['NFC'\]"):
        load_tokenizer(tmp_path / "bad.tok")
    toks["tiny-llama"].save(tmp_path / "llama.tok")  # no normalizer: no normalizer line
    assert "normalizer" not in (tmp_path / "llama.tok").read_text(encoding="utf-8")
    assert load_tokenizer(tmp_path / "llama.tok").normalizer is None


def _gpt2_tokenizer_json(d, extra_special=()):
    """GPT-2's vocab.json + merges.txt written as the tokenizer.json `tokenizers` would save."""
    vocab = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
    lines = (d / "merges.txt").read_text(encoding="utf-8").split("\n")
    merges = [ln for ln in lines[1:] if ln]  # "a b" strings, the older format
    added = [{"id": vocab["<|endoftext|>"], "content": "<|endoftext|>", "special": True}]
    added += [{"id": len(vocab) + k, "content": t, "special": True} for k, t in enumerate(extra_special)]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                      "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "vocab": vocab,
                      "merges": merges}}


def test_tokenizer_json_is_preferred_over_vocab_and_merges(tmp_path):
    """A GPT-2 directory with tokenizer.json (as on the hub) reads it; string merges ("a b") work."""
    d = tmp_path / "gpt2"
    shutil.copytree(Path(__file__).parent / "fixtures" / "tiny-gpt2", d)
    from_files = hf.tokenizer_from_pretrained(d)  # vocab.json + merges.txt
    (d / "tokenizer.json").write_text(json.dumps(_gpt2_tokenizer_json(d, ["<|pad|>"])), encoding="utf-8")
    from_json = hf.tokenizer_from_pretrained(d)
    assert from_json.special_tokens == {"<|endoftext|>": 400, "<|pad|>": 401}  # only tokenizer.json has <|pad|>
    assert from_json.ranks == from_files.ranks and from_json.pattern == from_files.pattern
    gpt2_ref = json.loads((d / "reference.json").read_text(encoding="utf-8"))
    for case in gpt2_ref["tokenizer"]:
        assert from_json.encode(case["text"]) == case["ids"]
    assert hf.prefix_ids(d) == []


# ----------------------------------------------------------------------------- config and weights


def test_config_maps_llama_names(models):
    c = models["tiny-llama"].config
    assert (c.vocab_size, c.block_size, c.n_layer, c.n_head, c.n_kv_head, c.d_model, c.d_ff) == (384, 128, 2, 4, 2, 32, 64)
    assert (c.norm, c.pos, c.mlp, c.bias, c.qkv_bias, c.tie_embeddings) == ("rmsnorm", "rope", "swiglu", False, False, False)
    assert (c.rope_theta, c.norm_eps) == (500000.0, 1e-5)
    q = models["tiny-qwen2"].config
    assert (q.qkv_bias, q.bias, q.tie_embeddings, q.rope_theta, q.norm_eps) == (True, False, True, 10000.0, 1e-6)


def test_weights_are_transposed_and_fused(models):
    """nn.Linear's (out, in) weights become our (in, out); q|k|v and gate|up are fused along columns."""
    for name, model in models.items():
        w = load_file(str(FIXTURES[name] / "model.safetensors"))
        a, m = "model.layers.1.self_attn.", "model.layers.1.mlp."
        np.testing.assert_array_equal(model.p["h.1.attn.c_attn.w"], np.concatenate(
            [w[a + "q_proj.weight"].T, w[a + "k_proj.weight"].T, w[a + "v_proj.weight"].T], axis=1))
        np.testing.assert_array_equal(model.p["h.1.attn.c_proj.w"], w[a + "o_proj.weight"].T)
        np.testing.assert_array_equal(model.p["h.1.mlp.c_fc.w"],
                                      np.concatenate([w[m + "gate_proj.weight"].T, w[m + "up_proj.weight"].T], axis=1))
        np.testing.assert_array_equal(model.p["h.1.mlp.c_proj.w"], w[m + "down_proj.weight"].T)
        np.testing.assert_array_equal(model.p["ln_f.w"], w["model.norm.weight"])
        np.testing.assert_array_equal(model.p["wte"], w["model.embed_tokens.weight"])
    w = load_file(str(FIXTURES["tiny-llama"] / "model.safetensors"))
    np.testing.assert_array_equal(models["tiny-llama"].p["lm_head.w"], w["lm_head.weight"].T)
    w = load_file(str(FIXTURES["tiny-qwen2"] / "model.safetensors"))
    assert "lm_head.weight" not in w and "lm_head.w" not in models["tiny-qwen2"].p  # tied: the head is wte^T
    b = models["tiny-qwen2"].p["h.0.attn.c_attn.b"]
    np.testing.assert_array_equal(b, np.concatenate([w[f"model.layers.0.self_attn.{x}_proj.bias"] for x in "qkv"]))
    assert np.abs(b).min() > 0  # the fixture's biases are not the zeros of a fresh model


@pytest.mark.parametrize("name, expected", [
    ("wte", "model.embed_tokens.weight"), ("h.3.attn.c_attn.w", "model.layers.3.self_attn.{q,k,v}_proj.weight"),
    ("h.0.mlp.c_fc.w", "model.layers.0.mlp.{gate,up}_proj.weight"), ("h.1.ln_2.w", "model.layers.1.post_attention_layernorm.weight"),
    ("lm_head.w", "lm_head.weight"),
])
def test_hf_name(name, expected):
    assert hf_llama.hf_name(name) == expected


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("name, i", PROMPT_CASES)
def test_logits_match_transformers(name, i, backend):
    m = hf.from_pretrained(FIXTURES[name], backend=backend)
    expected = load_file(str(FIXTURES[name] / "reference_logits.safetensors"))[f"prompt_{i}"]  # (T, V)
    logits, _ = m.forward(np.array([REFS[name]["prompts"][i]["ids"]]))
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits[0], expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("use_cache", [True, False], ids=["kv-cache", "no-cache"])
@pytest.mark.parametrize("name, i", PROMPT_CASES)
def test_greedy_matches_transformers(models, name, i, use_cache):
    p, ref = REFS[name]["prompts"][i], REFS[name]
    out = generate_ids(models[name], p["ids"], ref["max_new_tokens"], temperature=0, use_cache=use_cache)
    assert out[0, len(p["ids"]):].tolist() == p["greedy_ids"]


def test_float64_load_matches_float32(models):
    m64 = hf.from_pretrained(FIXTURES["tiny-qwen2"], dtype=np.float64)
    ids = np.array([REFS["tiny-qwen2"]["prompts"][0]["ids"]])
    np.testing.assert_allclose(m64.forward(ids)[0], models["tiny-qwen2"].forward(ids)[0], rtol=0, atol=ATOL)


# ----------------------------------------------------------------------------- pipeline


@pytest.mark.parametrize("name, i", PROMPT_CASES)
def test_pipeline_greedy_matches_transformers(pipes, name, i):
    p, ref = REFS[name]["prompts"][i], REFS[name]
    assert not set(p["greedy_ids"]) & set(ref["eos_ids"])  # else the pipeline would (rightly) stop early
    out = pipes[name](p["text"], max_new_tokens=ref["max_new_tokens"], do_sample=False)
    assert out == [{"generated_text": p["text"] + p["greedy_text"]}]


def test_pipeline_puts_bos_first_and_stops_at_any_eos(pipes, models, toks):
    pipe, ref = pipes["tiny-llama"], REFS["tiny-llama"]
    assert pipe.prefix_ids == [ref["bos_id"]] and pipes["tiny-qwen2"].prefix_ids == []
    assert pipe.eos_token_ids == ref["eos_ids"] == [341, 342] and pipe.eos_token_id == 341
    assert hf.generation_config(FIXTURES["tiny-llama"])["eos_token_ids"] == [341, 342]
    p = ref["prompts"][0]
    # pretend the 4th greedy token is the second of two end-of-text ids
    stop = TextGenerationPipeline(models["tiny-llama"], toks["tiny-llama"],
                                  {"eos_token_ids": [341, p["greedy_ids"][3]]}, prefix_ids=[ref["bos_id"]])
    out = stop(p["text"], max_new_tokens=10, do_sample=False, return_full_text=False)
    assert out == [{"generated_text": toks["tiny-llama"].decode(p["greedy_ids"][:3])}]


# ----------------------------------------------------------------------------- checkpoint layouts


def _copy(tmp_path, name):
    d = tmp_path / name
    shutil.copytree(FIXTURES[name], d)
    return d


def _edit_weights(d, fn):
    w = load_file(str(d / "model.safetensors"))
    save_file(fn(w), str(d / "model.safetensors"))


LAYOUTS = {
    "no model. prefix (LlamaModel keys)": ("tiny-llama", lambda w: {k.removeprefix("model."): v for k, v in w.items()}),
    "rotary inv_freq buffers": ("tiny-llama", lambda w: {**w, "model.layers.0.self_attn.rotary_emb.inv_freq":
                                                         np.ones(4, np.float32)}),
    "tied lm_head.weight stored": ("tiny-qwen2", lambda w: {**w, "lm_head.weight": w["model.embed_tokens.weight"].copy()}),
    "float16": ("tiny-qwen2", lambda w: {k: v.astype(np.float16) for k, v in w.items()}),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_loads_other_key_layouts(tmp_path, models, layout):
    name, fn = LAYOUTS[layout]
    d = _copy(tmp_path, name)
    _edit_weights(d, fn)
    expected = models[name].params
    if layout == "float16":
        expected = hf.from_pretrained(FIXTURES[name], dtype=np.float16).params.astype(np.float32)
    np.testing.assert_array_equal(hf.from_pretrained(d).params, expected)


def test_loads_sharded_checkpoint(tmp_path, models):
    d = _copy(tmp_path, "tiny-llama")
    w = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    keys = sorted(w)
    shards = {f"model-0000{k + 1}-of-00003.safetensors": keys[k::3] for k in range(3)}
    for fname, ks in shards.items():
        save_file({k: w[k] for k in ks}, str(d / fname))
    index = {"metadata": {"total_size": 0}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    np.testing.assert_array_equal(hf.from_pretrained(d).params, models["tiny-llama"].params)


@pytest.mark.parametrize("edit", [
    dict(model_type="mistral", sliding_window=None), dict(model_type="mistral", sliding_window=4096),
    dict(model_type="mistral", sliding_window=128), dict(rope_parameters=None, rope_theta=500000.0, rope_scaling=None),
    dict(rope_parameters=None, rope_theta=500000.0, rope_scaling={"rope_type": "default"}),
    dict(head_dim=None, num_key_value_heads=2, pretraining_tp=2),
], ids=["mistral-no-window", "mistral-window-4096", "mistral-window-=-positions", "legacy-rope_theta",
        "legacy-default-scaling", "no-head_dim"])
def test_accepted_config_variants(tmp_path, models, edit):
    d = _copy(tmp_path, "tiny-llama")
    _set_config(**edit)(d)
    np.testing.assert_array_equal(hf.from_pretrained(d).params, models["tiny-llama"].params)
    assert hf.from_pretrained(d).config.rope_theta == 500000.0


# ----------------------------------------------------------------------------- bad input


def _set_config(drop=(), **kv):
    def edit(d):
        c = json.loads((d / "config.json").read_text())
        c.update(kv)
        for k in drop:
            c.pop(k, None)
        (d / "config.json").write_text(json.dumps(c))
    return edit


def _weights(fn):
    return lambda d: _edit_weights(d, fn)


Q = "model.layers.0.self_attn.q_proj"
BAD_MODEL = {
    "other model_type": ("tiny-llama", _set_config(model_type="gemma"),
                         r"model_type: expected one of \('gpt2', 'llama', 'mistral', 'qwen2'\).*got 'gemma'"),
    "rope_scaling linear (legacy keys)": ("tiny-llama", _set_config(rope_parameters=None, rope_scaling={"type": "linear", "factor": 2.0}),
                                          r"config\.json: rope_scaling: RoPE scaling 'linear' is not supported \(expected null"),
    "rope llama3 (transformers 5 keys)": ("tiny-llama", _set_config(rope_parameters={"rope_type": "llama3", "factor": 8.0, "rope_theta": 5e5}),
                                          r"rope_parameters: RoPE scaling 'llama3' is not supported"),
    "rope yarn": ("tiny-qwen2", _set_config(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}),
                  r"rope_parameters: RoPE scaling 'yarn'"),
    "rope per layer type": ("tiny-llama", _set_config(rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e4}}),
                            r"rope_parameters: expected one object \{rope_type, rope_theta\} for all layers"),
    "partial rotary": ("tiny-llama", _set_config(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}),
                       r"rope_parameters\.partial_rotary_factor: expected 1"),
    "rope_theta not a number": ("tiny-llama", _set_config(rope_parameters=None, rope_theta="big"), r"rope_theta: expected a number > 1"),
    "mixture of experts (Mixtral)": ("tiny-llama", _set_config(num_local_experts=8, num_experts_per_tok=2),
                                     r"num_local_experts: 8 means a mixture of experts"),
    "mixture of experts (Qwen2-MoE)": ("tiny-qwen2", _set_config(num_experts=4), r"num_experts: 4 means a mixture of experts"),
    "head_dim": ("tiny-llama", _set_config(head_dim=16), r"head_dim: expected hidden_size / num_attention_heads = 8 .*got 16"),
    "hidden_act": ("tiny-llama", _set_config(hidden_act="gelu"), r"hidden_act: expected 'silu' .*got 'gelu'"),
    "attention_bias": ("tiny-llama", _set_config(attention_bias=True), r"attention_bias: true \(biases on the q, k, v and o_proj\)"),
    "mlp_bias": ("tiny-llama", _set_config(mlp_bias=True), r"mlp_bias: true .* is not supported"),
    "mistral sliding window": ("tiny-llama", _set_config(model_type="mistral", sliding_window=64),
                               r"sliding_window: 64 < max_position_embeddings=128 means sliding-window attention"),
    "mistral default window": ("tiny-llama", _set_config(model_type="mistral", drop=("max_position_embeddings",)),
                               r"sliding_window: 4096 < max_position_embeddings=131072"),
    "qwen2 use_sliding_window": ("tiny-qwen2", _set_config(use_sliding_window=True, sliding_window=64),
                                 r"use_sliding_window: true \(sliding-window attention\) is not supported"),
    "layer_types": ("tiny-qwen2", _set_config(layer_types=["full_attention", "sliding_attention"]),
                    r"layer_types: expected every layer 'full_attention'"),
    "quantised": ("tiny-llama", _set_config(quantization_config={"quant_method": "gptq", "bits": 4}),
                  r"quantization_config: quantised weights \(gptq\) are not supported"),
    "rms_norm_eps": ("tiny-llama", _set_config(rms_norm_eps=0), r"rms_norm_eps: expected a number > 0, got 0"),
    "num_key_value_heads": ("tiny-llama", _set_config(num_key_value_heads=3), r"config\.json: n_kv_head: expected a divisor of n_head=4"),
    "hidden_size": ("tiny-llama", _set_config(hidden_size=0), r"hidden_size: expected an integer >= 1, got 0"),
    "tied in config, untied in file": ("tiny-llama", _set_config(tie_word_embeddings=True),
                                       r"lm_head\.weight differs from model\.embed_tokens\.weight, but config\.json has tie_word_embeddings true"),
    "untied in config, no head in file": ("tiny-qwen2", _set_config(tie_word_embeddings=False),
                                          r"missing tensor 'lm_head\.weight' \(shape \(384, 32\)\)"),
    "vocab_size": ("tiny-llama", _set_config(vocab_size=400),
                   r"tensor 'model\.embed_tokens\.weight': expected shape \(400, 32\) from config\.json .*got \(384, 32\)"),
    "intermediate_size": ("tiny-qwen2", _set_config(intermediate_size=128),
                          r"tensor 'model\.layers\.0\.mlp\.gate_proj\.weight': expected shape \(128, 32\) .*intermediate_size=128"),
    "missing tensor": ("tiny-llama", _weights(lambda w: {k: v for k, v in w.items() if k != "model.layers.1.mlp.up_proj.weight"}),
                       r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight' \(shape \(64, 32\)\)"),
    "qwen2 without biases": ("tiny-qwen2", _weights(lambda w: {k: v for k, v in w.items() if not k.endswith("k_proj.bias")}),
                             r"missing tensor 'model\.layers\.0\.self_attn\.k_proj\.bias' \(shape \(16,\)\)"),
    "llama with biases": ("tiny-llama", _weights(lambda w: {**w, Q + ".bias": np.zeros(32, np.float32)}),
                          r"unexpected tensors \['model\.layers\.0\.self_attn\.q_proj\.bias'\] \(not part of a Llama "
                          r"with num_hidden_layers=2, no biases\)"),
    "extra layer": ("tiny-qwen2", _weights(lambda w: {**w, "model.layers.2.input_layernorm.weight": np.ones(32, np.float32)}),
                    r"unexpected tensors \['model\.layers\.2\.input_layernorm\.weight'\]"),
    "NaN weight": ("tiny-llama", _weights(lambda w: {**w, Q + ".weight": np.full((32, 32), np.nan, np.float32)}),
                   r"tensor 'model\.layers\.0\.self_attn\.\{q,k,v\}_proj\.weight' contains NaN"),
}


@pytest.mark.parametrize("case", list(BAD_MODEL))
def test_bad_checkpoint_is_refused(tmp_path, case):
    name, edit, msg = BAD_MODEL[case]
    d = _copy(tmp_path, name)
    edit(d)
    with pytest.raises(ValueError, match=msg) as e:
        hf.from_pretrained(d)
    assert str(e.value).count(str(d)) == 1, str(e.value)  # one error, naming the file once


def _edit_tokenizer(fn):
    def edit(d):
        j = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
        fn(j)
        (d / "tokenizer.json").write_text(json.dumps(j, ensure_ascii=False), encoding="utf-8")
    return edit


def _set(path, value):
    """Set j[a][b]... = value for path "a.b" (list indices as digits)."""
    def fn(j):
        *head, last = path.split(".")
        for k in head:
            j = j[int(k)] if k.isdigit() else j[k]
        j[int(last) if last.isdigit() else last] = value
    return fn


def _swap_merges(j):
    m = j["model"]["merges"]
    m[1], m[2] = m[2], m[1]


def _to_sentencepiece(d):
    (d / "tokenizer.json").unlink()
    (d / "tokenizer.model").write_bytes(b"\x0a\x0bnot really a sentencepiece model")


BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
PRE = "pre_tokenizer.pretokenizers"
BAD_TOKENIZER = {
    "Unigram model": ("tiny-llama", _set("model.type", "Unigram"), r"tokenizer\.json: model\.type: 'Unigram' is not supported"),
    "WordPiece model": ("tiny-llama", _set("model.type", "WordPiece"), r"model\.type: 'WordPiece' is not supported"),
    "byte_fallback": ("tiny-llama", _set("model.byte_fallback", True), r"model\.byte_fallback: true \(SentencePiece-style"),
    "BPE dropout": ("tiny-qwen2", _set("model.dropout", 0.1), r"model\.dropout: 0\.1 is not supported"),
    "subword prefix": ("tiny-qwen2", _set("model.continuing_subword_prefix", "##"), r"model\.continuing_subword_prefix: '##'"),
    "NFKC normalizer": ("tiny-qwen2", _set("normalizer", {"type": "NFKC"}), r"normalizer: 'NFKC' is not supported"),
    "SentencePiece normalizers": ("tiny-llama", _set("normalizer", {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}),
        r"normalizer: 'Prepend' is not supported"),
    "no pre-tokenizer": ("tiny-llama", _set("pre_tokenizer", None), r"pre_tokenizer: None is not supported"),
    "Metaspace pre-tokenizer": ("tiny-llama", _set("pre_tokenizer", {"type": "Metaspace", "replacement": "▁"}),
                                r"pre_tokenizer: 'Metaspace' is not supported"),
    "other pre-tokenizers": ("tiny-llama", _set(PRE, [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL]),
                             r"pre_tokenizer\.pretokenizers: \['Digits', 'ByteLevel'\] is not supported"),
    "Split behavior": ("tiny-llama", _set(PRE + ".0.behavior", "Removed"),
                       r"pre_tokenizer\.pretokenizers\[0\]\.behavior: 'Removed' is not supported \(expected 'Isolated'\)"),
    "Split invert": ("tiny-qwen2", _set(PRE + ".0.invert", True), r"pre_tokenizer\.pretokenizers\[0\]\.invert: true"),
    "Split on a string": ("tiny-llama", _set(PRE + ".0.pattern", {"String": " "}), r"pretokenizers\[0\]\.pattern: .* is not supported"),
    "Split regex with groups": ("tiny-llama", _set(PRE + ".0.pattern", {"Regex": r"(\w+)|\s+"}),
                                r"pretokenizers\[0\]\.pattern\.Regex: a regex with capturing groups is not supported"),
    "Split regex invalid": ("tiny-llama", _set(PRE + ".0.pattern", {"Regex": r"(?:\w+"}),
                            r"pretokenizers\[0\]\.pattern\.Regex: not a regex we can compile"),
    "ByteLevel splits again": ("tiny-qwen2", _set(PRE + ".1.use_regex", True), r"pretokenizers\[1\]\.use_regex: true is not supported"),
    "ByteLevel prefix space": ("tiny-llama", _set(PRE + ".1.add_prefix_space", True),
                               r"pretokenizers\[1\]\.add_prefix_space: true \(a space put before the text\) is not supported"),
    "decoder": ("tiny-llama", _set("decoder", {"type": "Metaspace"}), r"decoder: 'Metaspace' is not supported"),
    "no decoder": ("tiny-qwen2", _set("decoder", None), r"decoder: None is not supported"),
    "BERT post-processor": ("tiny-qwen2", _set("post_processor", {"type": "BertProcessing", "sep": ["[SEP]", 1], "cls": ["[CLS]", 0]}),
                            r"post_processor: 'BertProcessing' is not supported"),
    "EOS after the text": ("tiny-llama", _set("post_processor.processors.1.single", [
        {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
        {"SpecialToken": {"id": "<|end_of_text|>", "type_id": 0}}]),
        r"post_processor\.processors\[1\]\.single: .* tokens after the text"),
    "non-special added token": ("tiny-qwen2", _set("added_tokens.1.special", False),
                                r"added_tokens\[1\]\.special: false \(for '<\|im_start\|>': an added token matched in any text"),
    "lstrip added token": ("tiny-llama", _set("added_tokens.0.lstrip", True), r"added_tokens\[0\]\.lstrip: true"),
    "merges out of id order": ("tiny-llama", _swap_merges, r"model\.merges\[2\]: merge 'Ġ t' makes id \d+, lower than the previous merge's"),
    "malformed merge": ("tiny-qwen2", _set("model.merges.0", ["h"]), r"model\.merges\[0\]: expected 'left right' or \[left, right\]"),
    "unreachable token": ("tiny-qwen2", _set("model.vocab.zzqx", 999),
                          r"model\.vocab: token 'zzqx' \(id 999\) is neither a single byte nor made by a merge in model\.merges; "
                          r"if it is a special token, list it in added_tokens"),
    "special id clash": ("tiny-llama", _set("added_tokens.0.id", 5), r"added_tokens\[0\]: special token '<\|begin_of_text\|>' has id 5"),
    "not JSON": ("tiny-llama", lambda d: (d / "tokenizer.json").write_text("{oops"), r"tokenizer\.json: not valid JSON"),
    "SentencePiece only": ("tiny-llama", _to_sentencepiece, r"found tokenizer\.model \(a SentencePiece tokenizer"),
}


@pytest.mark.parametrize("case", list(BAD_TOKENIZER))
def test_bad_tokenizer_json_is_refused(tmp_path, case):
    name, edit, msg = BAD_TOKENIZER[case]
    d = _copy(tmp_path, name)
    (edit if case in ("not JSON", "SentencePiece only") else _edit_tokenizer(edit))(d)
    with pytest.raises(ValueError, match=msg) as e:
        hf.tokenizer_from_pretrained(d)
    assert str(e.value).count(str(d)) == 1, str(e.value)


# ----------------------------------------------------------------------------- oracles (live)

ORACLE_STRINGS = [c["text"] for c in REFS["tiny-llama"]["tokenizer"]] + [
    "Ünïcödé ẞ straße İstanbul ﬁ ligature Å Å", "tab\tseparated\tvalues\t", "mixed123numbers456 and 7.0e-3 1234567",
    "'s 't 're 've 'm 'll 'd 'S 'LL I'M", "    indented code:\n        return x  # comment\n", "\u00a0nbsp\u00a0and\u2009thin",
    "control \x1c\x1d\x1e\x1f \x85 next line \u2028 sep \u3000 ideographic", "Ελληνικά Кириллица العربية עברית हिन्दी",
]


def _random_strings(n, seed=0):
    """Random mixtures of the characters that stress the split regexes, NFC and byte-level BPE."""
    rng = np.random.default_rng(seed)
    alphabet = list("abcdefghijklmnopqrstuvwxyzABC  \n\t'`-.,;!?0123456789") + [
        "é", "ß", "日", "🙂", "\u0301", "\u0308", "\r\n", "\x1c", "\x85", "\u3000", "\u00a0", "\u212b", "Ω", "я"]
    words = open(Path(hf.__file__).parent / "data" / "alice.txt", encoding="utf-8").read().split()[:3000]
    return ["".join(rng.choice(alphabet) if rng.random() < 0.5 else " " * int(rng.integers(0, 3)) + rng.choice(words)
                    for _ in range(int(rng.integers(1, 15)))) for _ in range(n)]


@pytest.mark.oracle
@pytest.mark.parametrize("name", NAMES)
def test_tokenizer_matches_tokenizers_library(toks, name):
    tokenizers = pytest.importorskip("tokenizers")
    ref = tokenizers.Tokenizer.from_file(str(FIXTURES[name] / "tokenizer.json"))
    tok = toks[name]
    alice = open(Path(hf.__file__).parent / "data" / "alice.txt", encoding="utf-8").read()
    for s in ORACLE_STRINGS + _random_strings(1000) + [alice]:
        ids = ref.encode(s, add_special_tokens=False).ids
        assert tok.encode(s) == ids, repr(s[:80])
        assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=False), repr(s[:80])
        # with the post-processor: our prefix + our ids
        assert hf.prefix_ids(FIXTURES[name]) + ids == ref.encode(s).ids
    for t in tok.special_tokens:  # `tokenizers` always matches them; we do when allowed
        s = f"Cafe\u0301{t}  {t}x\n{t}"
        assert tok.encode(s, allowed_special="all") == ref.encode(s, add_special_tokens=False).ids, repr(s)


PRE_TOKENIZER_VARIANTS = {
    # Isolated keeps the text between matches as pieces too: a regex that skips spaces and punctuation
    "regex with gaps": _set(PRE + ".0.pattern", {"Regex": r"\p{L}+| ?\p{N}"}),
    "ByteLevel alone, no split": _set("pre_tokenizer", {**BYTE_LEVEL, "use_regex": False}),
    "ByteLevel with GPT-2's regex": _set("pre_tokenizer", {**BYTE_LEVEL, "use_regex": True}),
    "merges as 'a b' strings": lambda j: j["model"].update(merges=[" ".join(m) for m in j["model"]["merges"]]),
}


@pytest.mark.oracle
@pytest.mark.parametrize("variant", list(PRE_TOKENIZER_VARIANTS))
def test_tokenizer_json_variants_match_tokenizers_library(tmp_path, variant):
    tokenizers = pytest.importorskip("tokenizers")
    d = _copy(tmp_path, "tiny-llama")
    _edit_tokenizer(PRE_TOKENIZER_VARIANTS[variant])(d)
    ref = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
    tok = hf.tokenizer_from_pretrained(d)
    for s in ORACLE_STRINGS + _random_strings(300, seed=2):
        assert tok.encode(s) == ref.encode(s, add_special_tokens=False).ids, repr(s[:80])


@pytest.mark.oracle
@pytest.mark.parametrize("name", NAMES)
def test_tokenizer_matches_transformers_auto_tokenizer(toks, name):
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(str(FIXTURES[name]))
    prefix = hf.prefix_ids(FIXTURES[name])
    for s in ORACLE_STRINGS + _random_strings(200, seed=1):
        assert prefix + toks[name].encode(s) == ref(s)["input_ids"], repr(s[:80])


@pytest.fixture
def hf_torch():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    return torch, transformers


SHAPES = {
    "llama-GQA": ("LlamaForCausalLM", "LlamaConfig", dict(hidden_size=48, num_attention_heads=6, num_key_value_heads=2,
                                                          intermediate_size=80, num_hidden_layers=3, rope_theta=5e5)),
    "llama-MQA-tied": ("LlamaForCausalLM", "LlamaConfig", dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=1,
                                                               intermediate_size=40, num_hidden_layers=2, tie_word_embeddings=True)),
    "llama-MHA": ("LlamaForCausalLM", "LlamaConfig", dict(hidden_size=16, num_attention_heads=2, num_key_value_heads=2,
                                                          intermediate_size=24, num_hidden_layers=1, rms_norm_eps=1e-5)),
    "mistral": ("MistralForCausalLM", "MistralConfig", dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                                                            intermediate_size=64, num_hidden_layers=2, sliding_window=None)),
    "qwen2-untied": ("Qwen2ForCausalLM", "Qwen2Config", dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                                                             intermediate_size=48, num_hidden_layers=2, rope_theta=1e6)),
    "qwen2-tied": ("Qwen2ForCausalLM", "Qwen2Config", dict(hidden_size=24, num_attention_heads=3, num_key_value_heads=1,
                                                           intermediate_size=40, num_hidden_layers=2, tie_word_embeddings=True)),
}


@pytest.mark.oracle
@pytest.mark.parametrize("shape", list(SHAPES))
def test_random_llama_family_matches_transformers_live(tmp_path, hf_torch, shape):
    torch, transformers = hf_torch
    model_cls, config_cls, kw = SHAPES[shape]
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(vocab_size=97, max_position_embeddings=40, **kw)
    ref = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():  # weights (and Qwen2's zero biases) well away from init: every parameter matters
        for p in ref.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ref.save_pretrained(tmp_path, safe_serialization=True)
    ours = hf.from_pretrained(tmp_path)
    ids = np.random.default_rng(0).integers(0, 97, size=(2, 40))
    with torch.no_grad():
        expected = ref(torch.from_numpy(ids)).logits.numpy()
    # |logits| reach ~8 with these perturbed weights; observed max |diff| 2.2e-5 (llama-GQA), so
    # 1e-4 relative on top of ATOL covers float32 sum order over 3 layers of 48 channels
    np.testing.assert_allclose(ours.forward(ids)[0], expected, rtol=1e-4, atol=ATOL)
    with torch.no_grad():
        greedy = ref.generate(torch.from_numpy(ids[:1, :3]), max_new_tokens=30, do_sample=False,
                              pad_token_id=0, eos_token_id=None)
    for use_cache in (True, False):
        assert generate_ids(ours, ids[0, :3], 30, temperature=0, use_cache=use_cache)[0].tolist() == greedy[0].tolist()


@pytest.mark.oracle
def test_sharded_and_bfloat16_save_pretrained_live(tmp_path, hf_torch, models):
    torch, transformers = hf_torch
    ref = transformers.LlamaForCausalLM.from_pretrained(str(FIXTURES["tiny-llama"]))
    ref.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 2
    np.testing.assert_array_equal(hf.from_pretrained(tmp_path / "sharded").params, models["tiny-llama"].params)
    ref.to(torch.bfloat16).save_pretrained(tmp_path / "bf16", safe_serialization=True)
    bf16 = hf.from_pretrained(tmp_path / "bf16").params
    truncated_or_rounded = np.abs(bf16 - models["tiny-llama"].params) <= np.abs(models["tiny-llama"].params) * 2 ** -8
    assert truncated_or_rounded.all()


@pytest.mark.oracle
@pytest.mark.parametrize("name", NAMES)
def test_pipeline_matches_transformers_pipeline(hf_torch, pipes, name):
    _, transformers = hf_torch
    ref = transformers.pipeline("text-generation", model=str(FIXTURES[name]), device="cpu")
    for p in REFS[name]["prompts"]:
        for kw in (dict(max_new_tokens=30), dict(max_length=len(p["ids"]) + 7), dict(max_new_tokens=9, return_full_text=False)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected = ref(p["text"], do_sample=False, **kw)
            assert pipes[name](p["text"], do_sample=False, **kw) == expected, (p["text"], kw)


# ----------------------------------------------------------------------------- ignore_merges (Llama 3)


@pytest.mark.parametrize("ignore", [True, False])
@pytest.mark.parametrize("merge_abcd", [True, False], ids=["abcd-merged", "abcd-unmerged"])
def test_ignore_merges_takes_a_chunk_that_is_a_token_whole(tmp_path, ignore, merge_abcd):
    """Hugging Face's ignore_merges (Llama 3's tokenizer.json): a chunk that is itself a token is
    one id, before any merging, and a token no merge makes is allowed (reached only whole, never
    built inside a longer chunk). Without the flag such a token is refused."""
    tokenizers = pytest.importorskip("tokenizers")
    b2u = hf.bytes_to_unicode()
    vocab = {b2u[i]: i for i in range(256)} | {"bc": 256, "ab": 257, "cd": 258, "abcd": 259}
    merges = [("b", "c"), ("a", "b"), ("c", "d")] + ([("ab", "cd")] if merge_abcd else [])
    ref = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore))
    ref.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    ref.decoder = tokenizers.decoders.ByteLevel()
    ref.save(str(tmp_path / "tokenizer.json"))
    if not merge_abcd and not ignore:
        with pytest.raises(ValueError, match="'abcd' .* is neither a single byte nor made by a merge"):
            hf.tokenizer_from_pretrained(tmp_path)
        return
    ours = hf.tokenizer_from_pretrained(tmp_path)
    for text in ["abcd", " abcd", "xabcd abcdx", "ab cd abcd", "abcdabcd"]:
        assert ours.encode(text) == ref.encode(text).ids, text
    assert (ours.encode("abcd") == [259]) == ignore
    # the flag and the unmerged ids survive save/load
    ours.save(tmp_path / "tok.txt")
    again = type(ours).load(tmp_path / "tok.txt")
    assert (again.ignore_merges, again.unmerged) == (ours.ignore_merges, ours.unmerged)
    assert again.encode("xabcd abcd") == ours.encode("xabcd abcd")
