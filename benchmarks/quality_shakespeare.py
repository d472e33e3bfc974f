"""Quality bar: a ~1M-parameter char-level GPT on tinyshakespeare, trained for a fixed wall-clock
budget (default 10 minutes) on this CPU, must reach a validation loss below 1.9 nats/char
(perplexity < 6.7) and print Shakespeare-shaped samples.

    python benchmarks/quality_shakespeare.py                      # 10 minutes, results in runs/quality/
    python benchmarks/quality_shakespeare.py --minutes 2 --threads 1

The learning rate follows warm-up + cosine over *time* rather than steps (progress = elapsed /
budget), so the schedule ends exactly at the deadline however loaded the machine is. Periodic
evaluations (a few batches) count towards the budget; the final figure is the mean loss over the
whole validation split (the last 10% of the text, ~111k characters), measured after the budget.

Writes runs/quality/{results.json, loss.png, checkpoint.json, model-*.safetensors} and prints the
figures and a sample. --threads N sets OPENBLAS_NUM_THREADS / NUMBA_NUM_THREADS before NumPy is
imported: on a machine shared with other jobs, one thread per process avoids the collapse of
spinning thread pools.
"""
import argparse
import os
import sys
import time

from timed import lr_by_time  # benchmarks/timed.py: these scripts run from benchmarks/


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="training wall-clock budget")
    p.add_argument("--threads", type=int, default=None, help="BLAS / Numba threads (default: library default)")
    p.add_argument("--out", default="runs/quality", help="output directory")
    p.add_argument("--n-layer", type=int, default=5)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup-seconds", type=float, default=20.0)
    p.add_argument("--eval-interval", type=int, default=200, help="steps between (small) evaluations")
    p.add_argument("--backend", default=None, help="numpy | numba | auto (default: $NANOTRANSFORMER_BACKEND or auto)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    import json
    import math

    import numpy as np

    from nanotransformer.data import TokenData, build_tokenizer, load_text
    from nanotransformer.generation import generate
    from nanotransformer.model import GPT, GPTConfig
    from nanotransformer.train import Trainer, TrainConfig, eval_loss, plot_loss_curve

    load_start = os.getloadavg()
    text, name = load_text("tinyshakespeare")
    tok = build_tokenizer(text, "char")
    data = TokenData(np.asarray(tok.encode(text)), val_fraction=0.1, source=name)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                    n_head=args.n_head, d_model=args.d_model, dropout=0.0, backend=args.backend)
    model = GPT(cfg, seed=args.seed)
    budget = args.minutes * 60.0
    tcfg = TrainConfig(batch_size=args.batch_size, max_steps=10**9, lr=args.lr, warmup=0, weight_decay=0.1,
                       beta2=0.99, grad_clip=1.0, eval_interval=args.eval_interval, eval_iters=10, seed=args.seed)
    trainer = Trainer(model, data, tcfg, tokenizer=tok, out_dir=args.out, progress=False,
                      data_meta={"source": "tinyshakespeare", "tokenizer": "char", "val_fraction": 0.1})
    min_lr = args.lr / 10
    t0 = time.perf_counter()

    def lr_at(step):  # warm-up then cosine over the wall-clock budget
        return lr_by_time(time.perf_counter() - t0, budget, args.lr, args.warmup_seconds, min_lr)

    trainer.lr_at = lr_at
    print(f"tinyshakespeare: {len(data):,} chars, vocab {tok.vocab_size}; model {model.num_params():,} params "
          f"(L={cfg.n_layer}, NH={cfg.n_head}, C={cfg.d_model}, T={cfg.block_size}), backend {model.ops.name}, "
          f"threads {args.threads or 'default'}; budget {args.minutes:g} min; load average {load_start}", flush=True)
    first_below = None
    while True:
        el = time.perf_counter() - t0
        if el >= budget:
            break
        trainer.train_step()
        if trainer.step % args.eval_interval == 0:
            ev = trainer.evaluate()
            el = time.perf_counter() - t0
            trainer.history["eval"].append({"step": trainer.step, **ev})
            if first_below is None and ev["val"] < 1.9:
                first_below = {"step": trainer.step, "seconds": round(el, 1), "val": ev["val"]}
            tok_s = trainer.step * args.batch_size * args.block_size / el
            print(f"{el:6.0f}s step {trainer.step:5d}: train {ev['train']:.4f} val {ev['val']:.4f} "
                  f"lr {trainer.history['lr'][-1]:.2e} {tok_s:,.0f} tok/s", flush=True)
    train_seconds = time.perf_counter() - t0
    load_end = os.getloadavg()

    val_loss, n_val = eval_loss(model, data.split["val"], batch_size=32)
    trainer.history["eval"].append({"step": trainer.step, "train": float("nan"), "val": val_loss})
    trainer.save()
    plot_loss_curve(trainer.history, os.path.join(args.out, "loss.png"), title="tinyshakespeare, char-level")
    sample = generate(model, tok, "\n", 500, temperature=0.8, seed=0)[0]
    results = {
        "params": model.num_params(), "config": cfg.to_dict(), "steps": trainer.step,
        "tokens_seen": trainer.step * args.batch_size * args.block_size, "train_seconds": round(train_seconds, 1),
        "tokens_per_second": round(trainer.step * args.batch_size * args.block_size / train_seconds),
        "val_loss_full_split": round(val_loss, 4), "val_perplexity": round(math.exp(val_loss), 3),
        "val_tokens": n_val, "first_eval_below_1.9": first_below, "passed": bool(val_loss < 1.9),
        "threads": args.threads, "load_average_start": load_start, "load_average_end": load_end,
        "cpu_count": os.cpu_count(), "sample": sample,
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nafter {train_seconds:.0f} s, {trainer.step} steps ({results['tokens_seen']:,} tokens, "
          f"{results['tokens_per_second']:,} tok/s): val loss {val_loss:.4f} nats/char over the whole val split "
          f"({n_val:,} chars), perplexity {math.exp(val_loss):.2f} -> {'PASS' if val_loss < 1.9 else 'FAIL'} (< 1.9)")
    print(f"load average at start {load_start}, at end {load_end}")
    print("sample (temperature 0.8):\n" + sample)
    return 0 if val_loss < 1.9 else 1


if __name__ == "__main__":
    sys.exit(main())
