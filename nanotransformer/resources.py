"""Will it fit? An estimate of the memory a model and a training step need, checked against the
machine's before anything is allocated, so an absurd size (`--n-layer 100000000`, `--d-model
1000000`, `--batch-size 1000000000`) is one error naming what is too large instead of a hang,
a swap storm or numpy's `_ArrayMemoryError` minutes later.

    check_model_memory(GPT, config, np.float32)        # in each model's __init__: its parameters
    check_training_memory(config, n_params, n_trained, rows, eval_rows, itemsize)   # Trainer

The estimate, in units of the dtype's size (4 bytes for float32), P parameters (P_t of them
trained), L blocks (an encoder-decoder's encoder and decoder blocks), B rows per forward (a
micro-batch), T block size, C channels, NH heads, V vocabulary (a classifier's classes):
    parameters      P + 4 P_t    weights; gradients, AdamW's two moments and the decay mask
    activations     B T L (16 C + 2 NH T)   what each block's forward keeps for its backward
                                 (x, q, k, v, the attention output, the MLP's 4C twice...) and
                                 the (B, NH, T, T) attention probabilities
    logits          3 B T V      logits, probabilities and their gradient
An evaluation forward keeps one block's activations and 2 B T V of logits. Measured against
the peak of real steps (a GPT of L4 C256 T512 V8192 at B 8, and L2 C768 V50257 at B4 x 1024)
the estimate is 15-25 % above it, so it refuses only what cannot run: a size whose estimate
exceeds the machine's physical memory.

Does not: estimate time, or account for other processes' memory (a run that needs most of the
memory passes, and may still be slow if others use it).
"""
import dataclasses
import math
import os

LAYER_FIELDS = ("n_layer", "n_enc_layer", "n_dec_layer")  # the configs' block counts


def physical_memory():
    """Bytes of physical memory of this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def human(n):
    """Bytes as text: 1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if n < 1024 or unit == "EiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def count_params(cls, config):
    """The number of parameters `cls(config)` would have, without building its spec list (which
    for 10^8 blocks would itself exhaust memory): the specs of 1 and 2 blocks give the size of
    the embeddings and of one block, and the rest is arithmetic."""
    layers = [f for f in LAYER_FIELDS if hasattr(config, f)]
    small = dataclasses.replace(config, **{f: 1 for f in layers})
    base = _count(cls.param_specs(small))
    total = base
    for f in layers:
        per_block = _count(cls.param_specs(dataclasses.replace(small, **{f: 2}))) - base
        total += (getattr(config, f) - 1) * per_block
    return total


def _count(specs):
    return sum(math.prod(shape) for _, shape in specs)


class ResourceError(ValueError):
    """A size the machine cannot hold; `field` names the setting that asked for it ("config" for
    the model's sizes, "batch_size" for a step's), so the CLI can name its flags."""

    def __init__(self, field, message):
        super().__init__(f"{field}: {message}")
        self.field = field


def _dims(config, classes=None):
    """(L, T, C, NH, V) of any model config (GPT, BERT, encoder-decoder; a classifier's GPT body,
    whose head has `classes` outputs instead of V)."""
    L = sum(getattr(config, f, 0) or 0 for f in LAYER_FIELDS)
    T = getattr(config, "block_size", None) or getattr(config, "max_len", 1)
    return L, T, config.d_model, config.n_head, classes or config.vocab_size


def _refuse(field, what, need, parts, have):
    detail = ", ".join(f"{k} {human(v)}" for k, v in parts.items())
    raise ResourceError(field, f"{what} needs about {human(need)} of memory ({detail}), more than this machine's "
                               f"{human(have)}; choose smaller sizes")


def check_model_memory(cls, config, dtype):
    """ResourceError "config: ..." before `cls(config)` allocates parameters that cannot fit: its
    flat buffers (parameters, gradients, decay mask) and the float64 draw of its largest tensor."""
    have = physical_memory()
    if have is None:
        return
    import numpy as np

    n = count_params(cls, config)
    small = dataclasses.replace(config, **{f: 1 for f in LAYER_FIELDS if hasattr(config, f)})
    largest = max(math.prod(shape) for _, shape in cls.param_specs(small))
    parts = {"parameters and gradients": 3 * n * np.dtype(dtype).itemsize, "initialisation": 8 * largest}
    need = sum(parts.values())
    if need > have:
        _refuse("config", f"a model of {n:,} parameters", need, parts, have)


def training_bytes(config, n_params, n_trained, rows, eval_rows, itemsize, classes=None):
    """The estimate of the module docstring -> {"parameters": bytes, "activations": ..., "logits": ...}.
    n_trained: the parameters with gradients and moments (a LoRA's adapters, not its frozen base);
    rows: the rows of one training forward (a micro-batch); eval_rows: of one evaluation forward,
    which keeps no activations for a backward but materialises its logits."""
    L, T, C, NH, V = _dims(config, classes)
    logit_t = 1 if classes else T  # a classifier has one row of logits per sequence
    act = rows * T * L * (16 * C + 2 * NH * T)
    evaluation = eval_rows * T * (16 * C + 2 * NH * T) + 2 * eval_rows * logit_t * V
    return {"parameters": (n_params + 4 * n_trained) * itemsize,
            "activations": max(act + 3 * rows * logit_t * V, evaluation) * itemsize}


def check_training_memory(config, n_params, n_trained, rows, eval_rows, itemsize, classes=None):
    """ResourceError "batch_size: ..." when a training step or an evaluation of this model and batch
    cannot fit."""
    have = physical_memory()
    if have is None:
        return
    parts = training_bytes(config, n_params, n_trained, rows, eval_rows, itemsize, classes)
    need = sum(parts.values())
    if need > have:
        L, T, C, NH, V = _dims(config)
        _refuse("batch_size", f"training on {rows:,} rows of {T:,} tokens per forward ({eval_rows:,} to evaluate; "
                f"{n_params:,} parameters, {L} blocks of {C:,} channels)", need, parts, have)


def check_memory(model, rows, eval_rows):
    """`check_training_memory` of a model as the Trainer holds it: a LoRA's frozen base counts as
    parameters without gradients, a classifier's logits are its classes."""
    base = getattr(model, "base", None)  # lora.LoRA: the adapters' store; the base is frozen
    n_params = len(model.params) + (len(base.params) if base is not None else 0)
    n_trained = len(model.params) - model.frozen
    classes = getattr(base if base is not None else model, "n_classes", None)
    check_training_memory(model.config, n_params, n_trained, rows, eval_rows, model.dtype.itemsize, classes)
