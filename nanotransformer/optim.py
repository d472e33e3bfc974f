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
a single pass); `AdamW` accepts either one flat array or a list of arrays updated in place.

Does not: keep fp32 master copies of lower-precision weights, or use fused Numba updates
(`kernels.adamw_update_nb` is the fast twin of `adamw_update`).
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
    """AdamW over a list of parameter arrays (or one flat buffer), updated in place.

        opt = AdamW([w, b], lr=3e-4, weight_decay=0.1)
        opt.step([dw, db])            # or opt.step(grads, lr=schedule(step))

    weight_decay: scalar, or one value/array per parameter (`decay` list) so biases can be exempt.
    decoupled=False gives classic Adam with L2 regularisation (see `Adam`).
    State: `m`, `v` (same shapes as the params) and `t` (steps taken) — saved in checkpoints.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, decoupled=True):
        self.params = [params] if isinstance(params, np.ndarray) else list(params)
        for i, p in enumerate(self.params):
            check_array(f"params[{i}]", p, floating=True)
        self.lr, self.betas, self.eps = lr, tuple(betas), eps
        self.weight_decay, self.decoupled = weight_decay, decoupled
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.t = 0

    def step(self, grads, lr=None):
        grads = [grads] if isinstance(grads, np.ndarray) else list(grads)
        if len(grads) != len(self.params):
            raise ValueError(f"grads: expected {len(self.params)} arrays, got {len(grads)}")
        for i, (p, g) in enumerate(zip(self.params, grads)):
            check_array(f"grads[{i}]", g, shape=p.shape)
        self.t += 1
        wds = self.weight_decay if isinstance(self.weight_decay, (list, tuple)) else [self.weight_decay] * len(grads)
        for p, g, m, v, wd in zip(self.params, grads, self.m, self.v, wds):
            adamw_update(p, g, m, v, self.t, self.lr if lr is None else lr, *self.betas, self.eps, wd, self.decoupled)


class Adam(AdamW):
    """Adam with (coupled) L2 weight decay, as torch.optim.Adam. Default weight_decay = 0."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr, betas, eps, weight_decay, decoupled=False)


def clip_grad_norm(grads, max_norm):
    """Scale gradients in place so their global L2 norm is at most max_norm. Returns the norm
    before clipping (log it: spikes show instability before the loss does).

    grads: one array or a list of arrays (the norm is taken over all of them together).
    """
    grads = [grads] if isinstance(grads, np.ndarray) else list(grads)
    total = math.sqrt(sum(float(np.dot(g.reshape(-1).astype(np.float64), g.reshape(-1))) for g in grads))
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
