"""Loading checkpoints in Hugging Face format into our NumPy `GPT` and `BPETokenizer`: GPT-2 here,
Llama / Mistral / Qwen2 through hf_llama.py, the tokenizer files through hf_tokenizer.py.

    model = from_pretrained("tests/fixtures/tiny-gpt2")    # ~ AutoModelForCausalLM.from_pretrained
    tok = tokenizer_from_pretrained("tests/fixtures/tiny-gpt2")  # ~ AutoTokenizer.from_pretrained
    model = from_pretrained("tests/fixtures/tiny-llama")   # config.json's model_type picks the mapping
    model = from_pretrained("gpt2")    # a hub name: downloads with huggingface_hub if it can

A Hugging Face checkpoint directory holds:
    config.json        hyper-parameters (GPT-2: n_embd, n_layer, ...; Llama: hidden_size, ...) -> `GPTConfig`
    model.safetensors  the weights by name ("transformer.h.0.attn.c_attn.weight", ...) -> `GPT.p`
                       (or model.safetensors.index.json + model-0000k-of-0000n.safetensors shards)
    vocab.json         GPT-2: {token as a byte-to-unicode string: id}     -> `BPETokenizer` ranks
    merges.txt         GPT-2: the merges in the order they were learned
    tokenizer.json     Llama 3, Qwen2 (and GPT-2 on the hub): vocab, merges, split regex, special
                       tokens in one file; preferred over vocab.json + merges.txt when both are there
    generation_config.json   end-of-text id(s) and sampling defaults (`generation_config`)

model_type "gpt2" is mapped below; "llama", "mistral" and "qwen2" in hf_llama.py (RMSNorm, RoPE,
SwiGLU, grouped-query attention, nn.Linear's (out, in) weights transposed to our (in, out)).

GPT-2's weights map one to one. GPT-2's `Conv1D` stores a linear layer's weight as (C_in, C_out)
and computes x @ W + b, exactly our layout, so nothing is transposed:

    HF name (prefix "transformer." optional)     ours                    shape
    wte.weight                                   wte                     (V, C)
    wpe.weight                                   wpe                     (n_positions, C)
    h.{i}.ln_1.weight / .bias                    h.{i}.ln_1.w / .b       (C,)
    h.{i}.attn.c_attn.weight / .bias             h.{i}.attn.c_attn.w/.b  (C, 3C) / (3C,)
    h.{i}.attn.c_proj.weight / .bias             h.{i}.attn.c_proj.w/.b  (C, C) / (C,)
    h.{i}.ln_2.weight / .bias                    h.{i}.ln_2.w / .b       (C,)
    h.{i}.mlp.c_fc.weight / .bias                h.{i}.mlp.c_fc.w / .b   (C, 4C) / (4C,)
    h.{i}.mlp.c_proj.weight / .bias              h.{i}.mlp.c_proj.w / .b (4C, C) / (C,)
    ln_f.weight / .bias                          ln_f.w / .b             (C,)
    lm_head.weight (often absent)                tied to wte: checked equal, not stored
    h.{i}.attn.bias, h.{i}.attn.masked_bias      causal-mask buffers of old checkpoints: skipped

Dimension legend: V vocab, C channels (n_embd), L layers (n_layer).

Does not: load pickle checkpoints (pytorch_model.bin: unpickling runs arbitrary code, so we read
safetensors only), load architectures other than GPT-2, Llama, Mistral and Qwen2 (no GPT-Neo,
Gemma, Phi, mixtures of experts, ...), keep an untied LM head for GPT-2, or write checkpoints back
in Hugging Face format.
"""
import json
import os
import struct
from pathlib import Path

import numpy as np

