"""Per-op speed of the NumPy reference vs the Numba kernels, at the shapes of the training configs.

    python benchmarks/bench_kernels.py                       # everything, ~2-4 minutes
    python benchmarks/bench_kernels.py --configs tiny --repeat 3 --no-compile

Prints, in one run:
  1. forward + backward time of every op pair on both backends, per training config, and the
     faster one (the evidence behind `backend.AUTO`, the "auto" default);
  2. matmul GFLOP/s: np.matmul (BLAS) vs our tiled Numba matmul, at 512^2, 1024^2 and the
     linear layers' shapes;
  3. the fused attention's forward + backward speed-up over the NumPy reference at T = 256;
  3b. what the separate RoPE kernel costs next to the attention it feeds, at the configs' shapes
     (the most that fusing RoPE into the attention kernel's load of q and k could save);
  4. first-call (JIT compile) time with a cold cache and with a warm one (`cache=True`).

Timing: the candidates take turns in blocks (0.2 s of untimed warm-up calls, then 3 timed calls;
see `round_robin` for why) for `--repeat` rounds, so that load from other processes hits both
alike; we report the median (and the best). Ratios are numpy / numba time, so > 1 means Numba
is faster.

Does not: need PyTorch (bench_train.py compares against it) or ../shared.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numba
import numpy as np

from nanotransformer import attention as A
from nanotransformer import kernels as K
from nanotransformer import layers as L
from nanotransformer import optim as O
from nanotransformer.backend import keep_freed_memory
from nanotransformer.kernels import attention as KA

CONFIGS = {  # L layers, C d_model, NH heads, T context, B batch, V vocab (as bench_train.py)
    "tiny": dict(L=4, C=128, NH=4, T=64, B=16, V=65),
    "small": dict(L=6, C=384, NH=6, T=256, B=8, V=65),
    "bpe": dict(L=4, C=256, NH=4, T=128, B=8, V=4096),
}


def round_robin(fns, repeat, block=3, warm=0.2):
    """{name: fn} -> {name: (median_s, best_s)} over `repeat` rounds in which the candidates take
    turns, each running untimed for `warm` seconds (at least one call) and then `block` timed calls.

    Why not strict alternation (a, b, a, b): on this 2-core VM a kernel timed right after the
    other library's calls runs up to 2x slower for the next ~0.1 s (OpenBLAS's threads spin for a
    while after a call, and Numba's pool, whose idle threads sleep after a short spin, takes as
    long to get back to full speed): we would be timing the hand-over, not the kernel. A training
    step alternated the two libraries too, which is why the per-op choice is checked against whole
    steps (bench_train.py). The rounds still interleave the candidates, so slow drifts in the machine's
    load hit both alike.
    """
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t_end = time.perf_counter() + warm
            fn()
            while time.perf_counter() < t_end:
                fn()
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {name: (float(np.median(ts)), float(np.min(ts))) for name, ts in times.items()}


def n_params(c):
    C, V, T, Lyr = c["C"], c["V"], c["T"], c["L"]
    return V * C + T * C + Lyr * (12 * C * C + 13 * C) + 2 * C


# ----------------------------------------------------------------------------- 1. op pairs


def op_pairs(c, rng):
    """{op: {backend: fn}} running forward + backward of the op at config c's shapes (float32)."""
    B, T, C, NH, V = c["B"], c["T"], c["C"], c["NH"], c["V"]
    f32 = np.float32

    def r(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(f32)

    x = r(B, T, C)
    lins = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)]  # qkv, attn proj, fc, mlp proj
    lin_args = [(r(B, T, ci), r(ci, co, scale=ci**-0.5), r(co), r(B, T, co)) for ci, co in lins]
    head = (r(B, T, C), r(C, V, scale=C**-0.5), None, r(B, T, V))
    hs = C // NH
    q, k, v, dy = (r(B, NH, T, hs) for _ in range(4))
    q_view, k_view = (A.split_heads(t, NH) for t in np.split(r(B, T, 3 * C), 3, axis=-1)[:2])  # as the model hands them
    w_ln, b_ln = r(C), r(C)
    u = r(B, T, 4 * C)
    logits = r(B, T, V, scale=2.0)
    targets = rng.integers(0, V, size=(B, T))
    wte = r(V, C)
    n = n_params(c)
    p, g, mm, vv = r(n), r(n), r(n), np.abs(r(n))
    wd = (rng.random(n) < 0.9).astype(f32) * f32(0.1)

    def pair(fwd, bwd, args, dout, kwargs=None):
        def run():
            out, cache = fwd(*args, **(kwargs or {}))
            bwd(dout if dout is not None else np.ones_like(out), cache)

        return run

    def linear_all(fwd, bwd):
        runs = [pair(fwd, bwd, a[:3], a[3]) for a in lin_args] + [pair(fwd, bwd, head[:3], head[3])]
        return lambda: [run() for run in runs]

    def rope_qk(fwd, bwd):
        runs = [pair(fwd, bwd, (t, 10000.0, 0), dy) for t in (q_view, k_view)]
        return lambda: [run() for run in runs]

    qkv, y_heads = r(B, T, 3 * C), r(B, NH, T, hs)

    def heads(split, merge, contiguous):
        """One attention layer's head layout, as the Numba attention kernel needs it (C-contiguous
        heads): split q, k, v and merge y; split dy and merge dq, dk, dv."""
        def run():
            qkv_heads = [contiguous(t) for t in split(qkv, (NH, NH, NH))]
            merge(y_heads)
            contiguous(split(x, NH))
            merge(*qkv_heads)

        return run

    def ce(fwd, bwd):
        def run():
            loss, cache = fwd(logits, targets)
            bwd(f32(1.0), cache)

        return run

    return {
        "linear (4 per block + head)": {
            "numpy": linear_all(L.linear_forward, L.linear_backward),
            "numba": linear_all(K.linear_forward, K.linear_backward),
        },
        "attention": {
            "numpy": pair(A.attention_forward, A.attention_backward, (q, k, v), dy, {"causal": True}),
            "numba": pair(KA.attention_forward, KA.attention_backward, (q, k, v), dy, {"causal": True}),
        },
        "layernorm": {
            "numpy": pair(L.layernorm_forward, L.layernorm_backward, (x, w_ln, b_ln), x),
            "numba": pair(K.layernorm_forward, K.layernorm_backward, (x, w_ln, b_ln), x),
        },
        "rmsnorm": {
            "numpy": pair(L.rmsnorm_forward, L.rmsnorm_backward, (x, w_ln), x),
            "numba": pair(K.rmsnorm_forward, K.rmsnorm_backward, (x, w_ln), x),
        },
        "rope (q and k)": {
            "numpy": rope_qk(A.rope_forward, A.rope_backward),
            "numba": rope_qk(K.rope_forward, K.rope_backward),
        },
        "gelu": {
            "numpy": pair(L.gelu_forward, L.gelu_backward, (u,), u),
            "numba": pair(K.gelu_forward, K.gelu_backward, (u,), u),
        },
        "cross_entropy": {
            "numpy": ce(L.cross_entropy_forward, L.cross_entropy_backward),
            "numba": ce(K.cross_entropy_forward, K.cross_entropy_backward),
        },
        "embedding": {  # the lookup and its scatter-add
            "numpy": pair(L.embedding_forward, L.embedding_backward, (targets, wte), x),
            "numba": pair(K.embedding_forward, K.embedding_backward, (targets, wte), x),
        },
        "split/merge heads": {  # NumPy: views, copied where the kernel needs them (as before issue 17's heads.py)
            "numpy": heads(A.split_heads, A.merge_heads, np.ascontiguousarray),
            "numba": heads(K.split_heads, K.merge_heads, lambda t: t),
        },
        "adamw_update": {
            "numpy": lambda: O.adamw_update(p, g, mm, vv, 10, 1e-4, 0.9, 0.99, 1e-8, wd),
            "numba": lambda: K.adamw_update(p, g, mm, vv, 10, 1e-4, 0.9, 0.99, 1e-8, wd),
        },
    }


