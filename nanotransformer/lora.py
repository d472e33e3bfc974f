"""LoRA: low-rank adapters on a frozen GPT (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large
Language Models"), as one more `params.ParamStore` that the one trainer, optimiser and checkpoint
code handle like any model.

    ckpt = load_checkpoint("out")                                   # a trained GPT (or classifier)
    lora = LoRA(ckpt.model, rank=8, targets=("attn", "mlp"), base_checkpoint=ckpt.path)
    trainer = Trainer(lora, LanguageModelTask(data, T), TrainConfig(...))   # AdamW on the adapters only
    trainer.fit()                                                   # checkpoints: the adapters only
    fast = lora.merged_model()                                      # a plain GPT, W + s A @ B, to generate

The math, with our (C_in, C_out) weight layout: every adapted linear layer computes

    y = x @ W + b + s (x @ A) @ B,    A: (C_in, r), B: (r, C_out), s = alpha / r

with the base W, b frozen. A starts Gaussian, N(0, 1/C_in) (so x @ A keeps x's scale), B starts at
zero: a fresh adapter changes nothing, the model starts exactly at the base. The update s A @ B
has rank <= r, so a layer trains r (C_in + C_out) numbers instead of C_in C_out; with r = 8 on
every attention and MLP linear of the default model that is 8 % of the parameters (65,536 of 809,856).

alpha: the default is alpha = r, i.e. s = 1, so the update is exactly A @ B. The paper instead
fixes alpha while it sweeps r ("we simply set alpha to the first r we try and do not tune it"),
so s = alpha / r shrinks as r grows; pass alpha to do that. Under Adam, scaling s is much like
scaling the learning rate of the adapters.

Where it runs: nowhere new. `GPT.forward(..., lora=self)` passes the LoRA down to the one block,
which hands each linear layer as a `layers.LoRAWeight` to the usual sub-layers and runs them on
`backend.lora_ops(ops)`, the one dispatch point (`lora_linear_forward/backward` for an adapted
linear, `frozen_linear_forward/backward` for the others). The backward writes only this store's
`grads`: the adapters' (block._put skips every other name), and for a classifier its head's. It
never forms the dw of a frozen linear, the embedding gradient, or the tied head's dwte (the
head's backward is dx only). The base is frozen (`ParamStore.freeze`: no gradient buffer), and
because the optimiser is built on this store it keeps moments for the adapters only.

What the store holds (its buffer, in order): per block and adapted linear "h.{i}.<lin>.lora_a"
(C_in, r) and "h.{i}.<lin>.lora_b" (r, C_out); for a `finetuning.GPTClassifier` base, then the
classifier's own head "head.w" (C, K), "head.b" (K,), started from the classifier's and trained
here (the classifier reads and writes these when given `lora=`, not its own).

Checkpoints (kind "lora"): the adapters (+ head) and their optimiser moments only, and in the
config the base checkpoint's directory, weights file name and sha256; loading rebuilds the base
from that directory and refuses it if its weights file changed since.

Dimension legend: C_in, C_out a linear layer's sizes, r the rank, C channels, K classes.

Does not: adapt the embeddings, the LM head or the norms; drop out the adapter's input (the
paper's LoRA dropout); or keep several adapters on one base at once.
"""
import math
from pathlib import Path

import numpy as np

from .block import SUBLAYERS
from .params import ParamStore

# a target group -> its linear layers (exact linear names, e.g. "attn.c_proj", are accepted too)
TARGETS = {"attn": SUBLAYERS["attn"], "mlp": SUBLAYERS["mlp"]}


def _without_backend(d):
    """A config dict with every "backend" entry dropped (the backend is not part of the weights)."""
    return {k: _without_backend(v) if isinstance(v, dict) else v for k, v in d.items() if k != "backend"}