from . import hf_llama, hf_tokenizer
from .hf_tokenizer import MERGES_FILE, TOKENIZER_FILE, VOCAB_FILE, read_json
# re-exported, so that hf.bytes_to_unicode etc. keep working: the tokenizer files live in hf_tokenizer.py
from .hf_tokenizer import bytes_to_unicode, load_gpt2_tokenizer, load_tokenizer_json  # noqa: F401
from .model import GPT, GPTConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"  # a checkpoint split into shards
GENERATION_CONFIG_FILE = "generation_config.json"
# weights in formats we do not read, and why
OTHER_WEIGHTS = {
    "pytorch_model.bin": "a PyTorch pickle, and unpickling a file can run arbitrary code",
    "pytorch_model.bin.index.json": "the index of a sharded PyTorch pickle, and unpickling a file can run arbitrary code",
    "tf_model.h5": "TensorFlow's format",
    "flax_model.msgpack": "Flax's format",
}
NEEDED_FILES = (CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE, MERGES_FILE)  # GPT-2's; Llama 3 / Qwen2: tokenizer.json
MODEL_TYPES = ("gpt2",) + hf_llama.MODEL_TYPES

# GPT2Config's defaults, used for keys a config.json leaves out (as transformers does)
HF_DEFAULTS = dict(
    vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
    activation_function="gelu_new", resid_pdrop=0.1, layer_norm_epsilon=1e-5, scale_attn_weights=True,
    scale_attn_by_inverse_layer_idx=False, add_cross_attention=False, tie_word_embeddings=True,
)
# GELU with the tanh approximation, ours (layers.gelu_forward); "gelu" (exact erf) is not ours
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")
LN_EPS = 1e-5  # the eps of our layer norm (layers.layernorm_forward's default)


# ----------------------------------------------------------------------------- finding the files


def resolve(name_or_path, *, cache_dir=None, revision=None):
    """A local directory, or a hub name such as "gpt2" -> the Path of a directory with the files.

    A directory that exists wins (as in transformers). Otherwise a name is downloaded from the
    Hugging Face hub with `huggingface_hub` (pip install "nanotransformer[hf]"): only the files
    we read (no pickles), into the usual Hugging Face cache. Offline, or without huggingface_hub, a
    ValueError says what to download and where to put it.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ValueError(f"name_or_path: expected a directory path or a hub name such as 'gpt2', "
                         f"got {type(name_or_path).__name__}")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{path}: expected a directory holding {', '.join(NEEDED_FILES)}, got a file")
    name = str(name_or_path)
    if _looks_like_path(name):
        raise ValueError(f"{path}: no such directory (expected one holding {', '.join(NEEDED_FILES)})")
    return _download(name, cache_dir=cache_dir, revision=revision)


def _looks_like_path(name):
    """A hub name is "gpt2" or "owner/name"; anything else is meant as a path."""
    parts = name.split("/")
    return (os.sep in name and os.sep != "/") or len(parts) > 2 or name.startswith((".", "~", "/")) or not all(parts)


def _download_help(name, reason, installed=True):
    repo = name if "/" in name else f"openai-community/{name}"  # "gpt2" now lives there
    local = "./" + name.split("/")[-1]
    how = (f"On a machine that is online, from_pretrained({name!r}) downloads them into the Hugging Face cache."
           if installed else
           f"Or, online: pip install \"nanotransformer[hf]\" and from_pretrained({name!r}) downloads them itself.")
    return (
        f"{name!r} is not a local directory, and it could not be downloaded from the Hugging Face hub "
        f"({reason}).\nDownload these files from https://huggingface.co/{repo}/tree/main :\n"
        f"    {', '.join(NEEDED_FILES)}\n"
        f"    (or {TOKENIZER_FILE} instead of {VOCAB_FILE} + {MERGES_FILE}, for Llama 3, Qwen2, ...; "
        f"a sharded checkpoint has {WEIGHTS_INDEX_FILE} and model-*.safetensors instead of {WEIGHTS_FILE})\n"
        f"put them in one directory, e.g. {local}/, and pass that path instead: from_pretrained('{local}').\n{how}"
    )


def _download(name, cache_dir=None, revision=None):
    try:
        import huggingface_hub
    except ImportError:
        raise ValueError(_download_help(name, "huggingface_hub is not installed", installed=False)) from None
    patterns = [CONFIG_FILE, GENERATION_CONFIG_FILE, "model*.safetensors*", VOCAB_FILE, MERGES_FILE, TOKENIZER_FILE]
    try:
        local = huggingface_hub.snapshot_download(name, revision=revision, cache_dir=cache_dir, allow_patterns=patterns)
    except Exception as e:  # offline, unknown repo, gated repo, ...: huggingface_hub has many error types
        raise ValueError(_download_help(name, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")) from None
    return Path(local)


# ----------------------------------------------------------------------------- config


def config_from_hf(hf_config, source=CONFIG_FILE, backend=None):
    """A transformers GPT2Config as a dict (config.json) -> GPTConfig.

    Refuses, naming the key, anything our GPT would compute differently: another model_type,
    another activation, another layer-norm eps, a hidden size other than 4C, unscaled or
    layer-scaled attention, cross-attention, an untied LM head.
    """
    mt = hf_config.get("model_type")
    if mt != "gpt2":
        raise ValueError(f"{source}: model_type: expected one of {MODEL_TYPES} (the architectures we load; "
                         f"this function reads 'gpt2'), got {mt!r}")
    c = {**HF_DEFAULTS, **{k: v for k, v in hf_config.items() if v is not None or k == "n_inner"}}
    if c["activation_function"] not in TANH_GELUS:
        raise ValueError(f"{source}: activation_function: expected one of {TANH_GELUS} (GELU, tanh "
                         f"approximation: the only activation our MLP has), got {c['activation_function']!r}")
    if not isinstance(c["layer_norm_epsilon"], (int, float)) or abs(c["layer_norm_epsilon"] - LN_EPS) > 1e-12:
        raise ValueError(f"{source}: layer_norm_epsilon: expected {LN_EPS} (our layer norm's eps), "
                         f"got {c['layer_norm_epsilon']!r}")
    if c["n_inner"] is not None and c["n_inner"] != 4 * c["n_embd"]:
        raise ValueError(f"{source}: n_inner: expected null or 4 * n_embd = {4 * c['n_embd']} (our MLP "
                         f"is C -> 4C -> C), got {c['n_inner']!r}")
    for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                      ("add_cross_attention", False), ("tie_word_embeddings", True)):
        if c[key] != want:
            raise ValueError(f"{source}: {key}: expected {want} (what our GPT computes), got {c[key]!r}")
    try:
        return GPTConfig(
            vocab_size=c["vocab_size"], block_size=c["n_positions"], n_layer=c["n_layer"], n_head=c["n_head"],
            d_model=c["n_embd"], dropout=float(c["resid_pdrop"]), bias=True, pos="learned", backend=backend,
        )
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


# ----------------------------------------------------------------------------- weights


def hf_name(name):
    """Our parameter name -> GPT-2's (without the "transformer." prefix): "h.0.ln_1.w" -> "h.0.ln_1.weight"."""
    if name in ("wte", "wpe"):
        return name + ".weight"
    base, _, kind = name.rpartition(".")
    return base + (".weight" if kind == "w" else ".bias")


