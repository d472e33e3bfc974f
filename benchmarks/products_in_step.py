"""Each matrix product of a real training step, timed where it runs: GFLOP/s per shape.

    python benchmarks/products_in_step.py                 # small, 5 steps
    python benchmarks/products_in_step.py --config tiny --steps 20

A product timed alone runs on warm operands, with nothing between calls. Inside a training step,
attention, the norms and the optimiser run between products, and the operands come from farther
caches. This script times every `kernels.linear._product` call of `bench_train.py` steps on
backend auto. It prints the share of the step spent in products, then one line per (A shape,
B shape, layout), slowest first, with its GFLOP/s (benchmarks/README.md, "Where the products'
time goes"). "A.T" means A is a transposed view (dW = x.T @ dout); "B.T" means B is one
(dx = dout @ w.T, the tied head).

Does not: time PyTorch (bench_train.py does), or see products that bypass `_product`
(attention's own tiles, the int8 kernel).
"""
import argparse
import collections
import time

import numpy as np
from bench_train import CONFIGS, our_step_fn

from nanotransformer.kernels import linear


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="small", help="one of " + ", ".join(CONFIGS))
    ap.add_argument("--steps", type=int, default=5, help="timed training steps (after 3 untimed)")
    args = ap.parse_args(argv)
    if args.config not in CONFIGS:
        ap.error(f"--config: unknown config {args.config!r}, expected one of {list(CONFIGS)}")
    if args.steps < 1:
        ap.error(f"--steps: expected at least 1, got {args.steps}")
    cfg = CONFIGS[args.config]
    ids = np.random.default_rng(0).integers(0, cfg["vocab_size"], size=(cfg["B"], cfg["block_size"]))
    step, _ = our_step_fn(cfg, "auto", ids, ids)

    product = linear._product
    seconds, calls = collections.Counter(), collections.Counter()

    def timed(A, B, **kw):
        t0 = time.perf_counter()
        out = product(A, B, **kw)
        key = (A.shape, B.shape, "A.T" * (not A.flags.c_contiguous) + " B.T" * (not B.flags.c_contiguous))
        seconds[key] += time.perf_counter() - t0
        calls[key] += 1
        return out

    for _ in range(3):  # compiled and warm before anything is timed
        step()
    linear._product = timed
    try:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        total = (time.perf_counter() - t0) / args.steps
    finally:
        linear._product = product
    in_products = sum(seconds.values()) / args.steps
    print(f"# {args.config}: step {total * 1e3:.1f} ms, of which products {in_products * 1e3:.1f} ms "
          f"({in_products / total:.0%}), {args.steps} steps")
    print(f"{'A':>14} {'B':>14} {'layout':>8} {'calls/step':>10} {'ms/step':>8} {'GFLOP/s':>8}")
    for key, s in seconds.most_common():
        (m, k), (_, n), layout = key
        print(f"{str((m, k)):>14} {str((k, n)):>14} {layout.strip() or '-':>8} {calls[key] // args.steps:>10} "
              f"{s / args.steps * 1e3:>8.1f} {2 * m * k * n * calls[key] / s / 1e9:>8.0f}")


if __name__ == "__main__":
    main()
