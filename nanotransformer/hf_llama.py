"""Llama-family checkpoints in Hugging Face format (model_type "llama", "mistral", "qwen2") as our
`GPT` with RMSNorm, RoPE, SwiGLU and grouped-query attention: the config and the weight names.

`hf.from_pretrained` reads the files and calls these two:
    config_from_llama(config.json as a dict)      -> GPTConfig(norm="rmsnorm", pos="rope", mlp="swiglu", ...)
    convert_llama_state_dict(tensors, config)     -> {our name: array}

The config (transformers' key -> ours):
    hidden_size, num_hidden_layers, num_attention_heads -> d_model, n_layer, n_head
    num_key_value_heads (null: = heads)    -> n_kv_head   (grouped-query attention)
    intermediate_size                      -> d_ff        (SwiGLU's hidden width F)
    vocab_size, max_position_embeddings    -> vocab_size, block_size (RoPE allocates nothing per
                                              position, so a huge block_size costs nothing)
    rope_theta (or rope_parameters.rope_theta, transformers 5) -> rope_theta
    rms_norm_eps                           -> norm_eps
    tie_word_embeddings                    -> tie_embeddings
    (Qwen2 always has q, k, v biases)      -> qkv_bias=True
Keys left out of config.json take transformers' defaults for that model_type (`DEFAULTS`).

The weights. nn.Linear stores its weight (out, in) and computes x @ W^T + b; ours are (in, out)
for x @ w + b, so every projection is transposed; q, k, v are fused into one matrix, and SwiGLU's
gate and up into another (gate first). Hugging Face's RoPE rotates the two halves of each head
(`rotate_half`), as ours does, so q and k need no permutation. C = hidden_size, hs = C / NH,
KV = NKV * hs, F = intermediate_size, prefix "model." optional:

    HF name                                       ours                      shape
    embed_tokens.weight                           wte                       (V, C)
    layers.{i}.input_layernorm.weight             h.{i}.ln_1.w              (C,)
    layers.{i}.self_attn.{q,k,v}_proj.weight      h.{i}.attn.c_attn.w       (C, C + 2KV) = [q^T k^T v^T]
    layers.{i}.self_attn.{q,k,v}_proj.bias        h.{i}.attn.c_attn.b       (C + 2KV,)   Qwen2 only
    layers.{i}.self_attn.o_proj.weight            h.{i}.attn.c_proj.w       (C, C)
    layers.{i}.post_attention_layernorm.weight    h.{i}.ln_2.w              (C,)
    layers.{i}.mlp.{gate,up}_proj.weight          h.{i}.mlp.c_fc.w          (C, 2F) = [gate^T up^T]
    layers.{i}.mlp.down_proj.weight               h.{i}.mlp.c_proj.w        (F, C)
    norm.weight                                   ln_f.w                    (C,)
    lm_head.weight                                lm_head.w                 (C, V), untied only; tied:
                                                                            checked equal to wte, skipped
    layers.{i}.self_attn.rotary_emb.inv_freq      a buffer of old checkpoints: skipped

Dimension legend: V vocab, C channels (hidden_size), NH heads, NKV key/value heads, hs head size,
F SwiGLU hidden width, L layers.

Does not: load sliding-window attention (Mistral 7B v0.1's sliding_window 4096, Qwen2's
use_sliding_window), RoPE scaling (linear, dynamic, YaRN, Llama 3.1's "llama3"), a head_dim other
than hidden_size / heads, biases on o_proj or the MLP (attention_bias, mlp_bias), mixtures of
experts, or quantised weights. Each is a ValueError naming the config.json key.
"""
import numpy as np

from .model import GPT, GPTConfig

MODEL_TYPES = ("llama", "mistral", "qwen2")

# transformers' defaults for keys a config.json leaves out (LlamaConfig, MistralConfig, Qwen2Config)
_COMMON = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=None, hidden_act="silu", rms_norm_eps=1e-6,
               tie_word_embeddings=False, rope_theta=10000.0, rope_scaling=None, head_dim=None)
