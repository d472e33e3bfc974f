"""Optimisers and schedules: Adam, AdamW, global-norm gradient clipping, warm-up + cosine LR.

Adam (Kingma & Ba 2015, Algorithm 1), for step t = 1, 2, ...:
    m = b1 m + (1 - b1) g                 first moment (momentum)
    v = b2 v + (1 - b2) g^2               second moment (per-parameter scale)
    m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)      bias correction: m, v start at 0
    p -= lr * m_hat / (sqrt(v_hat) + eps)
Weight decay, two ways:
    Adam  (L2, "coupled"):   g += wd * p before the moments  (torch.optim.Adam)
    AdamW (decoupled):       p -= lr * wd * p beside the Adam step  (Loshchilov & Hutter 2019)

The update works on flat arrays (llm.c keeps every parameter in one buffer so the optimiser is
a single pass): `AdamW` takes a model (its whole flat buffer, through the backend's fused
kernel `kernels/adamw.py` when the model runs on Numba), or a list of arrays.

Does not: keep fp32 master copies of lower-precision weights, or talk to other processes (a
sharded AdamW updates its slice; train.Trainer gathers the slices over the ranks).
"""
import math

import numpy as np

from .validation import check_array


def adamw_update(p, g, m, v, t, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=True):
    """One in-place Adam/AdamW step on arrays of one shape. t is the 1-based step number.

    p, g, m, v: same shape and dtype. weight_decay may be a scalar or an array broadcastable to
    p (e.g. a 0/1 mask that exempts biases and layer-norm gains from decay).
    """
    if t < 1:
        raise ValueError(f"t: expected the 1-based step number, got {t}")
    if decoupled:
        p -= lr * weight_decay * p  # AdamW: decay the weights directly, outside the moments
    else:
        g = g + weight_decay * p  # Adam with L2: decay enters the gradient
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * g * g
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    p -= lr * m_hat / (np.sqrt(v_hat) + eps)


