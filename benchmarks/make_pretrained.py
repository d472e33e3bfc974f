"""Make the small pretrained model shipped with the package: a character-level GPT trained on
tinyshakespeare for a fixed wall-clock budget, saved (weights only, float32, no optimiser
moments) to nanotransformer/data/pretrained/shakespeare-char/ in our own checkpoint format.

    python benchmarks/make_pretrained.py                      # 9.5 minutes, threads: library default
    python benchmarks/make_pretrained.py --minutes 1 --out /tmp/try   # a quick look

Like benchmarks/quality_shakespeare.py, the learning rate follows warm-up + cosine over *time*
(progress = elapsed / budget), so the schedule ends at the deadline however loaded the shared
machine is; the run is seeded (initialisation and batches), but how many steps fit in the budget
depends on the machine, so two runs are not bit-identical. After training it writes

    checkpoint.json, model-*.safetensors   load_pretrained("shakespeare-char") reads these
    training.json                         config, steps, wall time, val loss, load average, sample
    README.md                             the same, for a person

and prints the sha256 of the two checkpoint files: paste them into
`nanotransformer/pretrained.py::PRETRAINED`, which refuses files that do not match.
"""
import argparse
import os
import sys

from timed import add_flags, set_threads, ship_checkpoint, shakespeare_run, train_for_budget  # benchmarks/timed.py

DEFAULT_OUT = os.path.join(os.path.dirname(__file__), "..", "nanotransformer", "data", "pretrained", "shakespeare-char")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(p, minutes=9.5, out=DEFAULT_OUT, n_layer=4, block_size=128, eval_interval=250)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    set_threads(args)
    import json
    import math
    from pathlib import Path

    from nanotransformer.generation import generate
    from nanotransformer.pretrained import VAL_SLICE
    from nanotransformer.train import eval_loss

    load_start = os.getloadavg()
    tok, data, model, trainer = shakespeare_run(args)
    cfg = model.config
    min_lr = args.lr / 10  # train_for_budget's
    train_seconds = train_for_budget(trainer, args)
    load_end = os.getloadavg()

    val_ids = data.split["val"]
    val_loss, n_val = eval_loss(model, val_ids, batch_size=32)
    slice_loss, n_slice = eval_loss(model, val_ids[VAL_SLICE[0]:VAL_SLICE[1]], batch_size=32)
    sample = generate(model, tok, "ROMEO:", 300, temperature=0.8, seed=0)[0]
    tokens = trainer.step * args.batch_size * args.block_size
    record = {
        "name": "shakespeare-char", "params": model.num_params(), "config": cfg.to_dict(),
        "data": {"source": "tinyshakespeare", "tokenizer": "char", "val_fraction": 0.1, "chars": len(data)},
        "train": {"batch_size": args.batch_size, "lr": args.lr, "min_lr": min_lr, "warmup_seconds": args.warmup_seconds,
                  "schedule": "warm-up + cosine over wall-clock time", "weight_decay": 0.1, "beta2": 0.99,
                  "grad_clip": 1.0, "seed": args.seed, "threads": args.threads, "budget_minutes": args.minutes},
        "steps": trainer.step, "tokens_seen": tokens, "train_seconds": round(train_seconds, 1),
        "tokens_per_second": round(tokens / train_seconds),
        "val_loss_full_split": round(float(val_loss), 4), "val_perplexity": round(math.exp(val_loss), 3),
        "val_tokens": n_val, "val_slice": list(VAL_SLICE), "val_loss_slice": round(float(slice_loss), 4),
        "load_average_start": load_start, "load_average_end": load_end, "cpu_count": os.cpu_count(),
        "sample_prompt": "ROMEO:", "sample_temperature": 0.8, "sample": sample,
    }

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record["files"] = ship_checkpoint(out, model, tok, trainer.step, {"name": "shakespeare-char", "data": record["data"],
                                                                      "val_loss": record["val_loss_full_split"]})
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    c = cfg
    readme = f"""# shakespeare-char

A character-level GPT trained on tinyshakespeare, shipped so the notebooks' small mode shows what
a trained model does. `nanotransformer.pretrained.load_pretrained("shakespeare-char")` returns
`(model, tokenizer)` after checking both files' sha256.

- Model: {model.num_params():,} parameters, L={c.n_layer}, NH={c.n_head}, C={c.d_model}, T={c.block_size},
  learned positions, tied head, float32 ({sum(v['bytes'] for v in record['files'].values()):,} bytes on disk).
- Data: tinyshakespeare, {tok.vocab_size} characters, first 90% for training, last 10% for validation.
- Training: `python benchmarks/make_pretrained.py` (seed {args.seed}), batch {args.batch_size}x{c.block_size},
  AdamW lr {args.lr:g} with warm-up + cosine over {args.minutes:g} minutes of wall clock: {trainer.step:,} steps,
  {tokens:,} tokens, {train_seconds:.0f} s ({record['tokens_per_second']:,} tok/s), load average
  {load_start[0]:.2f} at the start and {load_end[0]:.2f} at the end ({os.cpu_count()} cores, shared).
- Validation loss: {val_loss:.4f} nats/char over the whole validation split ({n_val:,} predictions,
  perplexity {math.exp(val_loss):.2f}); {slice_loss:.4f} on val[{VAL_SLICE[0]}:{VAL_SLICE[1]}] (the test's slice).

Sample (prompt "ROMEO:", temperature 0.8, seed 0):

```text
ROMEO:{sample}
```

Figures in full: `training.json`.
"""
    (out / "README.md").write_text(readme, encoding="utf-8")
    print(f"\nafter {train_seconds:.0f} s, {trainer.step} steps: val loss {val_loss:.4f} (slice {slice_loss:.4f}); "
          f"load {load_start} -> {load_end}")
    print("sample:\n" + sample)
    print("sha256 for nanotransformer/pretrained.py::PRETRAINED:")
    for f, v in record["files"].items():
        print(f'    "{f}": "{v["sha256"]}",  # {v["bytes"]:,} bytes')
    return 0


if __name__ == "__main__":
    sys.exit(main())