def bench_ops(configs, repeat, rng):
    print("\n## 1. Op pairs, forward + backward, float32 (ms: median of the timed calls)\n")
    print(f"{'op':<28}{'config':<7}{'numpy':>10}{'numba':>10}{'numpy/numba':>13}  faster")
    totals = {}
    for cname in configs:
        for op, fns in op_pairs(CONFIGS[cname], rng).items():
            res = round_robin(fns, repeat)
            t_np, t_nb = res["numpy"][0], res["numba"][0]
            totals.setdefault(op, [0.0, 0.0])
            totals[op][0] += t_np
            totals[op][1] += t_nb
            faster = "numba" if t_nb < t_np else "numpy"
            print(f"{op:<28}{cname:<7}{t_np * 1e3:>10.2f}{t_nb * 1e3:>10.2f}{t_np / t_nb:>12.2f}x  {faster}")
    print("\nauto decision (summed over the configs run):")
    for op, (t_np, t_nb) in totals.items():
        print(f"  {op:<28} numpy/numba = {t_np / t_nb:5.2f}x -> {'numba' if t_nb < t_np else 'numpy'}")


# ----------------------------------------------------------------------------- 2. matmul


def bench_matmul(repeat, rng):
    print("\n## 2. Matmul, float32 GFLOP/s (np.matmul = OpenBLAS sgemm; numba = kernels.matmul)\n")
    print(f"{'M x K x N':<22}{'np.matmul':>11}{'numba':>9}{'numba/np':>10}")
    shapes = [(512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048)]
    shapes += [(1024, 128, 384), (2048, 384, 1536), (2048, 1536, 384), (1024, 256, 4096), (384, 2048, 1536)]
    peak = 0.0
    for M, Kd, N in shapes:
        a = rng.standard_normal((M, Kd)).astype(np.float32)
        b = rng.standard_normal((Kd, N)).astype(np.float32)
        reps = repeat if M * Kd * N <= 2048**3 // 8 else max(2, repeat // 2)
        res = round_robin({"np": lambda: a @ b, "nb": lambda: K.matmul(a, b)}, reps)
        fl = 2.0 * M * Kd * N
        g_np, g_nb = fl / res["np"][0] / 1e9, fl / res["nb"][0] / 1e9
        peak = max(peak, fl / res["np"][1] / 1e9)
        print(f"{f'{M}x{Kd}x{N}':<22}{g_np:>11.1f}{g_nb:>9.1f}{g_nb / g_np:>9.0%}")
    print(f"\nsgemm peak (best np.matmul above): {peak:.1f} GFLOP/s")
    return peak