class AdamW:
    """The one AdamW: in-place updates of flat parameter arrays through the backend's
    `adamw_update` (the NumPy reference or the fused Numba kernel).

        opt = AdamW(model, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)   # a model's flat buffer
        opt.step(lr=schedule(step))                                        # reads model.grads
        opt = AdamW([w, b], lr=3e-4, weight_decay=0.1)                     # or a list of arrays
        opt.step([dw, db])

    With a model (a `params.ParamStore`): one update over the trainable part of its buffer,
    params[frozen:] (see `ParamStore.frozen`), with weight decay weight_decay * model.decay_mask
    (biases and norm gains are not decayed), on the model's own backend. The moments `m`, `v`
    are laid out like the whole buffer, so `model.views(opt.m[0])` names them (the frozen part
    stays 0).
    With arrays: one update per array; weight_decay is a scalar or one value/array per array.
    decoupled=False gives classic Adam with L2 regularisation (see `Adam`).
    State: `m`, `v` (lists of arrays shaped like the params) and `t` (steps taken) — saved in
    checkpoints.
    shard=(lo, hi), with a model (ZeRO stage 1): this optimiser owns only params[frozen + lo :
    frozen + hi]; `m`, `v` hold that slice's moments alone and `step` updates that slice alone
    (the update is elementwise, so the slices of several ranks together are the whole update,
    bit for bit). Someone else gathers the slices (`distributed.World.allgather_slices`).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, decoupled=True, ops=None,
                 shard=None):
        from .params import ParamStore

        self.model = params if isinstance(params, ParamStore) else None
        self.shard = None
        if shard is not None:
            lo, hi = shard
            if self.model is None or not 0 <= lo <= hi <= len(self.model.params) - self.model.frozen:
                raise ValueError(f"shard: expected (lo, hi) within a model's trainable part, got {shard!r}")
            self.shard = (int(lo), int(hi))
        if self.model is not None:
            self.params = [self.model.params]
            wds = [(weight_decay * self.model.decay_mask).astype(self.model.dtype)]
            ops = ops or getattr(self.model, "ops", None)
        else:
            self.params = [params] if isinstance(params, np.ndarray) else list(params)
            for i, p in enumerate(self.params):
                check_array(f"params[{i}]", p, floating=True)
            wds = list(weight_decay) if isinstance(weight_decay, (list, tuple)) else [weight_decay] * len(self.params)
        self.update = adamw_update if ops is None else ops.adamw_update
        self.lr, self.betas, self.eps = lr, tuple(betas), eps
        self.weight_decay, self.decoupled, self._wds = weight_decay, decoupled, wds
        n = None if self.shard is None else self.shard[1] - self.shard[0]
        self.m = [np.zeros_like(p) if n is None else np.zeros(n, p.dtype) for p in self.params]
        self.v = [np.zeros_like(p) if n is None else np.zeros(n, p.dtype) for p in self.params]
        self.t = 0

    def step(self, grads=None, lr=None):
        """One update with `grads` (default: the model's gradient buffer) at learning rate `lr`
        (default: the constructor's)."""
        if grads is None:
            if self.model is None:
                raise ValueError("grads: expected the gradients of the params (one array per param), got None")
            grads = self.model.grads
        grads = [grads] if isinstance(grads, np.ndarray) else list(grads)
        if len(grads) != len(self.params):
            raise ValueError(f"grads: expected {len(self.params)} arrays, got {len(grads)}")
        for i, (p, g) in enumerate(zip(self.params, grads)):
            check_array(f"grads[{i}]", g, shape=p.shape)
        self.t += 1
        lr = self.lr if lr is None else lr
        start = 0 if self.model is None else self.model.frozen  # a frozen prefix is never updated
        for p, g, m, v, wd in zip(self.params, grads, self.m, self.v, self._wds):
            if self.shard is not None:  # m, v are the slice's already
                lo, hi = start + self.shard[0], start + self.shard[1]
                p, g, wd = p[lo:hi], g[lo:hi], wd[lo:hi]
            elif start:
                p, g, m, v, wd = p[start:], g[start:], m[start:], v[start:], wd[start:]
            self.update(p, g, m, v, self.t, lr, *self.betas, self.eps, wd, self.decoupled)

    def hparams(self):
        return {"betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}

    def load(self, state):
        """Restore from `Checkpoint.optimizer` ({"t", "m", "v", ...}; m, v flat like the buffer;
        a sharded optimiser keeps its slice)."""
        lo, hi = (0, len(state["m"])) if self.shard is None else (self.model.frozen + s for s in self.shard)
        self.m[0][...] = state["m"][lo:hi]
        self.v[0][...] = state["v"][lo:hi]
        self.t = int(state["t"])

    def state_bytes(self):
        """Bytes of the moments this optimiser keeps (per rank, with a shard)."""
        return sum(a.nbytes for a in self.m + self.v)

    def unsharded(self, m, v):
        """An unsharded AdamW over the same model whose moments are the trainable part's m, v
        (every rank's slice, gathered): what a checkpoint stores, whatever the number of ranks."""
        full = AdamW(self.model, self.lr, self.betas, self.eps, self.weight_decay, self.decoupled)
        full.m[0][self.model.frozen :], full.v[0][self.model.frozen :] = m, v
        full.t = self.t
        return full


class Adam(AdamW):
    """Adam with (coupled) L2 weight decay, as torch.optim.Adam. Default weight_decay = 0."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, ops=None):
        super().__init__(params, lr, betas, eps, weight_decay, decoupled=False, ops=ops)


def clip_grad_norm(grads, max_norm):
    """Scale gradients in place so their global L2 norm is at most max_norm. Returns the norm
    before clipping (log it: spikes show instability before the loss does).

    grads: one array or a list of arrays (the norm is taken over all of them together).
    """
    grads = [grads] if isinstance(grads, np.ndarray) else list(grads)
    # squares summed by NumPy's pairwise sum, not np.dot: OpenBLAS's dot product wakes its threads
    # once per step, which then spin beside the Numba kernels of the next step (kernels/jit.py)
    total = math.sqrt(sum(float(np.square(g.reshape(-1), dtype=np.float64).sum()) for g in grads))
    if max_norm is not None and total > max_norm:
        scale = max_norm / (total + 1e-6)
        for g in grads:
            g *= g.dtype.type(scale)
    return total


def lr_schedule(step, max_lr, warmup_steps, max_steps, min_lr=0.0):
    """Learning rate at 0-based `step`: linear warm-up to max_lr over `warmup_steps`, then cosine
    decay to min_lr at `max_steps`, then min_lr.

    Warm-up matters for Adam: its first steps divide by a poorly estimated v, so steps are large.
    """
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)  # 0 -> 1
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