DEFAULTS = {
    "llama": dict(_COMMON, max_position_embeddings=2048, attention_bias=False, mlp_bias=False),
    "mistral": dict(_COMMON, intermediate_size=14336, num_key_value_heads=8, max_position_embeddings=4096 * 32,
                    sliding_window=4096),
    "qwen2": dict(_COMMON, vocab_size=151936, intermediate_size=22016, max_position_embeddings=32768,
                  use_sliding_window=False, sliding_window=4096),
}
SILUS = ("silu", "swish")  # transformers' ACT2FN: both are x * sigmoid(x)
# keys of mixture-of-experts configs (Mixtral, Qwen2-MoE, ...): a non-empty value means experts
MOE_KEYS = ("num_experts", "num_local_experts", "num_experts_per_tok", "moe_intermediate_size",
            "shared_expert_intermediate_size", "n_routed_experts", "decoder_sparse_step")
# GPT-2's names: a config.json with these but a Llama model_type has been mislabelled
GPT2_KEYS = ("n_embd", "n_layer", "n_head")


def _rope(c, source):
    """rope_theta, refusing any RoPE scaling. transformers 5 writes rope_parameters = {"rope_type",
    "rope_theta", ...}; older configs have rope_theta and rope_scaling (null or {"type"/"rope_type", ...})."""
    params = c.get("rope_parameters")
    if params is not None:
        if not isinstance(params, dict) or any(isinstance(v, dict) for v in params.values()):
            raise ValueError(f"{source}: rope_parameters: expected one object {{rope_type, rope_theta}} for "
                             f"all layers, got {params!r}"[:300])
        if params.get("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError(f"{source}: rope_parameters.partial_rotary_factor: expected 1 (RoPE on the whole "
                             f"head), got {params['partial_rotary_factor']!r}")
        kind, key, theta = params.get("rope_type", params.get("type")), "rope_parameters", params.get("rope_theta")
        if theta is None:
            theta = c["rope_theta"]
    else:
        scaling, key, theta = c["rope_scaling"], "rope_scaling", c["rope_theta"]
        kind = None if scaling is None else scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) \
            else scaling
    if kind not in (None, "default"):
        raise ValueError(f"{source}: {key}: RoPE scaling {kind!r} is not supported (expected null or rope_type "
                         f"'default': our RoPE rotates position m by m * theta^(-2i/hs), unscaled)")
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta > 1:
        raise ValueError(f"{source}: {'rope_parameters.rope_theta' if params else 'rope_theta'}: expected a number "
                         f"> 1, got {theta!r}")
    return float(theta)