# ----------------------------------------------------------------------------- 3. attention


def bench_attention(repeat, rng):
    print("\n## 3. Causal attention forward + backward, float32 (ms)\n")
    print(f"{'B, NH, T, hs':<20}{'numpy':>10}{'numba':>10}{'numpy/numba':>13}")
    for B, NH, T, hs in [(16, 4, 64, 32), (8, 4, 128, 64), (8, 6, 256, 64), (2, 4, 1024, 64)]:
        q, k, v, dy = (rng.standard_normal((B, NH, T, hs)).astype(np.float32) for _ in range(4))

        def run(mod):
            out, cache = mod.attention_forward(q, k, v, causal=True)
            mod.attention_backward(dy, cache)

        res = round_robin({"numpy": lambda: run(A), "numba": lambda: run(KA)}, repeat)
        t_np, t_nb = res["numpy"][0], res["numba"][0]
        print(f"{f'{B}, {NH}, {T}, {hs}':<20}{t_np * 1e3:>10.2f}{t_nb * 1e3:>10.2f}{t_np / t_nb:>12.2f}x")


def bench_rope_vs_attention(configs, repeat, rng):
    """RoPE as a separate kernel (rope.py) against the attention it feeds, the most that fusing it
    into the attention kernel's load of q and k could save. Per config, Numba, on split_heads views
    of q, k, v as the model hands them: the causal attention forward + backward (its wrapper copies
    the views to contiguous arrays), the RoPE forward + backward of q and k, and the copy of q and
    k to contiguous arrays. RoPE reads the views in place and hands attention contiguous q and k,
    so the attention wrapper's copy of them goes away: the marginal cost of RoPE is about rope -
    copies. (Timing the chain rope -> attention -> backward against attention alone measures the
    same thing in principle, but on this 2-core box attention swings by +-20 % from block to
    block, more than RoPE's whole cost.) Run with glibc told to keep freed memory
    (`backend.keep_freed_memory`, which the model's `get_ops` sets), so that fresh (B, NH, T, hs)
    arrays are not page-faulted in on every call; this section runs after the op and attention
    sections, which keep measuring with glibc's defaults as before."""
    keep_freed_memory()
    print("\n## 3b. Separate RoPE kernel vs the attention it feeds, Numba, float32, fwd + bwd (ms: median / best)\n")
    print(f"{'config':<8}{'attention':>15}{'rope q,k':>15}{'copy q,k':>15}{'rope/att':>15}{'(rope-copy)/att':>18}")
    for cname in configs:
        c = CONFIGS[cname]
        B, T, C, NH = c["B"], c["T"], c["C"], c["NH"]
        q, k, v = (A.split_heads(t, NH) for t in np.split(rng.standard_normal((B, T, 3 * C)).astype(np.float32), 3, -1))
        dy = rng.standard_normal(q.shape).astype(np.float32)

        def att():
            out, cache = KA.attention_forward(q, k, v, causal=True)
            KA.attention_backward(dy, cache)

        def rope():
            for t in (q, k):
                out, cache = K.rope_forward(t, 10000.0, 0)
                K.rope_backward(dy, cache)

        res = round_robin({"att": att, "rope": rope, "copy": lambda: (np.ascontiguousarray(q), np.ascontiguousarray(k))}, repeat)
        (a, a_), (r, r_), (cp, cp_) = ((res[n][0] * 1e3, res[n][1] * 1e3) for n in ("att", "rope", "copy"))
        print(f"{cname:<8}{f'{a:.2f} / {a_:.2f}':>15}{f'{r:.3f} / {r_:.3f}':>15}{f'{cp:.3f} / {cp_:.3f}':>15}"
              f"{f'{r / a:.1%} / {r_ / a_:.1%}':>15}{f'{(r - cp) / a:.1%} / {(r_ - cp_) / a_:.1%}':>18}")