def _is_buffer(key):
    """The causal-mask buffers old GPT-2 checkpoints saved with the weights (not the c_attn bias)."""
    return key.endswith((".attn.bias", ".attn.masked_bias"))


def our_name(key):
    """GPT-2's tensor name -> ours, or None for a tensor that is not a parameter of ours.

    "transformer.h.0.attn.c_attn.weight" -> "h.0.attn.c_attn.w"; "wte.weight" -> "wte";
    "h.0.attn.bias" / "h.0.attn.masked_bias" (mask buffers) -> None; "lm_head.weight" -> None
    (tied: it is wte). A name that is none of GPT-2's comes back unchanged (then it matches none
    of our parameters either).
    """
    k = key[len("transformer."):] if key.startswith("transformer.") else key
    if k == "lm_head.weight" or _is_buffer(k):
        return None
    base, _, kind = k.rpartition(".")
    if base in ("wte", "wpe") and kind == "weight":
        return base
    if kind in ("weight", "bias") and base not in ("wte", "wpe"):
        return base + (".w" if kind == "weight" else ".b")
    return key


def convert_state_dict(tensors, config, source=WEIGHTS_FILE):
    """{HF name: array} -> {our name: array}, checked against `config`'s shapes.

    Accepts names with or without the "transformer." prefix, skips the attention-mask buffers,
    and accepts an `lm_head.weight` only if it equals `wte` (GPT-2 ties them).
    """
    specs = dict(GPT.param_specs(config))
    ours, unexpected, head = {}, [], None
    for key, arr in tensors.items():
        name = our_name(key)
        if name is None:
            if key.endswith("lm_head.weight"):
                head = arr
        elif name in specs:
            ours[name] = arr
        else:
            unexpected.append(key)
    if unexpected:
        unexpected.sort()
        raise ValueError(f"{source}: unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} "
                         f"(not part of a GPT-2 with n_layer={config.n_layer})")
    for name, shape in specs.items():
        if name not in ours:
            raise ValueError(f"{source}: missing tensor {hf_name(name)!r} (our {name!r}, shape {shape})")
        if tuple(ours[name].shape) != shape:
            raise ValueError(f"{source}: tensor {hf_name(name)!r}: expected shape {shape} from config.json "
                             f"(n_embd={config.d_model}, vocab_size={config.vocab_size}, "
                             f"n_positions={config.block_size}), got {tuple(ours[name].shape)}")
    if head is not None and (tuple(head.shape) != tuple(ours["wte"].shape) or not np.array_equal(head, ours["wte"])):
        raise ValueError(f"{source}: lm_head.weight differs from wte.weight: an untied LM head, "
                         f"which our GPT (whose head is wte^T) cannot hold")
    return ours


