"""Before/after of whole training steps in one process: this checkout against another commit.

    python benchmarks/ab_train.py --before f2fef47                       # tiny, bpe, small
    python benchmarks/ab_train.py --before f2fef47 --configs tiny --rounds 20 --steps 8

On a shared 2-core machine two processes run minutes apart can differ by 20 % or more, which
buries a change worth a few percent. Here both versions live in one process and take turns:
the other commit's `nanotransformer/` is exported (`git archive`) into a temporary directory
under another package name (its imports are relative, so it loads as an independent copy, with
its own Numba kernels and on-disk cache), both build the same GPT of a `bench_train.py` config
on backend auto with the same seed, and blocks of `--steps` training steps alternate for
`--rounds` rounds, the order reversed every other round. Prints the median step time of each,
the ratio before / after (> 1: this checkout is faster), the per-round ratios as the spread, and
whether the two models' parameters are still bit-identical at the end (a change that claims the
same bits must keep them). The exported package is kept (`export_dir`) with its on-disk kernel
cache, so a second run loads the other commit's kernels instead of compiling them.

Compare bits on a second run, not the first: a kernel compiled in a process where the helpers it
inlines (jit.exp, ...) were compiled too can differ in the last bits from the same kernel
compiled where they came from the on-disk cache (seen on the fused attention and the
cross-entropy backward, about 1e-8; a Numba cache effect, the same on main before issue 17's
changes). Both builds then stay as they are, so a second run compares cached with cached.

Threads: the constants come from bench_train.py, which imports PyTorch first when it is
installed, so both versions then run on PyTorch's OpenMP runtime and its thread-wait policy
(kernels/jit.py, SPIN_COUNT), as in bench_train.py; both alike. The kept export's kernel cache is
beside it only if that directory is private to you (kernels/jit.py, `cache_dir`); otherwise
wherever NUMBA_CACHE_DIR points.

Does not: run PyTorch (bench_train.py does), compare anything but backend auto, or compare a
commit whose GPT / AdamW interfaces differ from this checkout's (it then stops with their error).
"""
import argparse
import importlib
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # this checkout's package, whatever is installed
from bench_train import BETAS, CONFIGS, EPS, LR, WD  # noqa: E402  (imports torch first when installed, as there)
OTHER = "nanotransformer_before"  # the package name the other commit is imported under


def export_dir(sha):
    """Where commit `sha`'s package is kept between runs (so that its kernels are compiled once):
    $XDG_CACHE_HOME/nanotransformer/ab_train/<sha> (~/.cache/... if unset)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    return base / "nanotransformer" / "ab_train" / sha


def import_commit(rev):
    """The package of commit `rev`, exported once (export_dir) and imported as OTHER."""
    try:
        sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", rev + "^{commit}"],
                             capture_output=True, text=True).stdout.strip()  # fmt: skip
    except OSError as e:  # no git
        sys.exit(f"--before: cannot run git ({e})")
    if not sha:
        sys.exit(f"--before: expected a commit of {ROOT}, got {rev!r}")
    where = export_dir(sha)
    if not (where / OTHER).is_dir():
        where.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", sha, "nanotransformer"], capture_output=True)
        if archive.returncode:
            sys.exit(f"--before: commit {rev} has no nanotransformer/ to compare ({archive.stderr.decode().strip()})")
        (where / "src.tar").write_bytes(archive.stdout)
        with tarfile.open(where / "src.tar") as t:
            t.extractall(where / "tmp", filter="data")
        (where / "tmp" / "nanotransformer").rename(where / OTHER)  # complete, or not there at all
    sys.path.insert(0, str(where))
    return importlib.import_module(OTHER)


def trainer(pkg, cfg, ids, targets):
    """One training step (forward, backward, AdamW) of pkg's GPT on a fixed batch, and the model."""
    model_mod, optim_mod = importlib.import_module(pkg + ".model"), importlib.import_module(pkg + ".optim")
    model = model_mod.GPT(model_mod.GPTConfig(backend="auto", **{k: v for k, v in cfg.items() if k != "B"}),
                          dtype=np.float32, seed=0)  # fmt: skip
    opt = optim_mod.AdamW(model, betas=BETAS, eps=EPS, weight_decay=WD)

    def step():
        model.forward(ids, targets, train=True)
        model.backward()
        opt.step(lr=LR)

    return step, model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True, help="the commit to compare against (any git revision)")
    ap.add_argument("--configs", default="tiny,bpe,small", help="comma-separated subset of " + ",".join(CONFIGS))
    ap.add_argument("--rounds", type=int, default=12, help="blocks per version, taken in turns")
    ap.add_argument("--steps", type=int, default=3, help="training steps per block")
    args = ap.parse_args(argv)
    names = [c for c in args.configs.split(",") if c]
    if not names:
        ap.error(f"--configs: expected some of {list(CONFIGS)}, got {args.configs!r}")
    for c in names:
        if c not in CONFIGS:
            ap.error(f"--configs: unknown config {c!r}, expected some of {list(CONFIGS)}")
    if args.rounds < 2 or args.steps < 1:
        ap.error(f"--rounds: expected at least 2 and --steps at least 1, got {args.rounds} and {args.steps}")
    import nanotransformer

    if Path(nanotransformer.__file__).resolve().parents[1] != ROOT:
        sys.exit(f"ab_train.py: 'nanotransformer' resolves to {nanotransformer.__file__}, not to this checkout {ROOT}")
    import_commit(args.before)
    for name in names:
        cfg = CONFIGS[name]
        rng = np.random.default_rng(0)
        ids = rng.integers(0, cfg["vocab_size"], (cfg["B"], cfg["block_size"]))
        targets = rng.integers(0, cfg["vocab_size"], ids.shape)
        runs = {"before": trainer(OTHER, cfg, ids, targets), "after": trainer("nanotransformer", cfg, ids, targets)}
        for step, _ in runs.values():  # compile or load the kernels, warm the allocator
            for _ in range(2):
                step()
        times = {k: [] for k in runs}
        for r in range(args.rounds):
            for k in (("before", "after") if r % 2 == 0 else ("after", "before")):
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    runs[k][0]()
                times[k].append((time.perf_counter() - t0) / args.steps)
        b, a = np.array(times["before"]), np.array(times["after"])
        same = all(np.array_equal(runs["before"][1].p[k], runs["after"][1].p[k]) for k in runs["after"][1].p)
        print(f"{name:6s} before {np.median(b) * 1e3:7.1f} ms  after {np.median(a) * 1e3:7.1f} ms  "
              f"before/after {np.median(b) / np.median(a):.3f} (rounds {np.min(b / a):.2f}-{np.max(b / a):.2f})  "
              f"parameters {'bit-identical' if same else 'differ'}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