def _check_int(c, key, source, minimum=1):
    v = c[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{source}: {key}: expected an integer >= {minimum}, got {v!r}")
    return v


def config_from_llama(hf_config, source="config.json", backend=None):
    """A transformers Llama/Mistral/Qwen2 config as a dict (config.json) -> GPTConfig.

    Refuses, naming the key, anything our GPT would compute differently (see the module docstring).
    """
    mt = hf_config.get("model_type")
    if mt not in MODEL_TYPES:
        raise ValueError(f"{source}: model_type: expected one of {MODEL_TYPES}, got {mt!r}")
    if "hidden_size" not in hf_config and any(k in hf_config for k in GPT2_KEYS):
        raise ValueError(f"{source}: model_type: expected 'gpt2' for a config with GPT-2's keys "
                         f"({', '.join(k for k in GPT2_KEYS if k in hf_config)}), got {mt!r}")
    c = {**DEFAULTS[mt], **hf_config}
    for key in ("rope_theta", "rms_norm_eps", "hidden_act", "intermediate_size", "hidden_size",
                "num_hidden_layers", "num_attention_heads", "vocab_size", "max_position_embeddings"):
        if c[key] is None:
            c[key] = DEFAULTS[mt][key]
    if c.get("quantization_config"):
        method = c["quantization_config"].get("quant_method") if isinstance(c["quantization_config"], dict) else None
        raise ValueError(f"{source}: quantization_config: quantised weights ({method or 'unknown method'}) are not "
                         f"supported; load an unquantised (float32/float16/bfloat16) checkpoint")
    for key in MOE_KEYS:
        if c.get(key):
            raise ValueError(f"{source}: {key}: {c[key]!r} means a mixture of experts, which our MLP is not "
                             f"(expected the key absent, null or 0)")
    if c["hidden_act"] not in SILUS:
        raise ValueError(f"{source}: hidden_act: expected 'silu' (SwiGLU's gate, the only one our MLP has), "
                         f"got {c['hidden_act']!r}")
    for key in ("attention_bias", "mlp_bias"):  # llama's switches (Qwen2's q/k/v biases are built in)
        if c.get(key):
            what = "q, k, v and o_proj" if key == "attention_bias" else "gate, up and down projections"
            raise ValueError(f"{source}: {key}: true (biases on the {what}) is not supported: our Llama "
                             f"blocks have {'q/k/v biases only' if key == 'attention_bias' else 'no MLP biases'} "
                             f"(expected false)")
    C, NH = _check_int(c, "hidden_size", source), _check_int(c, "num_attention_heads", source)
    positions = _check_int(c, "max_position_embeddings", source)
    if c["head_dim"] is not None and (C % NH or c["head_dim"] != C // NH):
        raise ValueError(f"{source}: head_dim: expected hidden_size / num_attention_heads = {C / NH:g} (our "
                         f"attention splits C into NH heads), got {c['head_dim']!r}")
    if mt == "mistral":
        window = c.get("sliding_window")
        if window is not None and window < positions:
            raise ValueError(f"{source}: sliding_window: {window} < max_position_embeddings={positions} means "
                             f"sliding-window attention, which ours is not (expected null or >= {positions})")
    if mt == "qwen2" and c.get("use_sliding_window"):
        raise ValueError(f"{source}: use_sliding_window: true (sliding-window attention) is not supported "
                         f"(expected false)")
    layer_types = c.get("layer_types")  # transformers 5 lists each layer's attention
    if layer_types is not None and (not isinstance(layer_types, list)
                                    or any(t != "full_attention" for t in layer_types)):
        raise ValueError(f"{source}: layer_types: expected every layer 'full_attention', got {layer_types!r}")
    eps = c["rms_norm_eps"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"{source}: rms_norm_eps: expected a number > 0, got {eps!r}")
    tie = c["tie_word_embeddings"]
    if not isinstance(tie, bool):
        raise ValueError(f"{source}: tie_word_embeddings: expected true or false, got {tie!r}")
    n_kv = c["num_key_value_heads"]
    theta, d_ff = _rope(c, source), _check_int(c, "intermediate_size", source)
    try:
        return GPTConfig(
            vocab_size=c["vocab_size"], block_size=positions, n_layer=c["num_hidden_layers"], n_head=NH, d_model=C,
            dropout=0.0, bias=False, qkv_bias=(mt == "qwen2"), norm="rmsnorm", pos="rope", mlp="swiglu",
            d_ff=d_ff, n_kv_head=NH if n_kv is None else n_kv, tie_embeddings=tie, rope_theta=theta,
            norm_eps=float(eps), backend=backend,
        )
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


# ----------------------------------------------------------------------------- weights


# our name (without the "h.{i}." of a block) -> the HF tensor(s) it is made of
_HF_NAMES = {
    "wte": "model.embed_tokens.weight", "ln_f.w": "model.norm.weight", "lm_head.w": "lm_head.weight",
    "ln_1.w": "input_layernorm.weight", "ln_2.w": "post_attention_layernorm.weight",
    "attn.c_attn.w": "self_attn.{q,k,v}_proj.weight", "attn.c_attn.b": "self_attn.{q,k,v}_proj.bias",
    "attn.c_proj.w": "self_attn.o_proj.weight", "mlp.c_fc.w": "mlp.{gate,up}_proj.weight",
    "mlp.c_proj.w": "mlp.down_proj.weight",
}


def hf_name(name):
    """Our parameter name -> the Hugging Face tensor(s) it comes from, for messages:
    "h.0.attn.c_attn.w" -> "model.layers.0.self_attn.{q,k,v}_proj.weight"."""
    if name in _HF_NAMES:
        return _HF_NAMES[name]
    head, _, rest = name.partition(".")
    layer, _, rest = rest.partition(".")
    return f"model.layers.{layer}.{_HF_NAMES.get(rest, rest)}" if head == "h" else name


def _strip(key):
    return key[len("model."):] if key.startswith("model.") else key


def convert_llama_state_dict(tensors, config, source="model.safetensors"):
    """{HF name: array (out, in)} -> {our name: array (in, out)}, checked against `config`'s shapes.

    Accepts names with or without the "model." prefix (LlamaForCausalLM / LlamaModel), skips
    rotary_emb.inv_freq buffers, and for a tied head accepts an lm_head.weight only if it equals
    embed_tokens.weight. Every HF tensor's shape is checked before it is transposed or fused, so
    an error names the file's tensor and the config.json keys it depends on.
    """
    C, V, F, L = config.d_model, config.vocab_size, config.d_ff, config.n_layer
    hs = C // config.n_head
    KV = config.n_kv_head * hs
    keys = {_strip(k): k for k in tensors}  # our lookup name -> the file's name
    used = set()
    dims = (f"hidden_size={C}, num_attention_heads={config.n_head}, num_key_value_heads={config.n_kv_head}, "
            f"intermediate_size={F}, vocab_size={V}")

    def get(name, shape):
        if name not in keys:
            full = name if name == "lm_head.weight" else "model." + name
            raise ValueError(f"{source}: missing tensor {full!r} (shape {shape})")
        arr = tensors[keys[name]]
        if tuple(arr.shape) != shape:
            raise ValueError(f"{source}: tensor {keys[name]!r}: expected shape {shape} from config.json ({dims}), "
                             f"got {tuple(arr.shape)}")
        used.add(name)
        return arr

    ours = {"wte": get("embed_tokens.weight", (V, C)), "ln_f.w": get("norm.weight", (C,))}
    for i in range(L):
        p, h = f"layers.{i}.", f"h.{i}."
        a = p + "self_attn."
        ours[h + "ln_1.w"] = get(p + "input_layernorm.weight", (C,))
        ours[h + "ln_2.w"] = get(p + "post_attention_layernorm.weight", (C,))
        q, k, v = get(a + "q_proj.weight", (C, C)), get(a + "k_proj.weight", (KV, C)), get(a + "v_proj.weight", (KV, C))
        ours[h + "attn.c_attn.w"] = np.concatenate([q.T, k.T, v.T], axis=1)  # (C, C + 2KV)
        if config.qkv_bias:
            ours[h + "attn.c_attn.b"] = np.concatenate(
                [get(a + "q_proj.bias", (C,)), get(a + "k_proj.bias", (KV,)), get(a + "v_proj.bias", (KV,))])
        ours[h + "attn.c_proj.w"] = get(a + "o_proj.weight", (C, C)).T
        m = p + "mlp."
        ours[h + "mlp.c_fc.w"] = np.concatenate([get(m + "gate_proj.weight", (F, C)).T,
                                                 get(m + "up_proj.weight", (F, C)).T], axis=1)  # (C, 2F)
        ours[h + "mlp.c_proj.w"] = get(m + "down_proj.weight", (C, F)).T
    if not config.tie_embeddings:
        ours["lm_head.w"] = get("lm_head.weight", (V, C)).T
    elif "lm_head.weight" in keys:
        head = get("lm_head.weight", (V, C))
        if not np.array_equal(head, ours["wte"]):
            raise ValueError(f"{source}: lm_head.weight differs from model.embed_tokens.weight, but config.json "
                             f"has tie_word_embeddings true (expected them equal, or tie_word_embeddings false)")
    unexpected = sorted(k for name, k in keys.items() if name not in used and not name.endswith("rotary_emb.inv_freq"))
    if unexpected:
        raise ValueError(f"{source}: unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} "
                         f"(not part of a {'Qwen2' if config.qkv_bias else 'Llama'} with num_hidden_layers={L}"
                         f"{'' if config.qkv_bias else ', no biases'})")
    specs = dict(GPT.param_specs(config))
    for name, arr in ours.items():  # our model's own layout must agree with the mapping above
        if specs.get(name) != tuple(arr.shape):
            raise ValueError(f"{source}: {name}: our GPT expects {specs.get(name)}, the mapping made "
                             f"{tuple(arr.shape)} (a bug in hf_llama.py or model.py)")
    return ours
