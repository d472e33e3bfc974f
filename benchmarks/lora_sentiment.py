"""Full fine-tuning vs LoRA (r = 2, 8) vs the bag-of-words baseline on the sentiment sentences:
trainable parameters, optimiser memory, step time, test accuracy and F1.

    python benchmarks/lora_sentiment.py                        # ../shared/data/sentiment, ~4 minutes
    python benchmarks/lora_sentiment.py --data DIR --steps 300

The base is the shipped character-level GPT (`load_pretrained("shakespeare-char")`), with a
last-token classification head; every run trains with the one Trainer on the same 70/10/20 split
(split seed 0) for the same number of steps and batch size, each at its own learning rate (full
fine-tuning at `finetune`'s default 3e-4; LoRA at 2e-3, since its adapters start at B = 0 and the
paper also trains adapters at a higher rate). Step time: median over the steps of the run, the
runs interleaved in chunks of 25 steps so machine load hits each alike. Writes
benchmarks/results/lora_sentiment.json.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "sentiment"))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "lora_sentiment.json"))
    args = p.parse_args(argv)

    from nanotransformer.cli_tasks import sentiment_run
    from nanotransformer.finetuning import BowLogisticRegression, GPTClassifier
    from nanotransformer.lora import LoRA
    from nanotransformer.metrics import accuracy, f1_score
    from nanotransformer.pretrained import load_pretrained
    from nanotransformer.train import TrainConfig, Trainer

    meta = {"source": args.data, "test_fraction": 0.2, "val_fraction": 0.1, "split_seed": 0}
    _, tok = load_pretrained("shakespeare-char")
    run = sentiment_run(meta, tok, 128)
    runs = {}
    for name, rank, lr in (("full fine-tuning", None, 3e-4), ("LoRA r=2", 2, 2e-3), ("LoRA r=8", 8, 2e-3)):
        gpt, _ = load_pretrained("shakespeare-char")
        model = GPTClassifier(gpt, n_classes=2, pool="last", seed=0)
        if rank is not None:
            model = LoRA(model, rank=rank, targets=("attn", "mlp"), seed=0)
        cfg = TrainConfig(batch_size=args.batch_size, max_steps=args.steps, lr=lr, warmup=30, weight_decay=0.01,
                          eval_interval=args.steps, eval_iters=1, seed=1337)  # fmt: skip
        runs[name] = {"trainer": Trainer(model, run.task, cfg, progress=False), "times": []}
    load_start = os.getloadavg()
    while any(r["trainer"].step < args.steps for r in runs.values()):
        for r in runs.values():
            tr = r["trainer"]
            for _ in range(min(25, args.steps - tr.step)):
                t0 = time.perf_counter()
                tr.train_step()
                r["times"].append(time.perf_counter() - t0)
    load_end = os.getloadavg()

    te, y = run.test, run.labels
    rows = []
    for name, r in runs.items():
        model, opt = r["trainer"].model, r["trainer"].opt
        pred = model.predict(run.ids[te], run.lengths[te])
        trained = model.num_trainable() if model.kind == "lora" else model.num_trained()
        rows.append({"run": name, "trainable": int(trained), "total": int(model.gpt.num_params() + 2 * 128 + 2),
                     "optimizer_bytes": int(opt.m[0].nbytes + opt.v[0].nbytes),
                     "step_ms": 1000 * float(np.median(r["times"])), "step_ms_iqr": [1000 * float(q) for q in np.percentile(r["times"], [25, 75])],
                     "accuracy": accuracy(y[te], pred), "f1": f1_score(y[te], pred)})  # fmt: skip
    bow = BowLogisticRegression().fit([run.sentences[i] for i in run.train], y[run.train])
    pb = bow.predict([run.sentences[i] for i in te])
    rows.append({"run": "bag-of-words logistic regression", "trainable": len(bow.bow.vocab) + 1,
                 "accuracy": accuracy(y[te], pb), "f1": f1_score(y[te], pb)})
    result = {"rows": rows, "steps": args.steps, "batch_size": args.batch_size, "load_start": load_start,
              "load_end": load_end, "n_test": int(len(te)), "n_train": int(len(run.train))}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"{len(run.train):,} train / {len(te):,} test sentences, {args.steps} steps of {args.batch_size}; load "
          f"{load_start[0]:.2f} -> {load_end[0]:.2f}")
    print("| run | trainable parameters | optimiser memory | step time | test accuracy | F1 |\n|---|---|---|---|---|---|")
    for r in rows:
        mem = f"{r['optimizer_bytes'] / 1e6:.2f} MB" if "optimizer_bytes" in r else "—"
        step = f"{r['step_ms']:.0f} ms" if "step_ms" in r else "—"
        print(f"| {r['run']} | {r['trainable']:,} | {mem} | {step} | {r['accuracy']:.3f} | {r['f1']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
