"""Data parallelism on this machine: training tokens/s of one process with 2 threads against
`mpirun -n 2` ranks with 1 thread each (chapter 20), and how long the one Allreduce takes.

    python benchmarks/bench_distributed.py                     # the CLI's default GPT, 3 rounds
    python benchmarks/bench_distributed.py --steps 10 --rounds 2 --backend numpy

Config: the `nanotransformer train` default GPT (L=4, d=128, heads=4, T=64, vocab 72 of the
built-in corpus), global batch B=16, float32. Each run is a fresh process (or job) that takes
`--warm` untimed steps (Numba compiles or loads its cache; BLAS threads wake) and then `--steps`
timed ones through the one Trainer; the two set-ups take turns for `--rounds` rounds. We report
tokens/s per run (global tokens / the sum of the timed steps), the median and the spread, the
ratio of the medians, the time each rank spent inside the gradient Allreduce (after a barrier,
which times the wait for the slower rank apart), and the load average (1 min) before and after,
since the box is shared.

Does not: run on several machines (then the network, not shared memory, carries the all-reduce;
chapter 20's model), or need the [mpi] extra for the 1-process column (the 2-rank one is skipped
with a message without it).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def worker(a):
    """One run: warm-up, then timed steps; rank 0 prints one JSON line."""
    from nanotransformer.cli_tasks import MODEL_DEFAULTS
    from nanotransformer.data import TokenData, build_tokenizer, load_text
    from nanotransformer.model import GPT, GPTConfig
    from nanotransformer.train import Trainer, TrainConfig

    text, name = load_text(None)
    tok = build_tokenizer(text, "char")
    data = TokenData(tok.encode(text), 0.1, name)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, **MODEL_DEFAULTS["gpt"], backend=a.backend), seed=0)
    tr = Trainer(model, data, TrainConfig(batch_size=a.batch_size, max_steps=a.warm + a.steps, warmup=2), progress=False)
    w, reduce, spent = tr.world, tr.world.allreduce_sum, [0.0, 0.0]

    def timed_reduce(buf):  # a barrier first, so waiting for the slower rank is timed apart from the transfer
        t0 = time.perf_counter()
        if w.size > 1:
            w.comm.Barrier()
        t1 = time.perf_counter()
        out = reduce(buf)
        spent[0] += t1 - t0
        spent[1] += time.perf_counter() - t1
        return out

    w.allreduce_sum = timed_reduce
    for _ in range(a.warm):
        tr.train_step()
    spent[:], t0 = [0.0, 0.0], time.perf_counter()
    for _ in range(a.steps):
        tr.train_step()
    seconds = time.perf_counter() - t0
    every = w.allgather(list(spent))
    if w.is_root:
        tokens = a.steps * a.batch_size * model.config.block_size
        print(json.dumps({"tok_s": tokens / seconds, "step_ms": 1e3 * seconds / a.steps,
                          "wait_ms": [1e3 * s[0] / a.steps for s in every],
                          "allreduce_ms": [1e3 * s[1] / a.steps for s in every],
                          "grad_mb": 4 * (len(model.params) - model.frozen) / 1e6, "backend": model.ops.name}))


def run(setup, a):
    """A fresh process (1 x 2 threads) or job (2 ranks x 1 thread) -> the worker's JSON."""
    threads = "2" if setup == "1x2" else "1"
    env = {**{k: v for k, v in os.environ.items() if k not in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")},
           **{k: threads for k in THREAD_VARS}}
    cmd = [sys.executable, __file__, "--worker", "--steps", str(a.steps), "--warm", str(a.warm), "--batch-size",
           str(a.batch_size), "--backend", a.backend]
    if setup == "2x1":
        cmd = [a.mpirun, "-n", "2"] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode:
        raise SystemExit(f"{setup} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warm", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--backend", default="auto", choices=("auto", "numpy", "numba"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args(argv)
    if a.worker:
        return worker(a)
    a.mpirun = shutil.which("mpirun", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        a.mpirun = None
    setups = ["1x2"] + (["2x1"] if a.mpirun else [])
    if not a.mpirun:
        print("2 ranks x 1 thread: skipped (install the extra: pip install -e '.[mpi]')")
    load_before = os.getloadavg()[0]
    runs = {s: [] for s in setups}
    for k in range(a.rounds):
        for s in setups if k % 2 == 0 else setups[::-1]:  # alternate who goes first
            runs[s].append(run(s, a))
            print(f"round {k + 1} {s}: {runs[s][-1]['tok_s']:,.0f} tok/s", flush=True)
    load_after = os.getloadavg()[0]
    print(f"\nGPT L=4 d=128 T=64, global batch {a.batch_size}, backend {runs['1x2'][0]['backend']}, "
          f"{a.steps} timed steps per run, {a.rounds} rounds; load average {load_before:.2f} before, "
          f"{load_after:.2f} after (2 cores)")
    med = {}
    for s in setups:
        t = [r["tok_s"] for r in runs[s]]
        med[s] = statistics.median(t)
        label = "1 process x 2 threads" if s == "1x2" else "2 ranks x 1 thread "
        print(f"  {label}: median {med[s]:,.0f} tok/s (runs {', '.join(f'{x:,.0f}' for x in t)}; spread "
              f"{(max(t) - min(t)) / med[s]:.0%} of the median), {statistics.median(r['step_ms'] for r in runs[s]):.1f} ms/step")
    if "2x1" in med:
        ar = [ms for r in runs["2x1"] for ms in r["allreduce_ms"]]
        wait = [ms for r in runs["2x1"] for ms in r["wait_ms"]]
        step = statistics.median(r["step_ms"] for r in runs["2x1"])
        print(f"  ratio 2 ranks / 1 process: {med['2x1'] / med['1x2']:.2f}")
        print(f"  Allreduce of the {runs['2x1'][0]['grad_mb']:.2f} MB gradient: median {statistics.median(ar):.2f} ms "
              f"per step per rank ({statistics.median(ar) / step:.1%} of a step), after a barrier where a rank "
              f"waited {statistics.median(wait):.2f} ms for the slower one (median)")
    if a.json:
        Path(a.json).write_text(json.dumps({"runs": runs, "load": [load_before, load_after], "args": vars(a)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