# ----------------------------------------------------------------------------- 4. compile time

_FIRST_CALLS = r"""
import time, numpy as np
t0 = time.perf_counter()
from nanotransformer import kernels as K
from nanotransformer.kernels import attention as KA, jit
t_import = time.perf_counter() - t0
rng = np.random.default_rng(0)
f = lambda *s: rng.standard_normal(s).astype(np.float32)
def calls():
    out, c = K.linear_forward(f(2, 3, 8), f(8, 4), f(4)); K.linear_backward(out, c)
    out, c = K.layernorm_forward(f(2, 3, 8), f(8), f(8)); K.layernorm_backward(out, c)
    out, c = K.rmsnorm_forward(f(2, 3, 8), f(8)); K.rmsnorm_backward(out, c)
    out, c = K.rope_forward(f(2, 2, 3, 4)); K.rope_backward(out, c)
    out, c = K.gelu_forward(f(2, 3, 8)); K.gelu_backward(out, c)
    out, c = K.cross_entropy_forward(f(2, 3, 5), np.zeros((2, 3), np.int64)); K.cross_entropy_backward(np.float32(1), c)
    out, c = K.embedding_forward(np.array([[0, 2, 0]]), f(3, 8)); K.embedding_backward(out, c)
    out, c = KA.attention_forward(f(2, 2, 3, 4), f(2, 2, 3, 4), f(2, 2, 3, 4), causal=True); KA.attention_backward(out, c)
    p = f(10); K.adamw_update(p, f(10), np.zeros_like(p), np.zeros_like(p), 1, 1e-3, weight_decay=np.ones_like(p))
times = []
for serial_below in (0, 1 << 62):  # the threaded builds (training), then the serial ones (decoding)
    jit.SERIAL_BELOW = serial_below
    t0 = time.perf_counter()
    calls()
    times.append(time.perf_counter() - t0)
print(f"{t_import:.3f} {times[0]:.3f} {times[1]:.3f}")
"""


def bench_compile():
    print("\n## 4. First call of every float32 kernel (JIT compile or cache load), in a fresh process\n")
    with tempfile.TemporaryDirectory() as cache_dir:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
        for label in ("cold cache (compiles)", "warm cache (loads)"):
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", _FIRST_CALLS], env=env, capture_output=True, text=True, check=True)
            wall = time.perf_counter() - t0
            t_import, t_threaded, t_serial = map(float, out.stdout.split())
            print(f"{label:<24} threaded builds {t_threaded:6.2f} s, serial builds {t_serial:6.2f} s"
                  f"   (import {t_import:.2f} s, whole process {wall:.2f} s)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default="tiny,small,bpe", help="comma-separated subset of " + ",".join(CONFIGS))
    ap.add_argument("--repeat", type=int, default=5, help="rounds per measurement (3 timed calls each)")
    ap.add_argument("--no-compile", action="store_true", help="skip the cold/warm compile-time measurement")
    ap.add_argument("--only", default="ops,matmul,attention,rope,compile", help="sections to run")
    args = ap.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    for c in configs:
        if c not in CONFIGS:
            ap.error(f"--configs: unknown config {c!r}, expected some of {list(CONFIGS)}")
    only = set(args.only.split(","))
    rng = np.random.default_rng(0)
    print(f"# bench_kernels: numba threads {K.num_threads()} ({numba.config.THREADING_LAYER}), numpy {np.__version__}, "
          f"cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} (other processes skew every figure)")
    if "ops" in only:
        bench_ops(configs, args.repeat, rng)
    if "matmul" in only:
        bench_matmul(args.repeat, rng)
    if "attention" in only:
        bench_attention(args.repeat, rng)
    if "rope" in only:
        bench_rope_vs_attention(configs, args.repeat, rng)
    if "compile" in only and not args.no_compile:
        bench_compile()
    print(f"\n# load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
