"""Training speed (forward + backward + AdamW) of our numpy, numba and auto backends and, when
installed, a PyTorch CPU eager GPT of identical architecture; plus KV-cache generation speed and
model FLOPs utilisation.

    python benchmarks/bench_train.py                               # tiny, small, bpe
    python benchmarks/bench_train.py --configs tiny --steps 5 --rounds 3 --no-torch

Configs (L layers, d model width, heads, T context, B batch, V vocab):
    tiny   L=4 d=128 heads=4 T=64  B=16 V=65
    small  L=6 d=384 heads=6 T=256 B=8  V=65
    bpe    L=4 d=256 heads=4 T=128 B=8  V=4096

Method: float32, random token batches, weights from the same seed. Each backend runs a block of
`--steps` timed steps after `--warm` seconds of untimed ones (so the previous library's idle
threads have stopped competing and this one's are awake: steady-state training, not the hand-over),
the backends take turns for `--rounds` rounds, and we report tokens/s from the median step.
Ratios are within this run.
PyTorch uses torch.set_num_threads(2), nn.Linear/LayerNorm/GELU(tanh), the causal
F.scaled_dot_product_attention (as nanoGPT), a tied LM head and torch.optim.AdamW with weight
decay on 2-D weights only, like ours.

MFU = achieved model FLOP/s / the sgemm peak measured here (best np.matmul, 2048^3, float32);
model FLOPs per token = 6 N + 12 L T d (the PaLM estimate: forward + backward of every weight,
plus the attention scores, counted without the causal half).

Does not: need PyTorch (its column is skipped) or ../shared.
"""
import argparse
import os
import sys
import time

import numpy as np

# PyTorch before our kernels, so that its OpenMP runtime (its own libgomp) starts with the
# environment this process was given: PyTorch at its own settings. Numba's kernels then run on that
# same runtime (they bind to the libgomp loaded first), so here both wait with the policy it read,
# by default libgomp's 300,000 spins (~7 ms), not kernels/jit.py's GOMP_SPINCOUNT
# (benchmarks/README.md, "Threads that wait briefly": our steps measured the same at either).
START_ENV = {v: os.environ.get(v) for v in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
try:
    import torch  # noqa: F401
except ImportError:
    pass

from nanotransformer.backend import get_ops
from nanotransformer.generation import generate_ids
from nanotransformer.model import GPT, GPTConfig
from nanotransformer.optim import AdamW

from bench_kernels import round_robin  # the script's own directory, benchmarks/, is on sys.path

CONFIGS = {
    "tiny": dict(n_layer=4, d_model=128, n_head=4, block_size=64, B=16, vocab_size=65),
    "small": dict(n_layer=6, d_model=384, n_head=6, block_size=256, B=8, vocab_size=65),
    "bpe": dict(n_layer=4, d_model=256, n_head=4, block_size=128, B=8, vocab_size=4096),
}
LR, BETAS, EPS, WD = 3e-4, (0.9, 0.99), 1e-8, 0.1


def sgemm_peak(n=2048, repeat=5):
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(repeat))
    return 2.0 * n**3 / best / 1e9


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- ours


def our_step_fn(cfg, backend, ids, targets):
    model_cfg = {k: v for k, v in cfg.items() if k != "B"}
    model = GPT(GPTConfig(backend=backend, **model_cfg), dtype=np.float32, seed=0)
    opt = AdamW(model, betas=BETAS, eps=EPS, weight_decay=WD)

    def step():
        model.forward(ids, targets, train=True)
        model.backward()
        opt.step(lr=LR)

    return step, model


def gen_tokens_per_s(cfg, backend, n_new=100):
    """Greedy decoding with the KV cache, batch 1, from a 1-token prompt. block_size is raised to
    128 if needed so 100 new tokens fit without cropping."""
    model_cfg = {k: v for k, v in cfg.items() if k != "B"}
    model_cfg["block_size"] = max(model_cfg["block_size"], n_new + 1)
    model = GPT(GPTConfig(backend=backend, **model_cfg), dtype=np.float32, seed=0)
    prompt = np.array([1], dtype=np.int64)
    generate_ids(model, prompt, 5, temperature=0.0, use_cache=True)  # warm-up
    best = min(_timed(lambda: generate_ids(model, prompt, n_new, temperature=0.0, use_cache=True)) for _ in range(3))
    return n_new / best


# ----------------------------------------------------------------------------- PyTorch


def torch_step_fn(cfg, ids, targets):
    import torch

    model, opt = torch_gpt(cfg, LR, WD)
    x, y = torch.from_numpy(ids), torch.from_numpy(targets)

    def step():
        opt.zero_grad(set_to_none=True)
        model(x, y).backward()
        opt.step()

    return step, torch.__version__


