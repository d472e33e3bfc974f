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

from timed import add_flags, set_threads, shakespeare_run, train_for_budget  # benchmarks/timed.py


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(p, minutes=10.0, out="runs/quality", n_layer=5, block_size=64, eval_interval=200)
    p.add_argument("--backend", default=None, help="numpy | numba | auto (default: $NANOTRANSFORMER_BACKEND or auto)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    set_threads(args)
    import json
    import math

    from nanotransformer.generation import generate
    from nanotransformer.train import eval_loss, plot_loss_curve

    load_start = os.getloadavg()
    tok, data, model, trainer = shakespeare_run(args, out_dir=args.out, backend=args.backend)
    cfg = model.config
    first_below = None

    def note_first_below(ev, seconds):
        nonlocal first_below
        if first_below is None and ev["val"] < 1.9:
            first_below = {"step": trainer.step, "seconds": round(seconds, 1), "val": ev["val"]}

    train_seconds = train_for_budget(trainer, args, note_first_below)
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
