"""What the wall-clock-budget benchmarks share (quality_shakespeare.py, make_pretrained.py,
gpt2_vs_llama.py): a learning rate that follows warm-up + cosine over *time* instead of steps, so
a run's schedule ends annealed at its deadline however loaded the shared machine is; and, for the
two that train one character-level GPT on tinyshakespeare, their flags, set-up and loop.
"""
import math
import os
import time


def lr_by_time(elapsed, budget, lr, warmup_seconds, min_lr):
    """Learning rate after `elapsed` seconds of a `budget`-second run: linear warm-up to lr over
    warmup_seconds, then cosine decay to min_lr at the budget."""
    if elapsed < warmup_seconds:
        return lr * max(elapsed, 1e-3) / warmup_seconds
    prog = min(1.0, (elapsed - warmup_seconds) / max(1e-9, budget - warmup_seconds))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * prog))


def add_flags(p, *, minutes, out, n_layer, block_size, eval_interval):
    """The flags of a timed tinyshakespeare run, with the script's own defaults for the sizes."""
    p.add_argument("--minutes", type=float, default=minutes, help="training wall-clock budget")
    p.add_argument("--threads", type=int, default=None, help="BLAS / Numba threads (default: library default)")
    p.add_argument("--out", default=out, help="output directory")
    p.add_argument("--n-layer", type=int, default=n_layer)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--block-size", type=int, default=block_size)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup-seconds", type=float, default=20.0)
    p.add_argument("--eval-interval", type=int, default=eval_interval, help="steps between (small) evaluations")
    p.add_argument("--seed", type=int, default=1337)


def set_threads(args):
    """--threads N: before NumPy is imported (on a shared machine one thread per process avoids the
    collapse of spinning thread pools)."""
    if args.threads:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            os.environ[var] = str(args.threads)


def shakespeare_run(args, out_dir=None, backend=None):
    """A character-level GPT on tinyshakespeare and its Trainer -> (tokenizer, data, model, trainer).
    Prints the run's header line (sizes, backend, threads, budget, load average)."""
    import numpy as np

    from nanotransformer.data import TokenData, build_tokenizer, load_text
    from nanotransformer.model import GPT, GPTConfig
    from nanotransformer.train import Trainer, TrainConfig

    text, name = load_text("tinyshakespeare")
    tok = build_tokenizer(text, "char")
    data = TokenData(np.asarray(tok.encode(text)), val_fraction=0.1, source=name)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                    n_head=args.n_head, d_model=args.d_model, dropout=0.0, backend=backend)
    model = GPT(cfg, seed=args.seed)
    tcfg = TrainConfig(batch_size=args.batch_size, max_steps=10**9, lr=args.lr, warmup=0, weight_decay=0.1,
                       beta2=0.99, grad_clip=1.0, eval_interval=args.eval_interval, eval_iters=10, seed=args.seed)
    trainer = Trainer(model, data, tcfg, tokenizer=tok, out_dir=out_dir, progress=False,
                      data_meta={"source": "tinyshakespeare", "tokenizer": "char", "val_fraction": 0.1})
    print(f"tinyshakespeare: {len(data):,} chars, vocab {tok.vocab_size}; model {model.num_params():,} params "
          f"(L={cfg.n_layer}, NH={cfg.n_head}, C={cfg.d_model}, T={cfg.block_size}), backend {model.ops.name}, "
          f"threads {args.threads or 'default'}; budget {args.minutes:g} min; load average {os.getloadavg()}", flush=True)
    return tok, data, model, trainer


def train_for_budget(trainer, args, on_eval=None):
    """Train until --minutes of wall clock have passed, the lr by `lr_by_time` (min lr = lr / 10),
    with a small evaluation every --eval-interval steps (counted in the budget, printed, appended to
    trainer.history["eval"], and passed to on_eval(ev, seconds) if given) -> seconds trained."""
    budget = args.minutes * 60.0
    t0 = time.perf_counter()
    trainer.lr_at = lambda step: lr_by_time(time.perf_counter() - t0, budget, args.lr, args.warmup_seconds, args.lr / 10)
    while time.perf_counter() - t0 < budget:
        trainer.train_step()
        if trainer.step % args.eval_interval == 0:
            ev = trainer.evaluate()
            el = time.perf_counter() - t0
            trainer.history["eval"].append({"step": trainer.step, **ev})
            if on_eval is not None:
                on_eval(ev, el)
            tok_s = trainer.step * args.batch_size * args.block_size / el
            print(f"{el:6.0f}s step {trainer.step:5d}: train {ev['train']:.4f} val {ev['val']:.4f} "
                  f"lr {trainer.history['lr'][-1]:.2e} {tok_s:,.0f} tok/s", flush=True)
    return time.perf_counter() - t0


def ship_checkpoint(out, model, tokenizer, step, meta):
    """Write `model` (weights only) as the shipped checkpoint directory `out`: saved to a temporary
    directory, then moved in over an older pair -> {file name: {"bytes", "sha256"}} of the
    checkpoint files (the figures `pretrained.PRETRAINED` holds)."""
    import shutil
    import tempfile
    from pathlib import Path

    from nanotransformer.checkpoint import save_checkpoint
    from nanotransformer.data import file_sha256

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(d, model, tokenizer=tokenizer, step=step, meta=meta)
        for old in list(out.glob("model-*.safetensors")) + [out / "checkpoint.json"]:
            if old.exists():
                old.unlink()
        for f in Path(d).iterdir():
            shutil.copyfile(f, out / f.name)
    files = sorted(p.name for p in out.iterdir() if p.name == "checkpoint.json" or p.suffix == ".safetensors")
    return {f: {"bytes": (out / f).stat().st_size, "sha256": file_sha256(out / f)} for f in files}