class LoRA(ParamStore):
    """Low-rank adapters (and, for a classifier, its head) over a frozen base model.

    LoRA(model, rank=8, alpha=None, targets=("attn", "mlp"), seed=0, *, base_checkpoint=None)
    model: a `model.GPT` or a `finetuning.GPTClassifier`; it is frozen (`freeze()`).
    alpha: None = rank (s = 1, see module docstring). targets: "attn" (attn.c_attn, attn.c_proj),
    "mlp" (mlp.c_fc, mlp.c_proj) and/or exact linear names. base_checkpoint: the checkpoint
    directory the model was loaded from (needed to save the LoRA; `attach_base_checkpoint`).
    """

    kind = "lora"

    def __init__(self, model, rank=8, alpha=None, targets=("attn", "mlp"), seed=0, *, base_checkpoint=None):
        from .checkpoint import refuse_quantized
        from .finetuning import GPTClassifier
        from .model import GPT

        refuse_quantized(model, "adapted (put the LoRA on the float model, then quantize its merge)")
        if not isinstance(model, (GPT, GPTClassifier)):
            raise ValueError(f"model: expected a model.GPT or a finetuning.GPTClassifier, got {type(model).__name__}")
        if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool) or rank < 1:
            raise ValueError(f"rank: expected a positive integer, got {rank!r}")
        alpha = rank if alpha is None else alpha
        if not isinstance(alpha, (int, float, np.integer, np.floating)) or isinstance(alpha, bool) \
                or not math.isfinite(alpha) or alpha <= 0:  # fmt: skip
            raise ValueError(f"alpha: expected a positive number (or None for alpha = rank), got {alpha!r}")
        self.base, self.classifier = model, isinstance(model, GPTClassifier)
        self.gpt = model.gpt if self.classifier else model
        self.rank, self.alpha, self.scale = int(rank), float(alpha), float(alpha) / int(rank)
        self.targets, self.linears = self._resolve(targets)
        self.config, self.ops, self.base_kind = self.gpt.config, model.ops, model.kind
        specs = []
        for prefix in self.gpt.prefixes:
            for lin in self.linears:
                C_in, C_out = self.gpt.p[prefix + lin + ".w"].shape
                specs += [(prefix + lin + ".lora_a", (C_in, self.rank)), (prefix + lin + ".lora_b", (self.rank, C_out))]
        if self.classifier:
            specs += [("head.w", model.p["head.w"].shape), ("head.b", model.p["head.b"].shape)]
        model.freeze()
        self._merged = None  # while merged: the base weights as they were (see merge)
        self.base_checkpoint = None
        self.build(specs, model.dtype, seed)
        if base_checkpoint is not None:
            self.attach_base_checkpoint(base_checkpoint)

    def _resolve(self, targets):
        """targets as given (a tuple) and the linear layers they name, in block order."""
        targets = (targets,) if isinstance(targets, str) else targets
        if not isinstance(targets, (tuple, list)) or not targets or not all(isinstance(t, str) for t in targets):
            raise ValueError(f"targets: expected a non-empty list of 'attn', 'mlp' or linear names, got {targets!r}")
        have = [lin for lin in sum(SUBLAYERS.values(), ()) if f"{self.gpt.prefixes[0]}{lin}.w" in self.gpt.p]
        chosen = set()
        for t in targets:
            names = TARGETS.get(t, (t,))
            if not set(names) <= set(have):
                raise ValueError(f"targets: expected 'attn', 'mlp' or one of the model's linear layers {have}, got {t!r}")
            chosen |= set(names)
        return tuple(targets), tuple(lin for lin in have if lin in chosen)

    def init_std(self, name, shape):
        """A's standard deviation: 1 / sqrt(C_in), so x @ A has about x's scale (B starts at 0)."""
        return 1.0 / math.sqrt(shape[0])

    def init_weights(self, seed=0):
        """A ~ N(0, 1/C_in), B = 0 (a fresh adapter changes nothing), the head copied from the
        classifier. Drawn in float64 then cast, like every store."""
        rng = np.random.default_rng(seed)
        for name, shape in self.specs:
            if name.endswith(".lora_a"):
                self.p[name][...] = rng.normal(0.0, self.init_std(name, shape), size=shape)
            elif name.endswith(".lora_b"):
                self.p[name][...] = 0.0
            else:  # the classifier's head
                self.p[name][...] = self.base.p[name]

    def num_trainable(self):
        """Parameters training changes: the whole buffer (adapters, and a classifier's head)."""
        return int(self.params.size)

    # ------------------------------------------------------------------------- forward / backward

    def forward(self, *args, **kw):
        """The base's forward with the adapters (`GPT.forward` / `GPTClassifier.forward`'s
        arguments, e.g. (ids, targets, train=, rng=, kv_cache=)). While merged, the base alone:
        its weights already hold the adapters."""
        if self._merged is not None:
            return self.base.forward(*args, **kw)
        return self.base.forward(*args, lora=self, **kw)

    def backward(self):
        """Gradients of the last forward's loss, into this store's `grads` only (returned)."""
        self._check_unmerged("backward")
        return self.base.backward(lora=self)

    def backward_from_logits(self, dlogits):
        """A GPT base: gradients of any loss with gradient dlogits (B, T, V) at the last
        forward's logits, into `grads` (`GPT.backward_from_logits`)."""
        self._check_unmerged("backward_from_logits")
        if self.classifier:
            raise ValueError("backward_from_logits: expected a LoRA of a GPT, got one of a classifier (use backward)")
        return self.base.backward_from_logits(dlogits, lora=self)

    def predict_proba(self, ids, lengths, batch_size=256):
        """A classifier base: class probabilities (N, K) with the adapters and the LoRA's head."""
        return self.base.predict_proba(ids, lengths, batch_size, None if self._merged is not None else self)

    def predict(self, ids, lengths, batch_size=256):
        return self.predict_proba(ids, lengths, batch_size).argmax(axis=-1)

    def _check_unmerged(self, what):
        if self._merged is not None:
            raise ValueError(f"{what}: the adapters are merged into the base (merge()); unmerge() before training")

    # ------------------------------------------------------------------------- merging

    def _deltas(self):
        """{base weight name: s A @ B} of every adapter."""
        out = {}
        for prefix in self.gpt.prefixes:
            for lin in self.linears:
                name = prefix + lin
                out[name + ".w"] = (self.scale * (self.p[name + ".lora_a"] @ self.p[name + ".lora_b"])).astype(self.dtype)
        return out

    def merge(self):
        """W += s A @ B in the base (and a classifier's head := the LoRA's), so the base alone runs
        the adapted model at plain speed. While merged, `forward` runs the base alone (never adding
        the adapters twice) and `backward` refuses. The weights as they were are kept, so
        `unmerge()` restores them bit for bit. Returns self."""
        if self._merged is not None:
            raise ValueError("merge: already merged")
        saved = {}
        for name, delta in self._deltas().items():
            saved[name] = self.gpt.p[name].copy()
            self.gpt.p[name][...] += delta
        if self.classifier:
            for name in ("head.w", "head.b"):
                saved[name] = self.base.p[name].copy()
                self.base.p[name][...] = self.p[name]
        self._merged = saved
        return self

    def unmerge(self):
        """Put back the base weights `merge` changed (exactly as they were). Returns self."""
        if self._merged is None:
            raise ValueError("unmerge: not merged")
        target = {**self.gpt.p, **self.base.p}
        for name, value in self._merged.items():
            target[name][...] = value
        self._merged = None
        return self

    @property
    def merged(self):
        return self._merged is not None

    def merged_model(self):
        """A new model of the base's class holding W + s A @ B (and the LoRA's head): the adapted
        model at plain speed, e.g. for `generation.generate`. This LoRA and its base are untouched."""
        m = type(self.base).from_config(self.base.config_dict(), self.dtype)
        m.params[...] = self.base.params
        if self._merged is None:
            for name, delta in self._deltas().items():
                (m.gpt if self.classifier else m).p[name][...] += delta
            if self.classifier:
                m.p["head.w"][...], m.p["head.b"][...] = self.p["head.w"], self.p["head.b"]
        return m

    # ------------------------------------------------------------------------- checkpoints

    def attach_base_checkpoint(self, path):
        """Record the checkpoint directory the base was loaded from: its absolute path, weights
        file name and sha256, kind and step (the config a LoRA checkpoint stores). The sha256 is
        taken now: the adapters belong to the base as it is now. Returns self."""
        from .checkpoint import read_sidecar
        from .data import file_sha256

        sc = read_sidecar(path)
        d = Path(sc["_dir"]).resolve()
        kind = sc.get("kind", "gpt")
        if kind != self.base_kind or _without_backend(sc["config"]) != _without_backend(self.base.config_dict()):
            raise ValueError(f"base_checkpoint: {d} holds a {kind!r} model of another config than this LoRA's base "
                             f"(a {self.base_kind!r})")  # fmt: skip
        self.base_checkpoint = {"dir": str(d), "weights": sc["weights"], "sha256": file_sha256(d / sc["weights"]),
                                "kind": kind, "step": int(sc["step"])}  # fmt: skip
        return self

    def config_dict(self):
        if self.base_checkpoint is None:
            raise ValueError("base_checkpoint: a LoRA is saved as adapters over its base's checkpoint, and this one has "
                             "none; build it as LoRA(ckpt.model, ..., base_checkpoint=ckpt.path) or call "
                             "attach_base_checkpoint(path) first")  # fmt: skip
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets), "base": dict(self.base_checkpoint)}

    @classmethod
    def from_config(cls, d, dtype=np.float32, backend=None):
        """Load the base from d["base"]["dir"] (refused if its weights file's sha256 is not the
        one recorded), then build the LoRA around it (adapters at init: the checkpoint fills them)."""
        from .checkpoint import load_checkpoint, read_sidecar
        from .data import file_sha256

        known = {"rank", "alpha", "targets", "base"}
        if not isinstance(d, dict) or set(d) != known:
            raise ValueError(f"config: expected the keys {sorted(known)}, got {sorted(d) if isinstance(d, dict) else d!r}")
        base = d["base"]
        if not isinstance(base, dict) or not {"dir", "sha256"} <= set(base):
            raise ValueError(f"config: 'base' expected an object with 'dir' and 'sha256', got {base!r}")
        sc = read_sidecar(base["dir"])
        now = file_sha256(Path(sc["_dir"]) / sc["weights"])
        if now != base["sha256"]:
            raise ValueError(f"base checkpoint {base['dir']}: adapters were trained on base weights sha256 "
                             f"{base['sha256']}, base now {now} ({sc['weights']}); use the base they were trained on")  # fmt: skip
        ckpt = load_checkpoint(base["dir"], dtype=dtype, backend=backend)
        lora = cls(ckpt.model, d["rank"], d["alpha"], d["targets"], seed=None)
        lora.base_checkpoint = {**base, "weights": sc["weights"], "sha256": now}
        return lora


def inference_model(model):
    """`model` as it runs for inference: a LoRA's adapters merged into its base (`merged_model`, a
    plain GPT or classifier at plain speed), any other model as it is."""
    return model.merged_model() if getattr(model, "kind", None) == "lora" else model
