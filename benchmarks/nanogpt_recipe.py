"""nanoGPT's own CPU recipe (its README, "I only have a macbook"), end to end, ours against PyTorch.

    python benchmarks/nanogpt_recipe.py                 # both, one run each, ~4 min on 2 cores
    python benchmarks/nanogpt_recipe.py --rounds 3      # alternating, for the spread
    python benchmarks/nanogpt_recipe.py --no-torch --iters 200

The recipe: character-level tinyshakespeare (90 / 10 split), L=4 NH=4 C=128 T=64, batch 12, 2000
iterations, lr 1e-3 with 100 warm-up iterations and a cosine down to 1e-4 at iteration 2000,
AdamW (beta2 0.99, weight decay 0.1 on every 2-D weight), gradient clipping at 1.0, dropout 0,
and an evaluation every 250 iterations of 20 batches of each split. Wall time counts everything
from the first step to the last evaluation (not building the data or the model).

Ours: the one `train.Trainer` (backend auto). PyTorch: the benchmark's own PyTorch GPT of the same
architecture (`bench_train.torch_gpt`: torch.nn layers, F.scaled_dot_product_attention, tied head,
torch.optim.AdamW), initialised as nanoGPT and ours are, in a loop that follows nanoGPT's train.py (its get_lr, clip_grad_norm_,
estimate_loss). Both draw random windows with numpy from the same token stream. The target of
issue 17: ours <= 0.8 x PyTorch's wall time at equal final val loss (+-0.02).

Writes benchmarks/results/nanogpt_recipe.json. Needs ../shared/data/tinyshakespeare.txt (or the
download) and, for the PyTorch column, torch.
"""
import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from bench_train import have_torch, torch_gpt  # the script's own directory, benchmarks/, is on sys.path

RECIPE = dict(n_layer=4, n_head=4, d_model=128, block_size=64, batch_size=12, iters=2000, lr=1e-3, min_lr=1e-4,
              warmup=100, weight_decay=0.1, beta2=0.99, grad_clip=1.0, eval_interval=250, eval_iters=20)


def stream():
    from nanotransformer.data import TokenData, load_text
    from nanotransformer.tokenizer import CharTokenizer

    text, _ = load_text("tinyshakespeare")
    tok = CharTokenizer.from_text(text)
    return TokenData(np.asarray(tok.encode(text), dtype=np.int64), 0.1, "tinyshakespeare"), tok.vocab_size


def ours(r, data, V, seed):
    from nanotransformer.model import GPT, GPTConfig
    from nanotransformer.train import TrainConfig, Trainer

    model = GPT(GPTConfig(vocab_size=V, block_size=r["block_size"], n_layer=r["n_layer"], n_head=r["n_head"],
                          d_model=r["d_model"], dropout=0.0), seed=seed)  # fmt: skip
    cfg = TrainConfig(batch_size=r["batch_size"], max_steps=r["iters"], lr=r["lr"], min_lr=r["min_lr"],
                      warmup=r["warmup"], weight_decay=r["weight_decay"], beta2=r["beta2"], grad_clip=r["grad_clip"],
                      eval_interval=r["eval_interval"], eval_iters=r["eval_iters"], seed=seed)  # fmt: skip
    trainer = Trainer(model, data, cfg, progress=False)
    t0 = time.perf_counter()
    history = trainer.fit(log=False)
    return time.perf_counter() - t0, history["eval"][-1]["val"]


def nanogpt_lr(it, r):
    """nanoGPT train.py's get_lr (lr_decay_iters = max_iters)."""
    if it < r["warmup"]:
        return r["lr"] * (it + 1) / (r["warmup"] + 1)
    ratio = (it - r["warmup"]) / (r["iters"] - r["warmup"])
    return r["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (r["lr"] - r["min_lr"])


def pytorch(r, data, V, seed):
    import torch

    cfg = dict(n_layer=r["n_layer"], n_head=r["n_head"], d_model=r["d_model"], block_size=r["block_size"], vocab_size=V)
    model, opt = torch_gpt(cfg, r["lr"], r["weight_decay"], seed=seed, decay_wpe=True)
    with torch.no_grad():  # nanoGPT's _init_weights (and ours): N(0, 0.02), c_proj 0.02 / sqrt(2 L), biases 0
        for name, w in model.named_parameters():
            if w.dim() == 2:
                std = 0.02 / math.sqrt(2 * r["n_layer"]) if name.endswith(("attn_proj.weight", "mlp_proj.weight")) else 0.02
                w.normal_(0.0, std)
            elif name.endswith(".bias"):
                w.zero_()
    for g in opt.param_groups:
        g["betas"] = (0.9, r["beta2"])
    rng = np.random.default_rng(seed)
    T, B = r["block_size"], r["batch_size"]
    splits = data.split

    def batch(split, gen):
        d = splits[split]
        ix = gen.integers(0, len(d) - T - 1, size=B)
        x = np.stack([d[i : i + T] for i in ix])
        y = np.stack([d[i + 1 : i + T + 1] for i in ix])
        return torch.from_numpy(x), torch.from_numpy(y)

    @torch.no_grad()
    def estimate_loss():
        model.eval()
        out = {}
        for k, split in enumerate(splits):
            gen = np.random.default_rng([seed, 1 + k])
            out[split] = float(np.mean([model(*batch(split, gen)).item() for _ in range(r["eval_iters"])]))
        model.train()
        return out

    t0 = time.perf_counter()
    for it in range(r["iters"] + 1):
        if it % r["eval_interval"] == 0 or it == r["iters"]:
            val = estimate_loss()["val"]
        if it == r["iters"]:
            break
        for g in opt.param_groups:
            g["lr"] = nanogpt_lr(it, r)
        loss = model(*batch("train", rng))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r["grad_clip"])
        opt.step()
    return time.perf_counter() - t0, val


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=1, help="alternating runs of each (report the median and spread)")
    p.add_argument("--iters", type=int, default=RECIPE["iters"], help="iterations (the recipe: 2000)")
    p.add_argument("--no-torch", action="store_true", help="ours only")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "nanogpt_recipe.json"))
    args = p.parse_args(argv)
    r = dict(RECIPE, iters=args.iters)
    data, V = stream()
    runs = {"ours": [], "pytorch": []}
    use_torch = not args.no_torch and have_torch()
    for k in range(args.rounds):
        for name, fn in (("ours", ours), ("pytorch", pytorch)) if k % 2 == 0 else (("pytorch", pytorch), ("ours", ours)):
            if name == "pytorch" and not use_torch:
                continue
            load = os.getloadavg()[0]
            seconds, val = fn(r, data, V, seed=1337)
            runs[name].append({"seconds": seconds, "val": val, "load": load})
            print(f"{name:8s} {seconds:7.1f} s  val {val:.4f}  (load {load:.2f})", flush=True)
    result = {"recipe": r, "runs": runs}
    if runs["pytorch"]:
        ours_s = float(np.median([x["seconds"] for x in runs["ours"]]))
        torch_s = float(np.median([x["seconds"] for x in runs["pytorch"]]))
        result["time_ratio_ours_over_pytorch"] = ours_s / torch_s
        print(f"ours / pytorch wall time: {ours_s / torch_s:.2f} (median of {args.rounds}); "
              f"val {np.median([x['val'] for x in runs['ours']]):.4f} vs {np.median([x['val'] for x in runs['pytorch']]):.4f}")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