def _bf16_to_f32(raw, shape):
    """bfloat16 is the top half of a float32: shift the 16 bits up and reinterpret."""
    return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)


def read_safetensors(path):
    """{name: float array} from one safetensors file; bf16 becomes float32 (NumPy has no bf16).

    A safetensors file is an 8-byte little-endian header length, a JSON header
    {name: {"dtype", "shape", "data_offsets"}}, then the raw tensor bytes: no code, just data.
    """
    from safetensors import safe_open

    path = Path(path)
    try:
        out, bf16 = {}, []
        with safe_open(str(path), framework="numpy") as f:
            for k in f.keys():
                if f.get_slice(k).get_dtype() == "BF16":
                    bf16.append(k)
                else:
                    out[k] = f.get_tensor(k)
        if bf16:  # read those ourselves, from the header's byte ranges
            with open(path, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
                for k in bf16:
                    lo, hi = header[k]["data_offsets"]
                    fh.seek(8 + n + lo)
                    out[k] = _bf16_to_f32(fh.read(hi - lo), header[k]["shape"])
    except Exception as e:  # safetensors raises its own error types for bad headers / short files
        raise ValueError(f"{path}: not a readable safetensors file, truncated or corrupted ({e})") from None
    bad = sorted(k for k, v in out.items() if not np.issubdtype(v.dtype, np.floating) and not _is_buffer(k))
    if bad:
        raise ValueError(f"{path}: expected floating-point tensors, got {out[bad[0]].dtype} for {bad[0]!r}")
    return out


def _weight_files(d):
    """The safetensors file(s) of directory d, or a ValueError that explains what is there instead."""
    if (d / WEIGHTS_FILE).is_file():
        return [d / WEIGHTS_FILE]
    if (d / WEIGHTS_INDEX_FILE).is_file():
        weight_map = read_json(d / WEIGHTS_INDEX_FILE).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{d / WEIGHTS_INDEX_FILE}: expected a 'weight_map' object")
        files = [d / f for f in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"{d}: missing shard(s) {missing} listed in {WEIGHTS_INDEX_FILE}")
        return files
    others = [f for f in OTHER_WEIGHTS if (d / f).exists()]
    if others:
        raise ValueError(
            f"{d}: found {others[0]} but no {WEIGHTS_FILE}. Only safetensors checkpoints are loaded: "
            f"{others[0]} is {OTHER_WEIGHTS[others[0]]}. Convert it once where transformers and torch "
            f"are installed:\n"
            f"    AutoModelForCausalLM.from_pretrained('{d}').save_pretrained('{d}', safe_serialization=True)\n"
            f"or download model.safetensors, which the hub has for every GPT-2 size and most newer models."
        )
    raise ValueError(f"{d}: missing {WEIGHTS_FILE} (found: {sorted(p.name for p in d.iterdir()) or 'nothing'})")


def read_weights(d):
    """{name: float array} from all the safetensors file(s) of checkpoint directory d."""
    tensors = {}
    for f in _weight_files(d):
        tensors.update(read_safetensors(f))
    return tensors


def from_pretrained(name_or_path, *, dtype=np.float32, backend=None, cache_dir=None, revision=None):
    """Load a Hugging Face GPT-2, Llama, Mistral or Qwen2 (directory or hub name, see `resolve`)
    -> our GPT, ready to use. config.json's model_type picks the mapping (this module's for GPT-2,
    hf_llama.py's for the others).

    dtype: the model's dtype (float32; float64 to compare or gradient-check). backend: as in
    GPTConfig ("numpy", "numba", None for the default).
    """
    d = resolve(name_or_path, cache_dir=cache_dir, revision=revision)
    hf_config = read_json(d / CONFIG_FILE)
    if hf_config.get("model_type") in hf_llama.MODEL_TYPES:
        config = hf_llama.config_from_llama(hf_config, d / CONFIG_FILE, backend=backend)
        ours = hf_llama.convert_llama_state_dict(read_weights(d), config, d / WEIGHTS_FILE)
        name_in_file = hf_llama.hf_name
    else:
        config = config_from_hf(hf_config, d / CONFIG_FILE, backend=backend)
        ours = convert_state_dict(read_weights(d), config, d / WEIGHTS_FILE)
        name_in_file = hf_name
    model = GPT(config, dtype=dtype)
    model.load_state_dict(ours, source=str(d / WEIGHTS_FILE))  # copies, casting to dtype
    bad = [n for n, v in model.p.items() if not np.isfinite(v).all()]
    if bad:
        raise ValueError(f"{d / WEIGHTS_FILE}: tensor {name_in_file(bad[0])!r} contains NaN or inf values")
    return model


def generation_config(name_or_path):
    """The generation defaults stored with a checkpoint (generation_config.json, else the ids in
    config.json): a dict with eos_token_id, eos_token_ids and any of max_length, max_new_tokens,
    do_sample, temperature, top_k, top_p. A checkpoint may list several end-of-text ids (Llama 3
    Instruct: <|end_of_text|>, <|eom_id|>, <|eot_id|>): eos_token_ids has them all, eos_token_id the
    first (None if there is none). A hub name is resolved as in `resolve`."""
    d = resolve(name_or_path)
    out = {}
    if (d / CONFIG_FILE).is_file():
        out["eos_token_id"] = read_json(d / CONFIG_FILE).get("eos_token_id")
    if (d / GENERATION_CONFIG_FILE).is_file():
        g = read_json(d / GENERATION_CONFIG_FILE)
        keys = ("eos_token_id", "max_length", "max_new_tokens", "do_sample", "temperature", "top_k", "top_p")
        out.update({k: g[k] for k in keys if k in g})
    eos = out.get("eos_token_id")
    out["eos_token_ids"] = [] if eos is None else list(eos) if isinstance(eos, list) else [eos]
    out["eos_token_id"] = out["eos_token_ids"][0] if out["eos_token_ids"] else None
    return out


# ----------------------------------------------------------------------------- tokenizer


def tokenizer_from_pretrained(name_or_path, *, cache_dir=None, revision=None):
    """The tokenizer of a checkpoint directory or hub name -> BPETokenizer: tokenizer.json if the
    directory has one (GPT-2, Llama 3, Qwen2, ...), else GPT-2's vocab.json + merges.txt (see
    hf_tokenizer.py for what is supported). `encode` does not add the BOS that Llama 3's
    tokenizer.json adds: `prefix_ids` gives it."""
    return hf_tokenizer.load_tokenizer_dir(resolve(name_or_path, cache_dir=cache_dir, revision=revision))


def prefix_ids(name_or_path):
    """The ids a checkpoint's tokenizer puts before every text (its tokenizer.json post-processor:
    Llama 3's <|begin_of_text|>), [] for none (GPT-2, Qwen2). `pipeline` puts them before prompts."""
    return hf_tokenizer.prefix_ids(resolve(name_or_path))