def torch_gpt(cfg, lr, weight_decay, seed=0, decay_wpe=False):
    """The PyTorch GPT of `cfg` (our GPT-2 architecture, tied head, dropout 0) and its AdamW (decay
    on the 2-D weights only; the position table too with decay_wpe, as ours and nanoGPT do)
    -> (model, optimizer); model(idx, targets) -> mean loss."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(2)
    torch.manual_seed(seed)
    C, NH, T, V, L = cfg["d_model"], cfg["n_head"], cfg["block_size"], cfg["vocab_size"], cfg["n_layer"]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.c_attn, self.attn_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x):
            B_, T_, _ = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B_, T_, NH, C // NH).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.attn_proj(y.transpose(1, 2).reshape(B_, T_, C))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class TorchGPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
            self.h = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(C)

        def forward(self, idx, tgt):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for block in self.h:
                x = block(x)
            logits = self.ln_f(x) @ self.wte.weight.T  # LM head tied to the embedding
            return F.cross_entropy(logits.view(-1, V), tgt.view(-1), ignore_index=-100)

    model = TorchGPT()
    decay = [p for p in model.parameters() if p.dim() == 2 and (decay_wpe or p is not model.wpe.weight)]
    no_decay = [p for p in model.parameters() if not any(p is q for q in decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=BETAS, eps=EPS)
    return model, opt


def have_torch():
    try:
        import torch  # noqa: F401

        return True
    except ImportError:
        return False


# ----------------------------------------------------------------------------- main


def bench_config(name, cfg, backends, use_torch, steps, rounds, warm, gen):
    B, T, V = cfg["B"], cfg["block_size"], cfg["vocab_size"]
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, size=(B, T))
    targets = rng.integers(0, V, size=(B, T))
    steps_fn, n_params = {}, None
    for be in backends:
        steps_fn[be], model = our_step_fn(cfg, be, ids, targets)
        n_params = model.num_params()
    torch_version = None
    if use_torch:
        steps_fn["torch"], torch_version = torch_step_fn(cfg, ids, targets)
    # turns of `warm` seconds of untimed steps, then `steps` timed ones (see round_robin for why)
    times = round_robin(steps_fn, rounds, block=steps, warm=warm)
    tok = {k: B * T / median for k, (median, _) in times.items()}
    flops_per_token = 6 * n_params + 12 * cfg["n_layer"] * T * cfg["d_model"]
    gen_tps = {be: gen_tokens_per_s(cfg, be) for be in backends} if gen else {}
    return tok, flops_per_token, n_params, gen_tps, torch_version


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default="tiny,small,bpe", help="comma-separated subset of " + ",".join(CONFIGS))
    ap.add_argument("--steps", type=int, default=3, help="timed steps per block")
    ap.add_argument("--rounds", type=int, default=3, help="blocks per backend, taken in turns")
    ap.add_argument("--warm", type=float, default=0.3, help="seconds of untimed steps before each block")
    ap.add_argument("--backends", default="numpy,numba,auto", help="our backends to run")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    ap.add_argument("--no-gen", action="store_true", help="skip the generation benchmark")
    args = ap.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    for c in configs:
        if c not in CONFIGS:
            ap.error(f"--configs: unknown config {c!r}, expected some of {list(CONFIGS)}")
    backends = [b for b in args.backends.split(",") if b]
    for b in backends:
        get_ops(b)  # validates the name (and imports the kernels) before timing anything
    use_torch = not args.no_torch and have_torch()
    peak = sgemm_peak()
    env = START_ENV if "torch" in sys.modules else {v: os.environ.get(v) for v in START_ENV}
    print(f"# bench_train: sgemm peak {peak:.1f} GFLOP/s (np.matmul 2048^3 float32), load average "
          f"{os.getloadavg()[0]:.1f}; auto = {get_ops('auto').choices}")
    shared = "; PyTorch's libgomp, loaded first, runs Numba's kernels too" if "torch" in sys.modules else ""
    print(f"# OpenMP threads wait with {env} (None: libgomp's default){shared}")
    if not use_torch:
        print("# PyTorch not installed (or --no-torch): its column is skipped")
    cols = backends + (["torch"] if use_torch else [])
    head = f"{'config':<7}{'params':>9}" + "".join(f"{c + ' tok/s':>14}" for c in cols)
    head += "".join(f"{c + '/numpy':>13}" for c in cols if c != "numpy" and "numpy" in cols)
    head += "".join(f"{c + '/torch':>13}" for c in backends if use_torch)
    head += "".join(f"{'MFU ' + c:>11}" for c in cols)
    print(head)
    gens = {}
    for name in configs:
        tok, fpt, n_params, gen_tps, tv = bench_config(
            name, CONFIGS[name], backends, use_torch, args.steps, args.rounds, args.warm, not args.no_gen
        )
        gens[name] = gen_tps
        row = f"{name:<7}{n_params / 1e6:>8.2f}M" + "".join(f"{tok[c]:>14.0f}" for c in cols)
        row += "".join(f"{tok[c] / tok['numpy']:>12.2f}x" for c in cols if c != "numpy" and "numpy" in cols)
        row += "".join(f"{tok[c] / tok['torch']:>12.2f}x" for c in backends if use_torch)
        row += "".join(f"{tok[c] * fpt / 1e9 / peak:>10.1%} " for c in cols)
        print(row, flush=True)
    if not args.no_gen:
        print("\nGeneration, KV cache, batch 1, 100 new tokens (greedy), tokens/s")
        for name, g in gens.items():
            print(f"{name:<7}" + "".join(f"  {be} {tps:8.1f}" for be, tps in g.items()))
    if use_torch:
        print(f"\n# torch {tv}, torch.get_num_threads() = 2")
    print(f"# load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
